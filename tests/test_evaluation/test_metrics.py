"""Per-dataset COCO metric, routing metric and the class protocols."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch
from mmdet.registry import DATASETS, METRICS, MODELS
from mmengine.registry import init_default_scope
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import damex_mmdet  # noqa: F401

PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor')),
]
NAMES = ('photo', 'sketch', 'aerial', 'scan')


@pytest.fixture(scope='module')
def val_mixture(tiny_mixture):
    init_default_scope('mmdet')
    return DATASETS.build(dict(
        type='DatasetMixture', test_mode=True, pipeline=PIPELINE,
        datasets=[dict(name=n, data_root=f'{tiny_mixture}/{n}/',
                       ann_file='annotations/val.json',
                       img_prefix='images/val/') for n in NAMES]))


def predictions(mixture, jitter=0., seed=0):
    """Ground-truth boxes as unified-label predictions, optionally moved."""
    rng = np.random.default_rng(seed)
    samples = []
    for idx in range(len(mixture)):
        sample = mixture[idx]['data_samples']
        gt = sample.gt_instances
        boxes = gt.bboxes.tensor.clone()
        boxes += torch.from_numpy(rng.normal(0, jitter, boxes.shape)).float()
        scores = torch.from_numpy(rng.uniform(0.5, 1., len(boxes))).float()
        result = sample.to_dict()
        result['pred_instances'] = dict(bboxes=boxes, scores=scores,
                                        labels=gt.labels.clone())
        samples.append(result)
    return samples


def evaluate(mixture, samples, **kwargs):
    metric = METRICS.build(dict(type='MixtureCocoMetric', **kwargs))
    metric.dataset_meta = mixture.metainfo
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def test_perfect_predictions_score_one_per_dataset(val_mixture):
    metrics = evaluate(val_mixture, predictions(val_mixture))
    for name in NAMES + ('mean', ):
        assert metrics[f'mixture/{name}/AP50'] == pytest.approx(1.0)
        assert metrics[f'mixture/{name}/AP'] == pytest.approx(1.0)


def test_foreign_class_predictions_are_ignored(val_mixture):
    samples = predictions(val_mixture)
    for sample in samples:
        pred = sample['pred_instances']
        # A confident box of class 0 (photo:person) on every image.
        pred['bboxes'] = torch.cat([pred['bboxes'], pred['bboxes'][:1]])
        pred['scores'] = torch.cat([pred['scores'], torch.ones(1)])
        pred['labels'] = torch.cat([pred['labels'], torch.zeros(1).long()])
    metrics = evaluate(val_mixture, samples)
    for name in NAMES[1:]:
        assert metrics[f'mixture/{name}/AP'] == pytest.approx(1.0)
    assert metrics['mixture/photo/AP'] < 1.0


def test_matches_pycocotools_on_the_original_files(val_mixture,
                                                    tiny_mixture):
    samples = predictions(val_mixture, jitter=3.)
    metrics = evaluate(val_mixture, samples)
    space = val_mixture.label_space
    for name in NAMES:
        ann_file = f'{tiny_mixture}/{name}/annotations/val.json'
        coco = COCO(ann_file)
        cat_ids = [c['id'] for c in json.load(open(ann_file))['categories']]
        detections = []
        for sample in samples:
            if sample['dataset'] != name:
                continue
            pred = sample['pred_instances']
            for box, score, label in zip(pred['bboxes'].tolist(),
                                         pred['scores'].tolist(),
                                         pred['labels'].tolist()):
                detections.append(dict(
                    image_id=sample['img_id'],
                    category_id=cat_ids[space.to_local(name, label)],
                    bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    score=score))
        with contextlib.redirect_stdout(io.StringIO()):
            evaluation = COCOeval(coco, coco.loadRes(detections), 'bbox')
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        assert metrics[f'mixture/{name}/AP'] == pytest.approx(
            evaluation.stats[0], abs=1e-6)
        assert metrics[f'mixture/{name}/AP50'] == pytest.approx(
            evaluation.stats[1], abs=1e-6)
    assert metrics['mixture/mean/AP'] == pytest.approx(np.mean(
        [metrics[f'mixture/{n}/AP'] for n in NAMES]))


def test_untagged_predictions_name_the_fix(val_mixture):
    samples = predictions(val_mixture)[:1]
    del samples[0]['dataset']
    with pytest.raises(KeyError, match='DatasetMixture'):
        evaluate(val_mixture, samples)


def test_routing_metric_against_hand_counts():
    metric = METRICS.build(dict(type='RoutingMetric',
                                dataset_to_expert=dict(a=0, b=1)))
    metric.dataset_meta = {}
    metric.process({}, [
        dict(dataset='a', routing_counts=torch.tensor([[3, 1], [4, 0]])),
        dict(dataset='b', routing_counts=torch.tensor([[1, 1], [0, 2]])),
    ])
    metrics = metric.evaluate(2)
    assert metrics['routing/a/acc'] == pytest.approx(7 / 8)
    assert metrics['routing/b/acc'] == pytest.approx(3 / 4)
    assert metrics['routing/mean/acc'] == pytest.approx((7 / 8 + 3 / 4) / 2)
    assert metrics['routing/expert0/load'] == pytest.approx(8 / 12)


@pytest.mark.parametrize('protocol', ['unified', 'dataset'])
def test_dataset_class_protocol_restricts_the_top_k(protocol):
    init_default_scope('mmdet')
    head = MODELS.build(dict(
        type='DatasetAwareDINOHead', num_classes=6, as_two_stage=True,
        share_pred_layer=False, num_pred_layer=2,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True),
        test_cfg=dict(max_per_img=5, class_protocol=protocol)))
    torch.manual_seed(0)
    cls_score = torch.randn(10, 6)
    cls_score[:, :3] += 5  # the other dataset's classes score highest
    bbox_pred = torch.rand(10, 4)
    meta = dict(img_shape=(64, 64), dataset_classes=[3, 4, 5],
                scale_factor=(1., 1.))
    result = head._predict_by_feat_single(cls_score, bbox_pred, meta, False)
    labels = set(result.labels.tolist())
    if protocol == 'dataset':
        assert labels <= {3, 4, 5} and len(result) == 5
    else:
        assert labels <= {0, 1, 2}
