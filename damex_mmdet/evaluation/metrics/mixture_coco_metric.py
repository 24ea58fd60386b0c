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

# COCOeval.stats positions of the numbers reported per dataset.
REPORTED_STATS = {'AP': 0, 'AP50': 1, 'AP75': 2, 'APs': 3, 'APm': 4, 'APl': 5}


@METRICS.register_module()
class MixtureCocoMetric(BaseMetric):
    """Per-dataset COCO box AP (pycocotools) and the mean over datasets.

    Predictions come in the unified label space; each image is evaluated in
    its own dataset's label space and category ids, against the ground
    truth that :class:`DatasetMixture` attaches in test mode. A prediction of
    a class the image's dataset does not have is dropped, as COCOeval would
    ignore it. The protocol (``unified``: the model scored every class of
    the mixture, the dataset unknown at test time; or ``dataset``: the model
    was restricted to the image's dataset's classes) is taken from the
    predictions and logged.

    Keys: ``{prefix}/{dataset}/AP``, ``.../AP50``, ``.../AP75`` (plus APs,
    APm, APl) and ``{prefix}/mean/AP`` etc.; ``save_best='mixture/mean/AP'``
    keeps the best checkpoint by the UODB summary number.

    Args:
        prefix (str, optional): Key prefix, default ``'mixture'``.
    """

    default_prefix: Optional[str] = 'mixture'

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'dataset' not in sample or 'instances' not in sample:
                raise KeyError(
                    f'image {sample.get("img_path")} lacks the dataset tag '
                    f'or ground truth of a mixture: evaluate with '
                    f'dict(type="DatasetMixture", test_mode=True, ...) as '
                    f'the val/test dataset.')
            pred = sample['pred_instances']
            self.results.append(dict(
                dataset=sample['dataset'],
                height=sample['ori_shape'][0],
                width=sample['ori_shape'][1],
                gt=sample['instances'],
                protocol=sample.get('class_protocol', 'unified'),
                bboxes=pred['bboxes'].cpu().numpy(),
                scores=pred['scores'].cpu().numpy(),
                labels=pred['labels'].cpu().numpy()))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        meta = self.dataset_meta or {}
        if 'label_space' not in meta:
            raise KeyError('MixtureCocoMetric needs the label space of a '
                           'DatasetMixture in dataset_meta: use a '
                           'DatasetMixture as the val/test dataset.')
        space = UnifiedLabelSpace.from_dict(meta['label_space'])
        by_dataset = defaultdict(list)
        for result in results:
            by_dataset[result['dataset']].append(result)
        metrics, rows = {}, []
        for name in space.dataset_names:
            if name not in by_dataset:
                continue
            stats = self._evaluate_dataset(
                name, by_dataset[name], space,
                meta['dataset_cat_ids'][name])
            for key, value in stats.items():
                metrics[f'{name}/{key}'] = value
            rows.append((name, len(by_dataset[name]), stats))
        unknown = sorted(set(by_dataset) - set(space.dataset_names))
        if unknown:
            raise KeyError(f'predictions of datasets {unknown} that the label '
                           f'space does not have ({space.dataset_names}).')
        for key in REPORTED_STATS:
            metrics[f'mean/{key}'] = float(
                np.mean([stats[key] for _, _, stats in rows]))
        protocols = sorted({r['protocol'] for r in results})
        self._log_table(rows, metrics, protocols)
        return metrics

    def _evaluate_dataset(self, name: str, results: List[dict],
                          space: UnifiedLabelSpace,
                          cat_ids: List[int]) -> Dict[str, float]:
        images, annotations, detections = [], [], []
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
            local = space.to_local(name, result['labels'])
            for box, score, label in zip(result['bboxes'], result['scores'],
                                         local):
                if label < 0:
                    continue
                x1, y1, x2, y2 = (float(v) for v in box)
                detections.append(dict(
                    image_id=image_id, category_id=cat_ids[label],
                    bbox=[x1, y1, x2 - x1, y2 - y1], score=float(score)))
        if not annotations or not detections:
            return {key: 0.0 for key in REPORTED_STATS}
        ground_truth = COCO()
        ground_truth.dataset = dict(
            images=images, annotations=annotations,
            categories=[dict(id=i, name=c) for i, c in zip(
                cat_ids, space.classes_of(name))])
        with contextlib.redirect_stdout(io.StringIO()):
            ground_truth.createIndex()
            evaluation = COCOeval(ground_truth,
                                  ground_truth.loadRes(detections), 'bbox')
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        # COCOeval reports -1 where a dataset has no box of that size.
        return {key: max(float(evaluation.stats[i]), 0.0)
                for key, i in REPORTED_STATS.items()}

    @staticmethod
    def _log_table(rows, metrics: Dict[str, float],
                   protocols: List[str]) -> None:
        lines = [f'Per-dataset COCO box AP (class protocol: '
                 f'{", ".join(protocols)})',
                 f'{"dataset":<16}{"images":>8}{"AP":>8}{"AP50":>8}'
                 f'{"AP75":>8}']
        for name, count, stats in rows:
            lines.append(f'{name:<16}{count:>8}{stats["AP"]:>8.3f}'
                         f'{stats["AP50"]:>8.3f}{stats["AP75"]:>8.3f}')
        lines.append(f'{"mean":<16}{"":>8}{metrics["mean/AP"]:>8.3f}'
                     f'{metrics["mean/AP50"]:>8.3f}{metrics["mean/AP75"]:>8.3f}')
        print_log('\n'.join(lines), logger='current')
