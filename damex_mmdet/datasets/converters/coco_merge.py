"""Merge COCO detection files into one: several splits or sources of a dataset, or the
one-file-per-image jsons that some labelling and drone tools write.

Images, annotations and categories get new ids (``1..N`` in input order); categories
are matched by name, in the order they first appear. Every input is checked before
anything is written, and the errors name the input file and its ids:

- an image ``file_name`` that two inputs (or one) list twice is an error, with the two
  sizes when they differ;
- an ``area`` larger than its box's width x height (:func:`area_exceeds_box`) is an
  error unless ``recompute_area`` sets every area to the box's width x height;
- boxes are clipped to their image like the converters' (counted); boxes with no area
  inside the image are dropped and counted.
"""
import glob
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .coco_builder import (Conversion, ConversionError, ConversionStats, PathLike,
                           area_exceeds_box, duplicate_ids, is_xywh_box, read_text)

# Coordinates and areas keep 2 decimals, as the converters write them.
_DECIMALS = 2
# How many ids an error names per input file.
_SHOWN_IDS = 5


@dataclass
class MergeStats(ConversionStats):
    """:class:`ConversionStats` and how many files were merged and areas recomputed."""

    files: int = 0
    areas_recomputed: int = 0

    def summary(self) -> str:
        lines = [f'files: {self.files}', super().summary()]
        if self.areas_recomputed:
            lines.append(f'areas recomputed as box width x height: {self.areas_recomputed}')
        return '\n'.join(lines)


def expand_coco_inputs(inputs: Sequence[PathLike]) -> List[Path]:
    """The json files that ``inputs`` name: a file as it is, a folder's ``*.json`` and a
    glob pattern's matches, each sorted; a file named twice counts once."""
    files: List[Path] = []
    for given in map(str, inputs):
        if os.path.isdir(given):
            found = sorted(Path(given).glob('*.json'))
            what = f'the folder {given} has no .json file'
        elif glob.has_magic(given):
            found = sorted(Path(path) for path in glob.glob(given) if os.path.isfile(path))
            what = f'the pattern {given} matches no file'
        elif os.path.isfile(given):
            found = [Path(given)]
        else:
            raise ConversionError(f'{given}: no such file or folder. Pass COCO json files, '
                                  'folders of them or a quoted glob such as "dir/*.json".')
        if not found:
            raise ConversionError(f'{what}. Pass COCO json files, folders of them or a '
                                  'glob that matches them.')
        files += [path for path in found if path not in files]
    return files


def merge_coco_files(inputs: Sequence[PathLike], recompute_area: bool = False,
                     file_name_root: Optional[PathLike] = None) -> Conversion:
    """Merge COCO detection files into one COCO dict.

    Args:
        inputs: json files, folders of json files or glob patterns
            (:func:`expand_coco_inputs`).
        recompute_area: set every annotation's ``area`` to its (clipped) box's width x
            height, e.g. for files whose areas are wrong. Otherwise areas are kept, and an
            area larger than its box is an error.
        file_name_root: the ``file_name`` of each input is relative to the input's own
            folder (per-image files beside their images); write it relative to this folder
            instead, so that one image folder (``img_prefix``) serves every input.
            ``None`` keeps the file names as written.

    Returns:
        The merged COCO dict and what was kept, clipped, dropped and recomputed.
    """
    files = expand_coco_inputs(inputs)
    stats = MergeStats(files=len(files))
    categories: Dict[str, int] = {}
    images: List[dict] = []
    annotations: List[dict] = []
    first_seen: Dict[str, Tuple[Path, dict]] = {}
    oversized: Dict[Path, List] = {}
    for path in files:
        content = _load(path)
        _check_entries(path, content, recompute_area)
        category_ids = {}
        for category in content['categories']:
            name = category['name']
            category_ids[category['id']] = categories.setdefault(name, len(categories) + 1)
        image_ids, sizes = {}, {}
        for image in content['images']:
            file_name = _file_name(path, image['file_name'], file_name_root)
            size = (int(image['width']), int(image['height']))
            if file_name in first_seen:
                other_path, other = first_seen[file_name]
                other_size = (other['width'], other['height'])
                sizes_differ = ('' if other_size == size else
                                f' with different sizes, {other_size[0]}x{other_size[1]} '
                                f'and {size[0]}x{size[1]}')
                raise ConversionError(
                    f'{path} (image id {image["id"]}): image {file_name} is listed again'
                    f'{sizes_differ}; {other_path} lists it first. Each image once: remove '
                    'the duplicate input, or merge its annotations into one entry.')
            merged = dict(image, id=len(images) + 1, file_name=file_name, width=size[0],
                          height=size[1])
            first_seen[file_name] = (path, merged)
            images.append(merged)
            image_ids[image['id']] = merged['id']
            sizes[image['id']] = size
        stats.images += len(content['images'])
        for annotation in content['annotations']:
            box = _clipped_box(annotation, sizes[annotation['image_id']], stats, path)
            if box is None:
                continue
            merged = dict(annotation, id=len(annotations) + 1,
                          image_id=image_ids[annotation['image_id']],
                          category_id=category_ids[annotation['category_id']], bbox=box,
                          iscrowd=int(bool(annotation.get('iscrowd', 0))))
            if recompute_area:
                merged['area'] = round(box[2] * box[3], _DECIMALS)
                stats.areas_recomputed += 1
            elif area_exceeds_box(merged):
                oversized.setdefault(path, []).append(annotation)
            annotations.append(merged)
            stats.boxes += 1
            stats.ignored += merged['iscrowd']
    if oversized:
        raise ConversionError(_oversized_message(oversized))
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=category_id, name=name)
                            for name, category_id in categories.items()])
    return Conversion(coco, stats)


def _load(path: Path) -> dict:
    try:
        content = json.loads(read_text(path, 'a COCO json file', '*.json'))
    except json.JSONDecodeError as error:
        raise ConversionError(f'{path}:{error.lineno}: not valid JSON ({error.msg}). '
                              'Regenerate or repair the file.') from None
    for key in ('images', 'annotations', 'categories'):
        entries = content.get(key) if isinstance(content, dict) else None
        if not (isinstance(entries, list) and all(isinstance(e, dict) for e in entries)):
            raise ConversionError(f'{path}: no list of objects "{key}" at the top level. A '
                                  'COCO detection file needs images, annotations and '
                                  'categories.')
    if not content['images']:
        raise ConversionError(f'{path}: the file lists no images. Leave it out of the '
                              'inputs.')
    return content


def _shown(ids: list) -> str:
    more = len(ids) - _SHOWN_IDS
    return f'{ids[:_SHOWN_IDS]}' + (f' and {more} more' if more > 0 else '')


def _is_positive(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _check_entries(path: Path, content: dict, recompute_area: bool) -> None:
    """Fail on ids a merge cannot remap (missing, repeated or dangling) and on entries
    without the keys of a detection file (an area only when it is kept), naming the file
    and the ids."""
    images, annotations = content['images'], content['annotations']
    categories = content['categories']
    for kind, entries in (('image', images), ('annotation', annotations),
                          ('category', categories)):
        if any('id' not in entry for entry in entries):
            raise ConversionError(f'{path}: some {kind}s have no "id". Give every {kind} '
                                  'a unique id.')
        repeated = duplicate_ids(entries)
        if repeated:
            raise ConversionError(f'{path}: {kind} ids {_shown(repeated)} are used twice. '
                                  f'Give every {kind} its own id.')
    names = [category.get('name') for category in categories]
    repeated_names = sorted({n for n in names if isinstance(n, str) and names.count(n) > 1})
    problems = [
        ([c['id'] for c in categories if not (isinstance(c.get('name'), str) and c['name'])],
         'category', "have no 'name'"),
        ([i['id'] for i in images if not (isinstance(i.get('file_name'), str)
                                          and i['file_name'])],
         'image', "have no 'file_name'"),
        ([i['id'] for i in images if not (_is_positive(i.get('width'))
                                          and _is_positive(i.get('height')))],
         'image', "have no positive 'width' and 'height'"),
        ([a['id'] for a in annotations if a.get('image_id') not in
          {i['id'] for i in images}], 'annotation', 'point at image ids missing from '
         '"images"'),
        ([a['id'] for a in annotations if a.get('category_id') not in
          {c['id'] for c in categories}], 'annotation', 'use category ids that '
         '"categories" does not define'),
        ([a['id'] for a in annotations if not is_xywh_box(a.get('bbox'))],
         'annotation', 'have a bbox that is not 4 numbers [x, y, width, height]'),
    ]
    for ids, kind, problem in problems:
        if ids:
            raise ConversionError(f'{path}: {kind} ids {_shown(ids)} {problem}. Fix those '
                                  'entries or leave the file out.')
    if repeated_names:
        raise ConversionError(f'{path}: categories {repeated_names} are defined twice. '
                              'Name every category once.')
    bad_areas = [a['id'] for a in annotations if not _is_positive(a.get('area'))]
    if bad_areas and not recompute_area:
        raise ConversionError(f"{path}: annotation ids {_shown(bad_areas)} have no "
                              "positive number as 'area'. Pass --recompute-area "
                              "(recompute_area=True) to set every area to its box's width "
                              'x height.')


def _file_name(path: Path, file_name: str, file_name_root: Optional[PathLike]) -> str:
    if file_name_root is None:
        return file_name
    image = os.path.abspath(path.parent / file_name)
    below = os.path.relpath(image, os.path.abspath(file_name_root))
    if below.startswith(os.pardir):
        raise ConversionError(f'{path}: image {file_name} ({image}) is not inside '
                              f'file_name_root {file_name_root}. Pass a folder that '
                              'contains every input\'s images.')
    return Path(below).as_posix()


def _clipped_box(annotation: dict, size: Tuple[int, int], stats: MergeStats,
                 path: Path) -> Optional[List[float]]:
    """The annotation's box clipped to its image, or ``None`` (dropped and counted)
    when no area of it is inside."""
    x, y, w, h = annotation['bbox']
    where = f'{path} annotation {annotation["id"]}'
    if w <= 0 or h <= 0:
        stats.skip('box with zero or negative size', where)
        return None
    width, height = size
    x1, y1 = round(min(max(x, 0), width), _DECIMALS), round(min(max(y, 0), height), _DECIMALS)
    x2 = round(min(max(x + w, 0), width), _DECIMALS)
    y2 = round(min(max(y + h, 0), height), _DECIMALS)
    if x2 <= x1 or y2 <= y1:
        stats.skip('box outside the image', where)
        return None
    if x < 0 or y < 0 or x + w > width or y + h > height:
        stats.clipped += 1
    return [x1, y1, round(x2 - x1, _DECIMALS), round(y2 - y1, _DECIMALS)]


def _oversized_message(oversized: Dict[Path, List[dict]]) -> str:
    lines = []
    for path, anns in oversized.items():
        example = anns[0]
        _, _, w, h = example['bbox']
        lines.append(f'  {path}: {len(anns)} annotations (ids '
                     f'{_shown([a["id"] for a in anns])}; id {example["id"]}: area '
                     f'{example["area"]} for a {w:g}x{h:g} box)')
    return ('areas larger than their boxes\' width x height, which the COCO evaluation '
            'would score as larger objects than they are:\n' + '\n'.join(lines) +
            "\nPass --recompute-area (recompute_area=True) to set every area to its box's "
            'width x height.')
