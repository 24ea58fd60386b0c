"""Detection with a checkpoint trained on a dataset mixture, from Python.

:class:`MixtureDetInferencer` is mmdet's ``DetInferencer`` that can restrict
the detections to one dataset's classes; :func:`infer` runs it over images,
draws them and writes ``predictions.json`` with the unified class names and,
for MoE models, each image's routing (what ``tools/infer.py`` does).
"""
import json
import os.path as osp
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
from mmdet.apis import DetInferencer

from ..datasets.label_space import UnifiedLabelSpace
from ..datasets.mixture import DATASET_CLASSES_KEY, DATASET_NAME_KEY
from ..models.dense_heads import DatasetAwareDINOHead


class MixtureDetInferencer(DetInferencer):
    """mmdet's ``DetInferencer`` that can restrict detection to one dataset.

    With ``dataset``, every image is tagged as :class:`DatasetMixture` tags
    that dataset's images in test mode, and the head's class protocol is set
    to ``'dataset'``: only that dataset's classes compete for the
    ``max_per_img`` detections (:class:`DatasetAwareDINOHead`), so the
    images get that many boxes of the dataset however the other classes
    score.

    Args:
        dataset (str, optional): A dataset of the checkpoint's label space.
        Others: as ``DetInferencer``.
    """

    def __init__(self, *args, dataset: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.dataset_tags = None
        if dataset is not None:
            meta = self.model.dataset_meta or {}
            if 'label_space' not in meta:
                raise ValueError(
                    'the checkpoint stores no label space (it was not trained '
                    'on a DatasetMixture): --dataset cannot select classes')
            space = UnifiedLabelSpace.from_dict(meta['label_space'])
            if dataset not in space.dataset_names:
                raise ValueError(
                    f'unknown dataset {dataset!r}: the checkpoint was trained '
                    f'on {", ".join(space.dataset_names)}')
            head = self.model.bbox_head
            if not isinstance(head, DatasetAwareDINOHead):
                raise ValueError(
                    f'--dataset needs model.bbox_head of type '
                    f'DatasetAwareDINOHead, which restricts the classes before '
                    f'choosing the top detections; the config builds a '
                    f'{type(head).__name__}. Set bbox_head.type='
                    f'"DatasetAwareDINOHead" (the weights are the same).')
            head.class_protocol = 'dataset'
            self.dataset_tags = {
                DATASET_NAME_KEY: dataset,
                DATASET_CLASSES_KEY:
                np.flatnonzero(space.class_mask(dataset)).tolist()
            }

    def forward(self, inputs, **kwargs):
        if self.dataset_tags is not None:
            for sample in inputs['data_samples']:
                sample.set_metainfo(self.dataset_tags)
        return super().forward(inputs, **kwargs)


def infer(inputs: Union[str, Sequence[str]],
          config: str,
          checkpoint: str,
          out_dir: str,
          dataset: Optional[str] = None,
          score_thr: float = 0.3,
          device: Optional[str] = None,
          batch_size: int = 1,
          progress: bool = True) -> List[Dict[str, Any]]:
    """Detect, draw into ``out_dir/vis/`` and write ``predictions.json``.

    ``inputs`` is an image, a folder of images, or a list of image paths.

    Returns:
        list[dict]: Per image ``image``, ``vis`` (the drawn image),
        ``instances`` (``label``, ``class``, ``score``, ``bbox`` [x1, y1, x2,
        y2] in pixels; score >= ``score_thr``) and, for MoE models,
        ``routing_counts`` {MoE layer: tokens per first-choice expert}.
    """
    images = [inputs] if isinstance(inputs, str) else list(inputs)
    for path in images + [config, checkpoint]:
        if not osp.exists(path):
            raise FileNotFoundError(f'{path} does not exist')
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    inferencer = MixtureDetInferencer(
        model=config, weights=checkpoint, device=device, dataset=dataset,
        show_progress=progress)
    result = inferencer(
        inputs, batch_size=batch_size, out_dir=out_dir, pred_score_thr=score_thr,
        return_datasamples=True, no_save_pred=True)
    if not result['predictions']:
        raise FileNotFoundError(f'no images found in {inputs}')
    classes = inferencer.model.dataset_meta['classes']
    predictions = [_to_dict(sample, classes, score_thr, out_dir)
                   for sample in result['predictions']]
    with open(osp.join(out_dir, 'predictions.json'), 'w') as f:
        json.dump(predictions, f, indent=1)
    return predictions


def _to_dict(sample, classes, score_thr: float, out_dir: str) -> Dict[str, Any]:
    pred = sample.pred_instances
    pred = pred[pred.scores >= score_thr]
    image = sample.img_path
    entry = dict(
        image=osp.abspath(image),
        vis=osp.abspath(osp.join(out_dir, 'vis', osp.basename(image))),
        instances=[
            {'class': classes[label], 'label': int(label), 'score': round(float(score), 4),
             'bbox': [round(float(v), 1) for v in bbox]}
            for label, score, bbox in zip(pred.labels.tolist(), pred.scores, pred.bboxes)
        ])
    if 'routing_counts' in sample:
        entry['routing_counts'] = dict(
            zip(sample.moe_layers, sample.routing_counts.tolist()))
    return entry
