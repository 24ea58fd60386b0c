"""Checks of COCO-format annotation files before a mixture trains on them.

mmdet's ``CocoDataset`` silently skips annotations whose category is not in
``classes``, annotations of images that do not exist, and boxes it cannot
train on (:func:`mmdet_drop_reason`); it orders labels by the json's category
order whatever the order of ``classes``; pycocotools merges images that share
an id. On a mixture of many datasets these turn into silently wrong labels;
here they become errors naming the file and the ids (lost or mislabelled
data, malformed entries) or counted warnings (boxes mmdet drops), and an
error when a dataset loses more of its boxes than the mixture allows.
"""
import glob
import json
import logging
import math
import os.path as osp
from collections import defaultdict
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from mmengine.logging import print_log

from .converters.coco_builder import area_exceeds_box, duplicate_ids, is_xywh_box

# Boxes with a true `ignore` key: mmdet deletes them, where `iscrowd` would
# keep them as ignore regions.
DROPPED_MARKED_IGNORE = "marked 'ignore'"
# How many ids an error or warning names per problem.
_SHOWN_IDS = 5


def _fail(dataset: str, ann_file: str, problem: str, fix: str) -> None:
    raise ValueError(f'dataset {dataset!r} ({ann_file}): {problem}. {fix}')


def load_coco_json(ann_file: str, dataset: str) -> dict:
    """Read a COCO json, turning file, encoding and syntax errors into clear
    ones."""
    if osp.isdir(ann_file):
        inside = sorted(glob.glob(osp.join(ann_file, '*.json')))[:3]
        example = f', e.g. {", ".join(inside)}' if inside else ''
        raise IsADirectoryError(
            f'dataset {dataset!r}: annotation file {ann_file} is a folder, '
            f'not a json file; point ann_file at the json inside it'
            f'{example}.')
    if not osp.isfile(ann_file):
        raise FileNotFoundError(
            f'dataset {dataset!r}: annotation file {ann_file} does not exist; '
            f'check ann_file and data_root in its mixture entry.')
    with open(ann_file, 'rb') as f:
        raw = f.read()
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as error:
        line = raw.count(b'\n', 0, error.start) + 1
        _fail(dataset, ann_file,
              f'line {line}: byte 0x{raw[error.start]:02x} is not UTF-8, the '
              f'encoding of json', 'Re-save the file as UTF-8, e.g. iconv -f '
              'latin1 -t utf-8 FILE > FILE.utf8 if it is Latin-1.')
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        _fail(dataset, ann_file,
              f'not valid JSON (line {error.lineno}, column {error.colno}: '
              f'{error.msg})', 'Regenerate the file, e.g. with '
              'tools/dataset_converters/.')
    for key in ('images', 'annotations', 'categories'):
        entries = content.get(key) if isinstance(content, dict) else None
        if not (isinstance(entries, list)
                and all(isinstance(entry, dict) for entry in entries)):
            _fail(dataset, ann_file, f'no list of objects "{key}" at the top '
                  'level', 'A COCO detection file needs images, annotations '
                  'and categories.')
    return content


class CocoCheck(NamedTuple):
    """What :func:`check_coco_annotations` found."""
    classes: Tuple[str, ...]
    dropped_boxes: Dict[str, int]


def check_coco_annotations(ann_file: str,
                           dataset: str,
                           classes: Optional[Sequence[str]],
                           max_dropped_box_fraction: float = 1.0) -> CocoCheck:
    """Validate a COCO detection file for use in a mixture.

    Args:
        ann_file (str): Path of the json.
        dataset (str): The dataset's name in the mixture, for messages.
        classes (Sequence[str], optional): The classes the config gives; None
            takes every category of the file, in the file's order.
        max_dropped_box_fraction (float): The largest share of the boxes of
            ``classes`` that mmdet may drop (see :func:`mmdet_drop_reason`)
            before this is an error. Losing every box is always an error.

    Returns:
        CocoCheck: The classes, in the order of their labels, and the number
        of boxes mmdet will drop, by reason.
    """
    if not 0 <= max_dropped_box_fraction <= 1:
        raise ValueError(f'dataset {dataset!r}: max_dropped_box_fraction '
                         f'must be a share in [0, 1], got '
                         f'{max_dropped_box_fraction}')
    content = load_coco_json(ann_file, dataset)
    images, annotations = content['images'], content['annotations']
    categories = content['categories']
    if not images:
        _fail(dataset, ann_file, 'the file lists no images',
              'Remove the dataset from the mixture or point ann_file at a '
              'non-empty split.')
    _check_entries(images, annotations, categories, dataset, ann_file)
    category_names = {c['id']: c['name'] for c in categories}
    if classes is None:
        classes = tuple(c['name'] for c in categories)
    missing = [c for c in classes if c not in category_names.values()]
    if missing:
        _fail(dataset, ann_file, f'classes {missing} are not categories of '
              f'the file (it has {sorted(category_names.values())})',
              'Fix the classes of this mixture entry.')
    # mmdet labels categories in the file's order, not in the order of
    # `classes`: a different order would attach every label to a wrong name.
    file_order = [c['name'] for c in categories if c['name'] in classes]
    if file_order != list(classes):
        _fail(dataset, ann_file, f'classes are listed as {list(classes)} but '
              f'the file orders these categories as {file_order}',
              'List classes in the order of the file\'s categories.')

    image_sizes = {img['id']: (img['width'], img['height']) for img in images}
    unknown_images = [a['id'] for a in annotations
                      if a['image_id'] not in image_sizes]
    if unknown_images:
        _fail(dataset, ann_file, f'{len(unknown_images)} annotations point at '
              f'image ids missing from "images" (annotation ids '
              f'{_shown(unknown_images)})', 'Add the images or remove those '
              'annotations.')
    unknown_categories = sorted({a['category_id'] for a in annotations
                                 if a['category_id'] not in category_names})
    if unknown_categories:
        _fail(dataset, ann_file, f'annotations use category ids '
              f'{unknown_categories} that "categories" does not define',
              'Add those categories or fix the annotations.')
    class_ids = {i for i, n in category_names.items() if n in classes}
    boxes = [a for a in annotations if a['category_id'] in class_ids]
    if not boxes:
        _fail(dataset, ann_file, f'none of its {len(images)} images has an '
              f'annotation of the classes {list(classes)}',
              'Check the annotation file or drop the dataset.')

    _report_oversized_areas(boxes, dataset, ann_file)
    dropped = _dropped_box_ids(boxes, image_sizes)
    _report_dropped_boxes(dropped, len(boxes), max_dropped_box_fraction,
                          dataset, ann_file)
    return CocoCheck(tuple(classes),
                     {reason: len(ids) for reason, ids in dropped.items()})


def mmdet_drop_reason(ann: dict, image_width: float,
                      image_height: float) -> Optional[str]:
    """Why mmdet's ``CocoDataset`` leaves a box out of training and
    evaluation; None when it keeps it.

    ``CocoDataset.parse_data_info`` (mmdet 3.3) skips an annotation with a
    true ``ignore`` key, one that does not overlap its image, one whose
    ``area`` is not positive and one less than 1 pixel wide or high. This
    function drops exactly those; its reasons name what is wrong with the box,
    so a box of zero width is 'with zero or negative size' although mmdet's
    first test that rejects it is the overlap. ``iscrowd`` boxes are kept,
    with ``ignore_flag=1``.

    Args:
        ann (dict): A COCO annotation with a valid ``bbox`` and ``area``.
        image_width (float): Width of its image in pixels.
        image_height (float): Height of its image in pixels.
    """
    if ann.get('ignore', False):
        return DROPPED_MARKED_IGNORE
    x, y, w, h = ann['bbox']
    if w <= 0 or h <= 0:
        return 'with zero or negative size'
    if (min(x + w, image_width) <= max(x, 0)
            or min(y + h, image_height) <= max(y, 0)):
        return 'outside the image'
    if w < 1 or h < 1:
        return 'narrower or lower than 1 pixel'
    if ann['area'] <= 0:
        return 'with area <= 0'
    return None


def _shown(ids: list) -> str:
    """The first ids of a list, and how many more there are."""
    more = len(ids) - _SHOWN_IDS
    return f'{ids[:_SHOWN_IDS]}' + (f' and {more} more' if more > 0 else '')


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_entries(images: List[dict], annotations: List[dict],
                   categories: List[dict], dataset: str,
                   ann_file: str) -> None:
    """Fail on entries that pycocotools or mmdet would merge, misread or
    crash on deep inside (``KeyError: 'area'``), naming their ids."""
    kinds = (('image', images, 'pycocotools would keep one of those images '
              'and put the boxes of both on it'),
             ('annotation', annotations, 'mmdet stops on them'),
             ('category', categories, 'pycocotools would keep one of them'))
    for kind, entries, consequence in kinds:
        positions = [i for i, entry in enumerate(entries) if 'id' not in entry]
        if positions:
            _fail(dataset, ann_file, f'the {kind}s at positions '
                  f'{_shown(positions)} (from 0) have no "id"',
                  f'Give every {kind} a unique id.')
        repeated = duplicate_ids(entries)
        if repeated:
            _fail(dataset, ann_file, f'{kind} ids {_shown(repeated)} are used '
                  f'twice: {consequence}', f'Give every {kind} its own id '
                  '(and update the references to it).')
    problems = (
        ('category', categories,
         lambda cat: isinstance(cat.get('name'), str), "have no 'name'",
         'Name every category.'),
        ('image', images, lambda img: isinstance(img.get('file_name'), str),
         "have no 'file_name'", 'Add the path of each image below the image '
         'folder.'),
        ('image', images, lambda img: all(
            _is_number(img.get(key)) and img[key] > 0
            for key in ('width', 'height')),
         "have no positive 'width' and 'height'", 'Add the size of each image '
         'in pixels: mmdet reads it to place the boxes.'),
        ('annotation', annotations,
         lambda ann: 'image_id' in ann and 'category_id' in ann,
         "have no 'image_id' or no 'category_id'", 'Add the id of the image '
         'and of the category of each box.'),
        ('annotation', annotations,
         lambda ann: is_xywh_box(ann.get('bbox')),
         'have a bbox that is not 4 numbers [x, y, width, height]',
         'Write each bbox as [x, y, width, height] in pixels.'),
        ('annotation', annotations, lambda ann: 'area' in ann,
         "have no 'area'", 'Add the area of each box in pixels (width * '
         'height for a box): mmdet and the COCO evaluation read it.'),
        ('annotation', annotations, lambda ann: _is_number(ann['area']),
         "have an 'area' that is not a number", 'Write the area of each box '
         'in pixels as a number.'),
    )
    for kind, entries, is_valid, problem, fix in problems:
        bad = [entry['id'] for entry in entries if not is_valid(entry)]
        if bad:
            _fail(dataset, ann_file, f'{kind} ids {_shown(bad)} {problem}',
                  fix)


def _report_oversized_areas(boxes: List[dict], dataset: str,
                            ann_file: str) -> None:
    """Warn about boxes whose ``area`` exceeds their width x height
    (:func:`area_exceeds_box`): training ignores the area, but the COCO
    evaluation would score them in a larger size range."""
    oversized = [ann for ann in boxes if area_exceeds_box(ann)]
    if not oversized:
        return
    example = oversized[0]
    _, _, width, height = example['bbox']
    print_log(f'dataset {dataset!r} ({ann_file}): {len(oversized)} of its '
              f'{len(boxes)} boxes have an \'area\' larger than their box\'s '
              f'width x height (annotation ids '
              f'{_shown([ann["id"] for ann in oversized])}; id {example["id"]}: '
              f'area {example["area"]} for a {width:g}x{height:g} box), so the '
              'COCO evaluation scores them as larger objects than they are '
              '(APs/APm/APl). Recompute the areas: python '
              f'tools/dataset_converters/coco_merge.py {ann_file} '
              '--recompute-area --out FIXED.json, and point ann_file at '
              'FIXED.json.', logger='current', level=logging.WARNING)


def _dropped_box_ids(boxes: List[dict],
                     image_sizes: dict) -> Dict[str, List[int]]:
    """The ids of the boxes mmdet's CocoDataset will drop, by reason."""
    dropped = defaultdict(list)
    for ann in boxes:
        reason = mmdet_drop_reason(ann, *image_sizes[ann['image_id']])
        if reason is not None:
            dropped[reason].append(ann['id'])
    return dict(dropped)


def _report_dropped_boxes(dropped: Dict[str, List[int]], num_boxes: int,
                          max_fraction: float, dataset: str,
                          ann_file: str) -> None:
    """Log the dropped boxes as a warning; fail when too many are lost."""
    num_dropped = sum(len(ids) for ids in dropped.values())
    if not num_dropped:
        return
    details = '; '.join(
        f'{len(ids)} {reason} (annotation ids {_shown(ids)})'
        for reason, ids in dropped.items())
    if num_dropped == num_boxes:
        lost = f'all {num_boxes} boxes'
    else:
        lost = (f'{num_dropped} of its {num_boxes} boxes '
                f'({num_dropped / num_boxes:.0%})')
    if num_dropped < num_boxes and num_dropped <= max_fraction * num_boxes:
        print_log(f'dataset {dataset!r} ({ann_file}): mmdet\'s CocoDataset '
                  f'drops {lost}: {details}. Fix those annotations if they '
                  'should be learned.', logger='current',
                  level=logging.WARNING)
        return
    limit = ('' if num_dropped == num_boxes else
             f', more than max_dropped_box_fraction={max_fraction}')
    fix = ('Fix those annotations: bbox is [x, y, width, height] in pixels, '
           'at least 1 pixel wide and high and inside the image, area is '
           'positive, and there is no \'ignore\' key (mark boxes that must '
           'not be learned with iscrowd: 1).')
    if num_dropped < num_boxes:
        fix += (' Or raise max_dropped_box_fraction of the DatasetMixture if '
                'these losses are expected.')
    _fail(dataset, ann_file, f'mmdet\'s CocoDataset would drop {lost}'
          f'{limit}: {details}', fix)
