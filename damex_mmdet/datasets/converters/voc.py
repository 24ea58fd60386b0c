"""PASCAL VOC XML -> COCO, for VOC07, VOC12, Clipart, Watercolor, Comic and Kitchen.

Tolerates what labelling tools write besides the VOC devkit itself: float coordinates,
empty ``<difficult/>``/``<truncated/>`` tags, a missing or zero ``<size>`` (the size is
then read from the image) and a ``<filename>`` that does not match the shipped image
(the image is then looked up by the XML's stem). A ``<size>`` that disagrees with the
image file is an error unless ``fix_sizes``.
"""
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Sequence, Tuple

from tqdm import tqdm

from ..uodb_classes import UODB_CLASSES, VOC_CLASSES
from .coco_builder import (CocoBuilder, Conversion, ConversionError, PathLike, find_image,
                           read_id_list)

# Class lists of the UODB datasets that ship VOC XML, by dataset name.
VOC_STYLE_CLASSES = {name: UODB_CLASSES[name]
                     for name in ('voc07', 'voc12', 'clipart', 'watercolor', 'comic', 'kitchen')}


def voc_to_coco(ann_dir: PathLike,
                img_dir: PathLike,
                file_name_root: Optional[PathLike] = None,
                image_set_file: Optional[PathLike] = None,
                classes: Sequence[str] = VOC_CLASSES,
                skip_unknown: bool = False,
                one_based: bool = True,
                fix_sizes: bool = False,
                progress: bool = False) -> Conversion:
    """Convert a folder of VOC XML files to a COCO dict.

    Args:
        ann_dir: folder of ``<id>.xml`` files (VOC's ``Annotations``).
        img_dir: folder of the images (VOC's ``JPEGImages``); ``file_name`` in the json
            is relative to it unless ``file_name_root`` is given.
        file_name_root: folder the json's ``file_name`` is relative to, a parent of the
            image folder; the image folder itself by default.
        image_set_file: ids of the split, one per line (``ImageSets/Main/<split>.txt``);
            every XML in ``ann_dir`` when ``None``.
        classes: class names in category-id order; a box of another class is an error
            unless ``skip_unknown``.
        skip_unknown: drop (and count) boxes whose class is not in ``classes``.
        one_based: the XML holds VOC's 1-based inclusive pixel indices, so ``xmin`` and
            ``ymin`` move by -1 to become 0-based continuous corners (``xmax``/``ymax``
            already are). Set ``False`` for tools that write 0-based coordinates.
        fix_sizes: when ``<size>`` differs from the image file's size, use the file's and
            count it, instead of stopping with an error.
        progress: show a progress bar over the XML files.

    Returns:
        The COCO dict and statistics; ``difficult`` boxes get ``iscrowd=1``.
    """
    ann_dir = Path(ann_dir)
    if not ann_dir.is_dir():
        raise ConversionError(f'{ann_dir}: annotation folder not found. Pass the folder '
                              'that holds the <id>.xml files (VOC: Annotations).')
    if image_set_file is None:
        xml_files = sorted(ann_dir.glob('*.xml'))
        if not xml_files:
            raise ConversionError(f'{ann_dir}: no .xml file in this folder')
    else:
        xml_files = [ann_dir / f'{image_id}.xml' for image_id in read_id_list(image_set_file)]

    builder = CocoBuilder(classes, img_dir, file_name_root, fix_sizes)
    for xml_file in tqdm(xml_files, desc='VOC XML', unit='img', disable=not progress):
        if not xml_file.is_file():
            builder.stats.skip('annotation file missing', str(xml_file))
            continue
        _convert_xml_file(builder, xml_file, skip_unknown, one_based)
    return builder.build()


def _convert_xml_file(builder: CocoBuilder, xml_file: Path, skip_unknown: bool,
                      one_based: bool) -> None:
    try:
        root = ET.parse(xml_file).getroot()
    except ET.ParseError as error:
        line = error.position[0]
        raise ConversionError(f'{xml_file}:{line}: not well-formed XML ({error}). Fix or '
                              're-download the file, or leave its id out of the split.')
    image_id = builder.add_image(
        find_image(builder.img_dir, (root.findtext('filename') or '').strip(), xml_file.stem),
        where=str(xml_file),
        size=_size_from_xml(root))
    if image_id is None:
        return

    for index, obj in enumerate(root.findall('object'), start=1):
        where = f'{xml_file} (object {index})'
        name = (obj.findtext('name') or '').strip()
        if name not in builder.classes:
            if skip_unknown:
                builder.stats.skip(f"class '{name}' not in the class list", where)
                continue
            raise ConversionError(
                f"{where}: class '{name}' is not one of the {len(builder.classes)} classes "
                f'{list(builder.classes)}. Pass the dataset\'s class list (--classes) or '
                '--skip-unknown to drop such boxes.')
        x1, y1, x2, y2 = _corners(obj, where)
        if one_based:
            x1, y1 = x1 - 1, y1 - 1
        builder.add_box(image_id, name, x1, y1, x2, y2, where,
                        ignore=_is_difficult(obj, where))


def _size_from_xml(root: ET.Element) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from ``<size>``, which the builder checks against the image;
    ``None`` when absent or unreadable."""
    try:
        return int(float(root.findtext('size/width'))), int(float(root.findtext('size/height')))
    except (TypeError, ValueError):
        return None


def _corners(obj: ET.Element, where: str) -> Tuple[float, float, float, float]:
    try:
        return tuple(float(obj.findtext(f'bndbox/{tag}'))
                     for tag in ('xmin', 'ymin', 'xmax', 'ymax'))
    except (TypeError, ValueError):
        raise ConversionError(f'{where}: <bndbox> needs numeric <xmin>, <ymin>, <xmax> and '
                              '<ymax>. Fix the object or delete it.') from None


def _is_difficult(obj: ET.Element, where: str) -> bool:
    # Labelling tools write an empty <difficult/>, which means "not difficult".
    text = (obj.findtext('difficult') or '').strip()
    if not text:
        return False
    try:
        return bool(int(float(text)))
    except ValueError:
        raise ConversionError(f"{where}: <difficult> must be 0 or 1, got '{text}'") from None
