"""LISA Traffic Sign ``allAnnotations.csv`` -> COCO with UODB's 4 sign super-categories.

The csv is ``;``-separated with a header; per box: ``Filename`` (relative to the csv's
folder), ``Annotation tag`` (one of ~47 fine sign types such as ``speedLimit25``) and the
upper-left / lower-right corners in pixels, used as the box corners as they are.

UODB trains on 4 super-categories. The fine tags are grouped by US (MUTCD) sign family,
overridable per tag with ``tag_map``:

- ``speedLimit``: every ``speedLimit*`` tag plus ``schoolSpeedLimit*`` and
  ``truckSpeedLimit*`` (regulatory white speed-limit signs);
- ``warning``: the yellow/orange warning and advisory signs listed in
  :data:`LISA_WARNING_TAGS`, plus every ``rampSpeedAdvisory*`` and ``zoneAhead*`` tag;
- ``noTurn``: ``noLeftTurn``, ``noRightTurn``, ``noUTurn``;
- ``stop``: ``stop``.

Tags outside these groups (``doNotEnter``, ``doNotPass``, ``keepRight``,
``rightLaneMustTurn``, ``yield``) are dropped and counted per tag.
"""
import csv
import io
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from tqdm import tqdm

from ..uodb_classes import UODB_CLASSES
from .coco_builder import (CocoBuilder, Conversion, ConversionError, PathLike, read_lines,
                           read_text)

LISA_CLASSES = UODB_CLASSES['lisa']
LISA_WARNING_TAGS = ('addedLane', 'curveLeft', 'curveRight', 'dip', 'intersection', 'laneEnds',
                     'merge', 'pedestrianCrossing', 'roundabout', 'school', 'signalAhead',
                     'slow', 'stopAhead', 'thruMergeLeft', 'thruMergeRight',
                     'thruTrafficMergeLeft', 'turnLeft', 'turnRight', 'yieldAhead')
LISA_TAG_CLASSES: Dict[str, str] = {
    **{tag: 'warning' for tag in LISA_WARNING_TAGS},
    'noLeftTurn': 'noTurn', 'noRightTurn': 'noTurn', 'noUTurn': 'noTurn',
    'stop': 'stop',
}
# Families of numbered tags (speedLimit25, rampSpeedAdvisory35, ...), matched by prefix so
# that every value of a family, listed in LISA's readme or not, lands in its group.
LISA_TAG_PREFIX_CLASSES: Tuple[Tuple[str, str], ...] = (
    ('speedLimit', 'speedLimit'), ('schoolSpeedLimit', 'speedLimit'),
    ('truckSpeedLimit', 'speedLimit'), ('rampSpeedAdvisory', 'warning'),
    ('zoneAhead', 'warning'))

_COLUMNS = ('Filename', 'Annotation tag', 'Upper left corner X', 'Upper left corner Y',
            'Lower right corner X', 'Lower right corner Y')


def lisa_class_of(tag: str,
                  tag_map: Optional[Mapping[str, Optional[str]]] = None) -> Optional[str]:
    """The UODB class of a fine LISA tag; ``None`` when the tag is not used.

    ``tag_map`` entries win over the default mapping; map a tag to ``None`` to drop it.
    """
    if tag_map and tag in tag_map:
        return tag_map[tag]
    if tag in LISA_TAG_CLASSES:
        return LISA_TAG_CLASSES[tag]
    for prefix, class_name in LISA_TAG_PREFIX_CLASSES:
        if tag.startswith(prefix):
            return class_name
    return None


def lisa_to_coco(csv_file: PathLike,
                 img_dir: Optional[PathLike] = None,
                 file_name_root: Optional[PathLike] = None,
                 image_list: Optional[PathLike] = None,
                 tag_map: Optional[Mapping[str, Optional[str]]] = None,
                 progress: bool = False) -> Conversion:
    """Convert LISA's annotation csv to a COCO dict with :data:`LISA_CLASSES`.

    Args:
        csv_file: ``allAnnotations.csv`` (or any csv of the same columns).
        img_dir: folder the csv's file names are relative to; the csv's folder by default.
        file_name_root: folder the json's ``file_name`` is relative to, a parent of the
            image folder; the image folder itself by default.
        image_list: file names of the split, one per line as written in the csv; every
            annotated image when ``None``. LISA has no official split.
        tag_map: per-tag overrides of the mapping to UODB classes (``None`` drops).
        progress: show a progress bar over the images.
    """
    csv_file = Path(csv_file)
    wrong_targets = sorted({str(target) for target in (tag_map or {}).values()
                            if target is not None and target not in LISA_CLASSES})
    if wrong_targets:
        raise ConversionError(f'tag_map maps to {wrong_targets}, which are not among the '
                              f'LISA classes {list(LISA_CLASSES)}')
    rows_by_image = _read_rows(csv_file)
    if image_list is not None:
        wanted = [line for _, line in read_lines(image_list, 'the image list (one file name '
                                                   'per line)', '*.txt') if line]
        rows_by_image = {name: rows_by_image.get(name) for name in wanted}

    builder = CocoBuilder(LISA_CLASSES, csv_file.parent if img_dir is None else img_dir,
                          file_name_root)
    for file_name, rows in tqdm(rows_by_image.items(), desc='LISA', unit='img',
                                disable=not progress):
        if rows is None:
            builder.stats.skip('listed image has no row in the csv', f'{image_list}: {file_name}')
            continue
        image_id = builder.add_image(file_name, where=rows[0][0])
        if image_id is None:
            continue
        for where, tag, corners in rows:
            class_name = lisa_class_of(tag, tag_map)
            if class_name is None:
                builder.stats.skip(f"tag '{tag}' has no UODB class", where)
                continue
            builder.add_box(image_id, class_name, *corners, where)
    return builder.build()


def _read_rows(csv_file: Path) -> Dict[str, List[Tuple[str, str, Tuple[float, ...]]]]:
    """Group the csv rows by image, keeping the csv's order."""
    text = read_text(csv_file, "LISA's allAnnotations.csv", '*.csv')
    rows_by_image: Dict[str, list] = {}
    with io.StringIO(text, newline='') as stream:
        reader = csv.reader(stream, delimiter=';')
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in _COLUMNS if name not in header]
        if missing:
            raise ConversionError(f'{csv_file}:1: columns {missing} missing from the header. '
                                  "Is this LISA's ';'-separated annotation csv?")
        columns = [header.index(name) for name in _COLUMNS]
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            where = f'{csv_file}:{reader.line_num}'
            if len(row) < len(header):
                raise ConversionError(f'{where}: {len(row)} fields, the header has '
                                      f'{len(header)}. Fix or delete the line.')
            file_name, tag, *corner_texts = (row[column].strip() for column in columns)
            try:
                corners = tuple(float(text) for text in corner_texts)
            except ValueError:
                raise ConversionError(f'{where}: the corner columns must be numbers, got '
                                      f'{corner_texts}. Fix or delete the line.') from None
            rows_by_image.setdefault(file_name, []).append((where, tag, corners))
    if not rows_by_image:
        raise ConversionError(f'{csv_file}: no annotation rows')
    return rows_by_image
