"""Per-dataset COCO metric, routing metric and the class protocols."""
import contextlib
import copy
import io
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from mmdet.registry import DATASETS, METRICS, MODELS
from mmengine.registry import init_default_scope
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import damex_mmdet  # noqa: F401
from ..conftest import SHARED

PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor')),
]
NAMES = ('photo', 'sketch', 'aerial', 'scan')
# COCOeval.stats, in its order: the 12 numbers pycocotools prints.
COCO_STATS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
TERRAIN = SHARED / 'realdata' / 'terrain'
VOC2011 = SHARED / 'realdata' / 'voc2011'


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
    for name in NAMES:
        ann_file = f'{tiny_mixture}/{name}/annotations/val.json'
        cat_ids = [c['id'] for c in json.load(open(ann_file))['categories']]
        assert_stats_equal(metrics, name, pycocotools_stats(
            ann_file, file_detections(samples, name, cat_ids,
                                      val_mixture.label_space)))
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


def routing_results(with_model_map: bool):
    """Two images' routing counts, with the expert DAMEX's map gives each."""
    samples = [
        dict(dataset='a', routing_counts=torch.tensor([[3, 1], [4, 0]])),
        dict(dataset='b', routing_counts=torch.tensor([[1, 1], [0, 2]])),
    ]
    if with_model_map:
        for sample, expert in zip(samples, (0, 1)):
            sample['dataset_expert'] = expert
    return samples


def test_routing_metric_reads_the_models_map():
    """Without a map of its own the metric scores against the expert DAMEX
    writes into each prediction: the map is written once, in the model. A
    vanilla MoE's predictions carry none: loads only."""
    logged = {}
    for with_model_map in (True, False):
        metric = METRICS.build(dict(type='RoutingMetric'))
        metric.dataset_meta = dict(dataset_names=['a', 'b'])
        metric.process({}, routing_results(with_model_map))
        logged[with_model_map] = metric.evaluate(2)
    assert logged[True]['routing/a/acc'] == pytest.approx(7 / 8)
    assert logged[True]['routing/b/acc'] == pytest.approx(3 / 4)
    assert sorted(logged[False]) == ['routing/expert0/load',
                                     'routing/expert1/load']


@pytest.mark.parametrize('expert_map, names, message', [
    # A map merged from a _base_ config: per-dataset accuracy of c would
    # silently be missing, and the map's extra keys name no dataset.
    (dict(a=0, b=1, photo=2), ['a', 'b'],
     r"names datasets \['photo'\] that the mixture does not have"),
    (dict(a=0), ['a', 'b'], r"has no expert for \['b'\], whose routing "
     r'accuracy would be missing'),
])
def test_routing_metric_map_that_does_not_fit_the_mixture(expert_map, names,
                                                          message):
    metric = METRICS.build(dict(type='RoutingMetric',
                                dataset_to_expert=expert_map))
    with pytest.raises(ValueError, match=r'(?s)RoutingMetric\.dataset_to_'
                       rf'expert .* mixture of {re.escape(str(names))}: it '
                       rf"{message}.*Drop the metric's dataset_to_expert"):
        metric.dataset_meta = dict(dataset_names=names)
    # Used without a runner: checked against the evaluated datasets.
    metric = METRICS.build(dict(type='RoutingMetric',
                                dataset_to_expert=expert_map))
    metric.dataset_meta = {}
    metric.process({}, routing_results(with_model_map=False))
    with pytest.raises(ValueError, match=message):
        metric.evaluate(2)


def test_routing_metric_map_that_contradicts_the_model():
    metric = METRICS.build(dict(type='RoutingMetric',
                                dataset_to_expert=dict(a=1, b=0)))
    with pytest.raises(ValueError, match=r"maps dataset 'a' to expert 1, but "
                       r'the model maps it to 0'):
        metric.process({}, routing_results(with_model_map=True))


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


def pycocotools_stats(ann_file, detections, img_ids=None):
    """COCOeval's 12 numbers for ``detections`` on ``ann_file``, its defaults
    except for the images scored."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_file))
        evaluation = COCOeval(coco, coco.loadRes(detections), 'bbox')
        if img_ids is not None:
            evaluation.params.imgIds = img_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return dict(zip(COCO_STATS, evaluation.stats.tolist()))


def file_detections(samples, name, cat_ids, space):
    """The unified-label predictions of dataset ``name`` in the file's ids."""
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
    return detections


def assert_stats_equal(metrics, name, expected):
    for key in COCO_STATS:
        assert metrics[f'mixture/{name}/{key}'] == pytest.approx(
            expected[key], abs=1e-12), key


@pytest.fixture(scope='module')
def terrain(tmp_path_factory):
    """The real terrain COCO files as one dataset of two images, with boxes
    mmdet drops at load time added: one narrower than a pixel, one outside
    the image, one of zero area; and one whose (mask) area is a quarter of
    its box. The real files' areas already differ from their boxes (they
    hold the image's area), so pycocotools sizes them all as large."""
    if not TERRAIN.is_dir():
        pytest.skip('../shared/realdata is not available')
    root = tmp_path_factory.mktemp('terrain')
    (root / 'images').mkdir()
    content = dict(images=[], annotations=[], categories=[
        dict(id=7, name='human'), dict(id=3, name='car')])
    for image_id, (stem, suffix, cat_id) in enumerate(
            [('terrain1', 'jpg', 7), ('terrain2', 'png', 3)], start=1):
        os.symlink(TERRAIN / f'{stem}.{suffix}',
                   root / 'images' / f'{stem}.{suffix}')
        original = json.loads((TERRAIN / f'{stem}_coco.json').read_text())
        content['images'].append(dict(original['images'][0], id=image_id))
        for ann in original['annotations']:
            content['annotations'].append(dict(
                ann, image_id=image_id, category_id=cat_id))
    added = [
        (1, 7, [300., 300., .5, 40.], 20.),  # w < 1
        (2, 3, [1030., 100., 60., 40.], 2400.),  # right of the 1024 px image
        (2, 3, [100., 100., 30., 20.], 0.),  # zero area
        (1, 7, [100., 500., 60., 60.], 900.),  # a small mask, a medium box
    ]
    for image_id, cat_id, bbox, area in added:
        content['annotations'].append(dict(
            image_id=image_id, category_id=cat_id, bbox=bbox, area=area,
            iscrowd=0))
    for ann_id, ann in enumerate(content['annotations'], start=1):
        ann['id'] = ann_id
    (root / 'val.json').write_text(json.dumps(content))
    return root


def terrain_entry(root, **kwargs):
    return dict(name='terrain', type='CocoDataset', data_root=str(root),
                ann_file='val.json', data_prefix=dict(img='images/'),
                **kwargs)


def build_val_mixture(entries):
    init_default_scope('mmdet')
    return DATASETS.build(dict(type='DatasetMixture', test_mode=True,
                               pipeline=PIPELINE, datasets=entries))


def test_scores_the_annotation_file_not_the_kept_boxes(terrain):
    mixture = build_val_mixture([terrain_entry(terrain)])
    kept = sum(len(mixture.get_data_info(i)['instances'])
               for i in range(len(mixture)))
    assert kept == 16 - 3
    samples = predictions(mixture, jitter=2.)
    metrics = evaluate(mixture, samples)
    expected = pycocotools_stats(
        terrain / 'val.json',
        file_detections(samples, 'terrain', [7, 3], mixture.label_space))
    # The file's boxes that mmdet drops are missed, its areas size them.
    assert expected['AP'] < 0.9 and expected['APm'] != expected['APl']
    assert_stats_equal(metrics, 'terrain', expected)


def test_mean_leaves_out_sizes_a_dataset_does_not_have(terrain):
    # The real terrain1 file alone: every area is the image's, all large.
    mixture = build_val_mixture([
        terrain_entry(terrain),
        dict(name='drone', ann_file=str(TERRAIN / 'terrain1_coco.json'),
             img_prefix=str(TERRAIN))])
    metrics = evaluate(mixture, predictions(mixture, jitter=2.))
    assert metrics['mixture/drone/APs'] == -1
    assert metrics['mixture/drone/APm'] == -1
    for key in ('APs', 'APm', 'ARs', 'ARm'):
        assert metrics[f'mixture/mean/{key}'] == pytest.approx(
            metrics[f'mixture/terrain/{key}'])
    for key in ('AP', 'APl', 'AR100'):
        assert metrics[f'mixture/mean/{key}'] == pytest.approx(np.mean(
            [metrics[f'mixture/{n}/{key}'] for n in ('terrain', 'drone')]))


def test_a_subset_scores_only_the_evaluated_images(terrain):
    mixture = build_val_mixture([terrain_entry(terrain, indices=[1])])
    samples = predictions(mixture, jitter=2.)
    assert [s['img_id'] for s in samples] == [2]
    metrics = evaluate(mixture, samples)
    expected = pycocotools_stats(
        terrain / 'val.json',
        file_detections(samples, 'terrain', [7, 3], mixture.label_space),
        img_ids=[2])
    assert_stats_equal(metrics, 'terrain', expected)


def test_no_detections_score_zero_where_there_are_objects(terrain):
    mixture = build_val_mixture([terrain_entry(terrain)])
    samples = predictions(mixture)
    for sample in samples:
        pred = sample['pred_instances']
        for key in pred:
            pred[key] = pred[key][:0]
    metrics = evaluate(mixture, samples)
    assert metrics['mixture/terrain/AP'] == 0
    assert metrics['mixture/terrain/APs'] == 0


def test_voc_entry_scores_every_object_of_the_xml(tmp_path):
    """VOC XML has no COCO file: every object counts, degenerate boxes too,
    and difficult objects are ignored regions (iscrowd), as VOC ignores
    them. The reference is pycocotools on the XML's objects in mmdet's
    coordinates (VOC's 1-based corners minus one)."""
    if not VOC2011.is_dir():
        pytest.skip('../shared/realdata is not available')
    root = tmp_path / 'VOC2012'
    shutil.copytree(VOC2011, root)
    xml_file = root / 'Annotations' / '2011_000003.xml'
    tree = ET.parse(xml_file)
    persons = tree.getroot().findall('object')
    persons[0].find('difficult').text = '1'
    degenerate = copy.deepcopy(persons[1])
    for tag, value in (('xmin', 40), ('ymin', 40), ('xmax', 40),
                       ('ymax', 90)):
        degenerate.find(f'bndbox/{tag}').text = str(value)
    tree.getroot().append(degenerate)
    tree.write(xml_file)
    ids = sorted(p.stem for p in (root / 'Annotations').glob('*.xml'))
    (root / 'ImageSets' / 'Main').mkdir(parents=True)
    (root / 'ImageSets' / 'Main' / 'val.txt').write_text('\n'.join(ids))
    mixture = build_val_mixture([dict(
        name='voc', type='TolerantVOCDataset', data_root=str(tmp_path),
        ann_file='VOC2012/ImageSets/Main/val.txt',
        data_prefix=dict(sub_data_root='VOC2012/'))])
    samples = predictions(mixture, jitter=2.)
    metrics = evaluate(mixture, samples)

    classes = mixture.datasets[0].metainfo['classes']
    reference = dict(images=[], annotations=[], categories=[
        dict(id=i + 1, name=c) for i, c in enumerate(classes)])
    for image_id, stem in enumerate(ids, start=1):
        xml = ET.parse(root / 'Annotations' / f'{stem}.xml').getroot()
        reference['images'].append(dict(
            id=image_id, width=int(xml.find('size/width').text),
            height=int(xml.find('size/height').text)))
        for obj in xml.findall('object'):
            x1, y1, x2, y2 = (int(float(obj.find(f'bndbox/{tag}').text)) - 1
                              for tag in ('xmin', 'ymin', 'xmax', 'ymax'))
            reference['annotations'].append(dict(
                id=len(reference['annotations']) + 1, image_id=image_id,
                category_id=classes.index(obj.find('name').text) + 1,
                bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1),
                iscrowd=int(obj.find('difficult').text or 0)))
    (tmp_path / 'reference.json').write_text(json.dumps(reference))
    for sample in samples:
        sample['img_id'] = ids.index(sample['img_id']) + 1
    expected = pycocotools_stats(
        tmp_path / 'reference.json',
        file_detections(samples, 'voc', list(range(1, 21)),
                        mixture.label_space))
    assert_stats_equal(metrics, 'voc', expected)
