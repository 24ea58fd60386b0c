"""Checks of COCO-format annotation files before a mixture trains on them.

mmdet's ``CocoDataset`` silently skips annotations whose category is not in
``classes``, annotations of images that do not exist, and degenerate boxes,
and it orders labels by the json's category order whatever the order of
``classes``. On a mixture of many datasets these turn into silently wrong
labels; here they become errors (lost or mislabelled data) or counted
warnings (boxes that cannot be trained on).
"""
import json
import os.path as osp
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from mmengine.logging import print_log


def _fail(dataset: str, ann_file: str, problem: str, fix: str) -> None:
    raise ValueError(f'dataset {dataset!r} ({ann_file}): {problem}. {fix}')


def load_coco_json(ann_file: str, dataset: str) -> dict:
    """Read a COCO json, turning file and syntax errors into clear ones."""
    if not osp.isfile(ann_file):
        raise FileNotFoundError(
            f'dataset {dataset!r}: annotation file {ann_file} does not exist; '
            f'check ann_file and data_root in its mixture entry.')
    try:
        with open(ann_file, encoding='utf-8') as f:
            content = json.load(f)
    except json.JSONDecodeError as error:
        _fail(dataset, ann_file,
              f'not valid JSON (line {error.lineno}, column {error.colno}: '
              f'{error.msg})', 'Regenerate the file, e.g. with '
              'tools/dataset_converters/.')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(content.get(key), list):
            _fail(dataset, ann_file, f'no list "{key}" at the top level',
                  'A COCO detection file needs images, annotations and '
                  'categories.')
    return content


class CocoCheck(NamedTuple):
    """What :func:`check_coco_annotations` found."""
    classes: Tuple[str, ...]
    dropped_boxes: Dict[str, int]


def check_coco_annotations(ann_file: str, dataset: str,
                           classes: Optional[Sequence[str]]) -> CocoCheck:
    """Validate a COCO detection file for use in a mixture.

    Args:
        ann_file (str): Path of the json.
        dataset (str): The dataset's name in the mixture, for messages.
        classes (Sequence[str], optional): The classes the config gives; None
            takes every category of the file, in the file's order.

    Returns:
        CocoCheck: The classes, in the order of their labels, and the number
        of boxes mmdet will drop, by reason.
    """
    content = load_coco_json(ann_file, dataset)
    images, annotations = content['images'], content['annotations']
    categories = content['categories']
    if not images:
        _fail(dataset, ann_file, 'the file lists no images',
              'Remove the dataset from the mixture or point ann_file at a '
              'non-empty split.')
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

    image_sizes = {img['id']: (img.get('width'), img.get('height'))
                   for img in images}
    unknown_images = [a['id'] for a in annotations
                      if a['image_id'] not in image_sizes]
    if unknown_images:
        _fail(dataset, ann_file, f'{len(unknown_images)} annotations point at '
              f'image ids missing from "images" (annotation ids '
              f'{unknown_images[:5]}...)', 'Add the images or remove those '
              'annotations.')
    unknown_categories = sorted({a['category_id'] for a in annotations
                                 if a['category_id'] not in category_names})
    if unknown_categories:
        _fail(dataset, ann_file, f'annotations use category ids '
              f'{unknown_categories} that "categories" does not define',
              'Add those categories or fix the annotations.')
    class_ids = {i for i, n in category_names.items() if n in classes}
    annotated = {a['image_id'] for a in annotations
                 if a['category_id'] in class_ids}
    if not annotated:
        _fail(dataset, ann_file, f'none of its {len(images)} images has an '
              f'annotation of the classes {list(classes)}',
              'Check the annotation file or drop the dataset.')

    dropped = _count_untrainable_boxes(annotations, image_sizes, class_ids)
    if dropped:
        details = ', '.join(f'{n} {why}' for why, n in dropped.items())
        print_log(f'dataset {dataset!r} ({ann_file}): dropping {details} '
                  f'of {len(annotations)} boxes.', logger='current',
                  level=30)
    return CocoCheck(tuple(classes), dict(dropped))


def _count_untrainable_boxes(annotations: List[dict], image_sizes: dict,
                             class_ids: set) -> Counter:
    """Count the boxes mmdet's CocoDataset will skip, by reason."""
    dropped = Counter()
    for ann in annotations:
        if ann['category_id'] not in class_ids:
            continue
        x, y, w, h = ann['bbox']
        width, height = image_sizes[ann['image_id']]
        if w < 1 or h < 1:
            dropped['with zero or negative size'] += 1
        elif width and height and (x >= width or y >= height or x + w <= 0
                                   or y + h <= 0):
            dropped['outside the image'] += 1
    return dropped
