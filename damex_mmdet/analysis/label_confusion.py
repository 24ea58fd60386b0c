"""Label-block confusion: how often a detector gives one dataset's objects
another dataset's classes.

In a mixture's unified label space every dataset owns a block of classes;
where two datasets share class names (a "cat" of the photos and a "cat" of
the sketches are two classes), a detector can find an object and label it
with the other dataset's class, and the detection is lost to the dataset's
own COCO AP. Telling the datasets apart is what DAMEX's dataset experts are
for, so this measures whether a mixture's label collisions cost a model
anything at all.

It reads the predictions that mmdet's test tool dumps on a
:class:`~damex_mmdet.datasets.DatasetMixture` test set
(``tools/test.py CONFIG CHECKPOINT --out predictions.pkl``): each sample
carries its dataset, that dataset's classes in the unified label space, its
ground-truth boxes and the predictions, both in original image coordinates.

Per dataset (:func:`label_block_confusion`):

- ``detections``: detections scoring at least ``score_thr``;
  ``wrong_block``: the share of them labelled with a class the dataset does
  not own, and ``wrong_block_by_owner``: how many fell in each other
  dataset's block (datasets sharing a block are joined with ``+``; ``none``
  for a class that no dataset of the predictions owns);
- ``objects``: ground-truth boxes (ignored ones left out); ``found``: those
  that some detection, of any score, overlaps with IoU >= ``iou_thr``;
  ``top_wrong_block``: of the found, the share whose best-scoring
  overlapping detection carries another dataset's class.
"""
from collections import Counter, defaultdict
from typing import Dict, Mapping, Sequence, Tuple

import torch
from mmdet.structures.bbox import bbox_overlaps

from ..datasets.mixture import (DATASET_CLASSES_KEY, DATASET_NAME_KEY,
                                RAW_INSTANCES_KEY)

DUMP_HINT = ('dump them with tools/test.py CONFIG CHECKPOINT --out '
             'predictions.pkl on a DatasetMixture val/test set')


class LabelConfusionError(ValueError):
    """Predictions this analysis cannot read."""


def label_owners(results: Sequence[Mapping]) -> Dict[int, Tuple[str, ...]]:
    """Unified label -> the datasets whose classes include it, read from the
    samples' ``dataset`` and ``dataset_classes``."""
    owners = defaultdict(set)
    for index, sample in enumerate(results):
        missing = [key for key in (DATASET_NAME_KEY, DATASET_CLASSES_KEY,
                                   'pred_instances') if key not in sample]
        if missing:
            raise LabelConfusionError(
                f'prediction {index} has no {", ".join(missing)}: the '
                f'analysis needs predictions of a DatasetMixture; {DUMP_HINT}.')
        for label in sample[DATASET_CLASSES_KEY]:
            owners[int(label)].add(sample[DATASET_NAME_KEY])
    return {label: tuple(sorted(names)) for label, names in owners.items()}


def label_block_confusion(results: Sequence[Mapping], score_thr: float = 0.3,
                          iou_thr: float = 0.5) -> Dict[str, Dict]:
    """The per-dataset statistics of the module docstring, datasets in the
    order their first sample appears."""
    owners = label_owners(results)
    counts: Dict[str, Dict] = {}
    for sample in results:
        stats = counts.setdefault(sample[DATASET_NAME_KEY], dict(
            detections=0, wrong=0, by_owner=Counter(), objects=0, found=0,
            top_wrong=0))
        own = {int(label) for label in sample[DATASET_CLASSES_KEY]}
        predictions = sample['pred_instances']
        labels = predictions['labels'].tolist()
        scores = predictions['scores']
        for label, score in zip(labels, scores.tolist()):
            if score >= score_thr:
                stats['detections'] += 1
                if label not in own:
                    stats['wrong'] += 1
                    stats['by_owner']['+'.join(owners.get(label, ('none',)))] += 1
        boxes = [instance['bbox'] for instance in sample.get(RAW_INSTANCES_KEY, [])
                 if not instance.get('ignore_flag', 0)]
        stats['objects'] += len(boxes)
        if not boxes or not labels:
            continue
        overlaps = bbox_overlaps(torch.tensor(boxes, dtype=torch.float32),
                                 predictions['bboxes'].float())
        for row in overlaps:
            matching = (row >= iou_thr).nonzero().flatten()
            if len(matching):
                stats['found'] += 1
                best = matching[scores[matching].argmax()]
                stats['top_wrong'] += labels[best] not in own
    return {name: dict(
        detections=s['detections'],
        wrong_block=s['wrong'] / s['detections'] if s['detections'] else None,
        wrong_block_by_owner=dict(s['by_owner']),
        objects=s['objects'], found=s['found'],
        top_wrong_block=s['top_wrong'] / s['found'] if s['found'] else None)
        for name, s in counts.items()}


def format_label_confusion(report: Mapping[str, Mapping], score_thr: float,
                           iou_thr: float) -> str:
    """A markdown table of :func:`label_block_confusion`'s report."""
    def share(value):
        return '-' if value is None else f'{value:.4f}'
    lines = [f'| dataset | detections (score >= {score_thr}) | in another '
             f"dataset's block | objects | found (IoU >= {iou_thr}) | best "
             "detection in another dataset's block |",
             '|---|---|---|---|---|---|']
    for name, stats in report.items():
        owners = ', '.join(f'{owner} {n}' for owner, n in
                           sorted(stats['wrong_block_by_owner'].items()))
        lines.append(
            f"| {name} | {stats['detections']} | {share(stats['wrong_block'])}"
            f"{f' ({owners})' if owners else ''} | {stats['objects']} | "
            f"{stats['found']} | {share(stats['top_wrong_block'])} |")
    return '\n'.join(lines)
