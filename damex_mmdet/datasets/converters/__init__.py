"""Converters from the UODB datasets' original annotation formats to COCO json.

Each ``*_to_coco`` function returns a :class:`Conversion` (the COCO dict and what was
kept or skipped), as does :func:`merge_coco_files`, which merges COCO files into one;
:func:`write_coco_json` writes it. The command-line wrappers live in
``tools/dataset_converters``.
"""
from .coco_builder import (CocoBuilder, Conversion, ConversionError, ConversionStats,
                           validate_coco, write_coco_json)
from .coco_merge import MergeStats, expand_coco_inputs, merge_coco_files
from .deeplesion import (DEEPLESION_CLASSES, DEEPLESION_SPLITS, deeplesion_image_path,
                         deeplesion_to_coco)
from .dlib_imglab import DLIB_FACE_CLASSES, dlib_to_coco
from .dota import DOTA_CLASSES, dota_to_coco
from .kitti import KITTI_CLASSES, kitti_to_coco
from .lisa import (LISA_CLASSES, LISA_TAG_CLASSES, LISA_TAG_PREFIX_CLASSES, lisa_class_of,
                   lisa_to_coco)
from .voc import VOC_STYLE_CLASSES, voc_to_coco
from .widerface import WIDERFACE_CLASSES, widerface_to_coco

__all__ = [
    'CocoBuilder', 'Conversion', 'ConversionError', 'ConversionStats', 'validate_coco',
    'write_coco_json', 'merge_coco_files', 'expand_coco_inputs', 'MergeStats', 'voc_to_coco',
    'kitti_to_coco', 'widerface_to_coco', 'lisa_to_coco',
    'lisa_class_of', 'dota_to_coco', 'deeplesion_to_coco', 'deeplesion_image_path',
    'dlib_to_coco', 'VOC_STYLE_CLASSES', 'KITTI_CLASSES', 'WIDERFACE_CLASSES', 'LISA_CLASSES',
    'LISA_TAG_CLASSES', 'LISA_TAG_PREFIX_CLASSES', 'DOTA_CLASSES', 'DEEPLESION_CLASSES',
    'DEEPLESION_SPLITS', 'DLIB_FACE_CLASSES'
]
