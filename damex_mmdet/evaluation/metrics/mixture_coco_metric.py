"""COCO AP for every dataset of a mixture, in one validation run."""
import contextlib
import io
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmdet.registry import METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ...datasets.label_space import UnifiedLabelSpace

# COCOeval.stats in its order: the 12 numbers pycocotools prints, with
# COCO's default maxDets (1, 10, 100).
COCO_STATS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
# pycocotools' value of a number nothing scores, e.g. APs of a dataset (or
# of the evaluated images) without a small object.
NOT_SCORED = -1.0


@METRICS.register_module()
class MixtureCocoMetric(BaseMetric):
    """Per-dataset COCO box AP and AR (pycocotools) and the mean over datasets.

    Predictions come in the unified label space; each image is scored in its
    own dataset's label space and category ids. A prediction of a class the
    image's dataset does not have is dropped, as COCOeval would ignore it.
    The protocol (``unified``: the model scored every class of the mixture,
    the dataset unknown at test time; or ``dataset``: the model was
    restricted to the image's dataset's classes) is taken from the
    predictions and logged.

    Ground truth, per dataset of the :class:`DatasetMixture`:

    * COCO-format datasets (mmdet's ``CocoDataset`` and its subclasses) are
      scored against their annotation file, as mmdet's
      ``CocoMetric(ann_file=...)`` does: every box of the file counts,
      including those mmdet drops when it loads the file (narrower or lower
      than a pixel, zero area, outside the image), ``iscrowd`` boxes are
      ignored regions, and the file's ``area`` (a mask's area in COCO
      itself) decides small, medium and large.
    * Other datasets are scored against the ground truth they parse in test
      mode, which the mixture attaches to every sample. For mmdet's
      ``XMLDataset`` (``VOCDataset``, ``TolerantVOCDataset``) that is every
      object of a known class in the XML, degenerate boxes included
      (``filter_cfg.bbox_min_size`` applies to training only), in mmdet's
      coordinates (VOC's 1-based corners minus one); ``difficult`` objects
      become ``iscrowd`` regions, which COCOeval ignores, like VOC's own
      evaluation and mmdet's VOC-to-COCO converter; ``area`` is the box's,
      since VOC has no other. A custom dataset type is scored exactly as it
      parses.

    Only the images that were evaluated are scored (``params.imgIds``): a
    validation set cut with ``indices`` or a smoke run over a few images
    gets the numbers of those images, not misses for the rest of the file.

    Unlike mmdet's ``CocoMetric``, which this follows for loading the file
    and setting ``catIds`` and ``imgIds``, the numbers are COCOeval's own:
    unrounded, with COCO's ``maxDets`` of (1, 10, 100) (``CocoMetric``'s
    (100, 300, 1000) let AP50, AP75 and the size APs count 1000 boxes per
    image), and with the dataset's category ids taken from the mixture
    rather than looked up by name.

    Keys: ``{prefix}/{dataset}/{stat}`` for every stat of ``COCO_STATS``
    (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR1``,
    ``AR10``, ``AR100``, ``ARs``, ``ARm``, ``ARl``), -1 where pycocotools
    reports -1 (nothing of that size), and ``{prefix}/mean/{stat}``: the
    mean over the datasets that score that stat, -1 if none does.
    ``save_best='mixture/mean/AP'`` keeps the best checkpoint by the UODB
    summary number.

    Args:
        collect_device (str): Device for collecting results across ranks,
            ``'cpu'`` or ``'gpu'``.
        prefix (str, optional): Key prefix, default ``'mixture'``.
    """

    default_prefix: Optional[str] = 'mixture'

    def __init__(self,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        # Annotation files by path, loaded at the first evaluation.
        self._annotation_files: Dict[str, COCO] = {}

    def _ann_files(self) -> Dict[str, Optional[str]]:
        meta = self.dataset_meta or {}
        for key in ('label_space', 'dataset_ann_files'):
            if key not in meta:
                raise KeyError(
                    f'MixtureCocoMetric needs the {key} of a DatasetMixture '
                    f'in dataset_meta: use a DatasetMixture as the val/test '
                    f'dataset.')
        return meta['dataset_ann_files']

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        ann_files = self._ann_files()
        for sample in data_samples:
            name = sample.get('dataset')
            if name is None or 'instances' not in sample:
                raise KeyError(
                    f'image {sample.get("img_path")} lacks the dataset tag '
                    f'or ground truth of a mixture: evaluate with '
                    f'dict(type="DatasetMixture", test_mode=True, ...) as '
                    f'the val/test dataset.')
            from_file = ann_files.get(name) is not None
            if from_file and 'img_id' not in sample:
                raise KeyError(
                    f'image {sample.get("img_path")} of dataset {name!r} has '
                    f'no img_id, which locates it in {ann_files[name]}: keep '
                    f'"img_id" in the meta_keys of PackDetInputs.')
            pred = sample['pred_instances']
            self.results.append(dict(
                dataset=name,
                img_id=sample.get('img_id'),
                height=sample['ori_shape'][0],
                width=sample['ori_shape'][1],
                gt=None if from_file else sample['instances'],
                protocol=sample.get('class_protocol', 'unified'),
                bboxes=pred['bboxes'].cpu().numpy(),
                scores=pred['scores'].cpu().numpy(),
                labels=pred['labels'].cpu().numpy()))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        ann_files = self._ann_files()
        space = UnifiedLabelSpace.from_dict(self.dataset_meta['label_space'])
        by_dataset = defaultdict(list)
        for result in results:
            by_dataset[result['dataset']].append(result)
        unknown = sorted(set(by_dataset) - set(space.dataset_names))
        if unknown:
            raise KeyError(f'predictions of datasets {unknown} that the label '
                           f'space does not have ({space.dataset_names}).')
        metrics, rows = {}, []
        for name in space.dataset_names:
            if name not in by_dataset:
                continue
            stats = self._evaluate_dataset(
                name, by_dataset[name], space,
                self.dataset_meta['dataset_cat_ids'][name], ann_files[name])
            for key, value in stats.items():
                metrics[f'{name}/{key}'] = value
            rows.append((name, len(by_dataset[name]), stats,
                         ann_files[name] or 'test-mode parse'))
        for key in COCO_STATS:
            scored = [stats[key] for _, _, stats, _ in rows
                      if stats[key] != NOT_SCORED]
            metrics[f'mean/{key}'] = (float(np.mean(scored)) if scored
                                      else NOT_SCORED)
        protocols = sorted({r['protocol'] for r in results})
        self._log_table(rows, metrics, protocols)
        return metrics

    def _evaluate_dataset(self, name: str, results: List[dict],
                          space: UnifiedLabelSpace, cat_ids: List[int],
                          ann_file: Optional[str]) -> Dict[str, float]:
        if ann_file is None:
            ground_truth = self._parsed_ground_truth(name, results, space,
                                                     cat_ids)
            image_ids = list(range(1, len(results) + 1))
        else:
            ground_truth = self._file_ground_truth(ann_file)
            image_ids = [result['img_id'] for result in results]
            missing = sorted(set(image_ids) - set(ground_truth.imgs))
            if missing:
                raise KeyError(
                    f'dataset {name!r}: images {missing[:5]} were evaluated '
                    f'but are not in {ann_file}; the dataset and its '
                    f'annotation file disagree.')
        detections = []
        for image_id, result in zip(image_ids, results):
            local = space.to_local(name, result['labels'])
            for box, score, label in zip(result['bboxes'], result['scores'],
                                         local):
                if label < 0:
                    continue
                x1, y1, x2, y2 = (float(v) for v in box)
                detections.append(dict(
                    image_id=image_id, category_id=cat_ids[label],
                    bbox=[x1, y1, x2 - x1, y2 - y1], score=float(score)))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(
                ground_truth, self._load_detections(ground_truth, detections),
                'bbox')
            evaluation.params.imgIds = sorted(set(image_ids))
            evaluation.params.catIds = list(cat_ids)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return {key: float(value)
                for key, value in zip(COCO_STATS, evaluation.stats)}

    def _file_ground_truth(self, ann_file: str) -> COCO:
        if ann_file not in self._annotation_files:
            with contextlib.redirect_stdout(io.StringIO()):
                self._annotation_files[ann_file] = COCO(ann_file)
        return self._annotation_files[ann_file]

    @staticmethod
    def _parsed_ground_truth(name: str, results: List[dict],
                             space: UnifiedLabelSpace,
                             cat_ids: List[int]) -> COCO:
        """COCO ground truth of the instances attached to each result; image
        ``i`` of ``results`` gets id ``i + 1``."""
        images, annotations = [], []
        for image_id, result in enumerate(results, start=1):
            images.append(dict(id=image_id, width=result['width'],
                               height=result['height']))
            for instance in result['gt']:
                x1, y1, x2, y2 = instance['bbox']
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=image_id,
                    category_id=cat_ids[instance['bbox_label']],
                    bbox=[x1, y1, x2 - x1, y2 - y1],
                    area=(x2 - x1) * (y2 - y1),
                    iscrowd=int(instance.get('ignore_flag', 0))))
        ground_truth = COCO()
        ground_truth.dataset = dict(
            images=images, annotations=annotations,
            categories=[dict(id=i, name=c) for i, c in zip(
                cat_ids, space.classes_of(name))])
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth.createIndex()
        return ground_truth

    @staticmethod
    def _load_detections(ground_truth: COCO, detections: List[dict]) -> COCO:
        if detections:
            return ground_truth.loadRes(detections)
        # loadRes fails on an empty list; no detection at all scores 0 where
        # there are objects.
        empty = COCO()
        empty.dataset = dict(images=ground_truth.dataset['images'],
                             categories=ground_truth.dataset['categories'],
                             annotations=[])
        empty.createIndex()
        return empty

    @staticmethod
    def _log_table(rows, metrics: Dict[str, float],
                   protocols: List[str]) -> None:
        columns = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')

        def cells(stats):
            return ''.join(f'{stats[key]:>8.3f}' if stats[key] != NOT_SCORED
                           else f'{"-":>8}' for key in columns)

        lines = [f'Per-dataset COCO box AP (class protocol: '
                 f'{", ".join(protocols)}; "-": no object of that size)',
                 f'{"dataset":<16}{"images":>8}'
                 + ''.join(f'{key:>8}' for key in columns)
                 + '  ground truth']
        for name, count, stats, source in rows:
            lines.append(f'{name:<16}{count:>8}{cells(stats)}  {source}')
        lines.append(f'{"mean":<16}{"":>8}'
                     + cells({key: metrics[f'mean/{key}'] for key in columns}))
        print_log('\n'.join(lines), logger='current')
