"""DOTA ``labelTxt`` -> COCO with horizontal boxes.

A label file may start with ``imagesource:...`` and ``gsd:...`` lines; then one object
per line: ``x1 y1 x2 y2 x3 y3 x4 y4 class difficulty`` (the difficulty is absent in some
releases). UODB uses horizontal boxes, so each polygon becomes the box spanned by its
4 points, clipped to the image. Works on whole images and on the patches that DOTA's
devkit or mmrotate's ``img_split`` cut (``P0004__1__0___0.txt``).
"""
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from tqdm import tqdm

from ..uodb_classes import UODB_CLASSES
from .coco_builder import (CocoBuilder, Conversion, ConversionError, PathLike, find_image,
                           read_lines)

# DOTA v1.0, in the devkit's order.
DOTA_CLASSES = UODB_CLASSES['dota']
_HEADER_PREFIXES = ('imagesource:', 'gsd:')
# Four corners of the polygon, x y each.
_COORDINATES = 8


def dota_to_coco(label_dir: PathLike,
                 img_dir: PathLike,
                 file_name_root: Optional[PathLike] = None,
                 classes: Sequence[str] = DOTA_CLASSES,
                 difficult_as_ignore: bool = True,
                 skip_unknown: bool = False,
                 progress: bool = False) -> Conversion:
    """Convert a folder of DOTA label files to a COCO dict.

    Args:
        label_dir: folder of ``<image stem>.txt`` files (``labelTxt``).
        img_dir: folder of the images (``images``).
        file_name_root: folder the json's ``file_name`` is relative to, a parent of the
            image folder; the image folder itself by default.
        classes: class names in category-id order (DOTA v1.5/v2.0 add classes).
        difficult_as_ignore: give objects of difficulty 1 ``iscrowd=1``; when ``False``
            they are ordinary boxes.
        skip_unknown: drop (and count) objects whose class is not in ``classes``
            instead of stopping with an error.
        progress: show a progress bar over the label files.

    Label files whose image is missing are skipped and counted; an image whose label
    file is empty is kept as an image without objects.
    """
    label_dir = Path(label_dir)
    label_files = sorted(label_dir.glob('*.txt'))
    if not label_files:
        raise ConversionError(f'{label_dir}: no .txt label file here. Pass DOTA\'s labelTxt '
                              'folder (after extracting labelTxt.zip).')
    builder = CocoBuilder(classes, img_dir, file_name_root)
    for label_file in tqdm(label_files, desc='DOTA labels', unit='img', disable=not progress):
        image_id = builder.add_image(find_image(builder.img_dir, None, label_file.stem),
                                     where=str(label_file))
        if image_id is None:
            continue
        for line_number, line in read_lines(label_file):
            if not line or line.startswith(_HEADER_PREFIXES):
                continue
            where = f'{label_file}:{line_number}'
            coordinates, class_name, difficult = _parse_object(line, where)
            if class_name not in builder.classes:
                if skip_unknown:
                    builder.stats.skip(f"class '{class_name}' not in the class list", where)
                    continue
                raise ConversionError(
                    f"{where}: class '{class_name}' is not one of {list(builder.classes)}. "
                    'Pass the release\'s class list (--classes) or --skip-unknown.')
            xs, ys = coordinates[0::2], coordinates[1::2]
            builder.add_box(image_id, class_name, min(xs), min(ys), max(xs), max(ys), where,
                            ignore=difficult and difficult_as_ignore)
    return builder.build()


def _parse_object(line: str, where: str) -> Tuple[List[float], str, bool]:
    """``(8 coordinates, class name, difficult)`` of an object line.

    The coordinates are counted before the class is looked at: a polygon that lost a
    coordinate would otherwise shift its difficulty into the class field.
    """
    fields = line.split()
    numbers = 0
    for value in fields:
        try:
            float(value)
        except ValueError:
            break
        numbers += 1
    expected = 'expected x1 y1 x2 y2 x3 y3 x4 y4 class [difficulty]'
    if numbers != _COORDINATES:
        found = (f"{numbers} numbers before '{fields[numbers]}'" if numbers < len(fields)
                 else f'{numbers} numbers and no class name')
        raise ConversionError(f'{where}: malformed line, {expected}; got {found}. Fix or '
                              'delete the line.')
    if len(fields) not in (_COORDINATES + 1, _COORDINATES + 2):
        raise ConversionError(f'{where}: malformed line, {expected}; got {len(fields)} '
                              'fields. Fix or delete the line.')
    difficulty = fields[_COORDINATES + 1] if len(fields) == _COORDINATES + 2 else '0'
    if difficulty not in ('0', '1'):
        raise ConversionError(f"{where}: malformed line, the difficulty must be 0 or 1, got "
                              f"'{difficulty}'. Fix or delete the line.")
    coordinates = [float(value) for value in fields[:_COORDINATES]]
    return coordinates, fields[_COORDINATES], difficulty == '1'
