"""KITTI object detection ``label_2`` txt -> COCO.

One object per line: ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry`` plus a
16th ``score`` field in result files. Only the type and the 2D box (0-based pixel
corners) are used. KITTI ships no image sizes, so they are read from the PNGs.
"""
from pathlib import Path
from typing import Mapping, Optional, Sequence

from tqdm import tqdm

from ..uodb_classes import UODB_CLASSES
from .coco_builder import (CocoBuilder, Conversion, ConversionError, PathLike, find_image,
                           read_id_list, read_lines)

# UODB keeps Car, Pedestrian and Cyclist; Van, Truck, Person_sitting, Tram and Misc are
# dropped unless a class_map folds them into these.
KITTI_CLASSES = UODB_CLASSES['kitti']
# Unlabelled regions, not objects: dropped whatever the class map says.
DONT_CARE = 'DontCare'


def kitti_to_coco(label_dir: PathLike,
                  img_dir: PathLike,
                  file_name_root: Optional[PathLike] = None,
                  image_list: Optional[PathLike] = None,
                  classes: Sequence[str] = KITTI_CLASSES,
                  class_map: Optional[Mapping[str, str]] = None,
                  progress: bool = False) -> Conversion:
    """Convert KITTI ``label_2`` files to a COCO dict.

    Args:
        label_dir: folder of ``<id>.txt`` label files (``training/label_2``).
        img_dir: folder of ``<id>.png`` images (``training/image_2``).
        file_name_root: folder the json's ``file_name`` is relative to, a parent of the
            image folder; the image folder itself by default.
        image_list: ids of the split, one per line; every label file when ``None``.
        classes: class names in category-id order.
        class_map: KITTI type -> one of ``classes``, e.g. ``{'Van': 'Car'}``. Types in
            neither ``classes`` nor ``class_map`` are dropped and counted.
        progress: show a progress bar over the images.
    """
    label_dir = Path(label_dir)
    if not label_dir.is_dir():
        raise ConversionError(f'{label_dir}: label folder not found. Pass KITTI\'s '
                              'training/label_2 folder.')
    class_map = dict(class_map or {})
    wrong_targets = sorted(set(class_map.values()) - set(classes))
    if wrong_targets:
        raise ConversionError(f'class_map maps to {wrong_targets}, which are not in the '
                              f'classes {list(classes)}')
    if image_list is None:
        label_files = sorted(label_dir.glob('*.txt'))
        if not label_files:
            raise ConversionError(f'{label_dir}: no .txt label file in this folder')
    else:
        label_files = [label_dir / f'{frame_id}.txt' for frame_id in read_id_list(image_list)]

    builder = CocoBuilder(classes, img_dir, file_name_root)
    for label_file in tqdm(label_files, desc='KITTI labels', unit='img', disable=not progress):
        if not label_file.is_file():
            builder.stats.skip('label file missing', str(label_file))
            continue
        image_id = builder.add_image(find_image(builder.img_dir, None, label_file.stem),
                                     where=str(label_file))
        if image_id is None:
            continue
        for line_number, line in read_lines(label_file):
            if not line:
                continue
            where = f'{label_file}:{line_number}'
            fields = line.split()
            if len(fields) not in (15, 16):
                raise ConversionError(f'{where}: expected 15 fields (16 with a score), got '
                                      f'{len(fields)}. Fix or delete the line.')
            kitti_type = fields[0]
            if kitti_type == DONT_CARE:
                builder.stats.skip('DontCare region', where)
                continue
            class_name = class_map.get(kitti_type, kitti_type)
            if class_name not in builder.classes:
                builder.stats.skip(f"type '{kitti_type}' not in the classes", where)
                continue
            try:
                x1, y1, x2, y2 = (float(value) for value in fields[4:8])
            except ValueError:
                raise ConversionError(f'{where}: the box fields 5-8 must be numbers. Fix or '
                                      'delete the line.') from None
            builder.add_box(image_id, class_name, x1, y1, x2, y2, where)
    return builder.build()
