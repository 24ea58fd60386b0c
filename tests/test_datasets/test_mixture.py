"""DatasetMixture: tagging, unified labels, and clear errors on bad input."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from mmdet.registry import DATASETS
from mmengine.registry import init_default_scope

import damex_mmdet  # noqa: F401

from ..conftest import SHARED

# A user's pipeline: PackDetInputs' meta_keys do not mention the dataset.
PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor')),
]


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def entries(root, split='train', names=('photo', 'sketch', 'aerial', 'scan')):
    return [dict(name=n, data_root=f'{root}/{n}/',
                 ann_file=f'annotations/{split}.json',
                 img_prefix=f'images/{split}/') for n in names]


def build(datasets, **kwargs):
    return DATASETS.build(dict(type='DatasetMixture', datasets=datasets,
                               pipeline=PIPELINE, **kwargs))


def copy_dataset(tiny_mixture, tmp_path, name='sketch'):
    """A private copy of one tiny dataset, to corrupt."""
    target = tmp_path / name
    shutil.copytree(Path(tiny_mixture) / name, target)
    return target


def edit_json(path, edit):
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_samples_are_tagged_and_labels_unified(tiny_mixture):
    mixture = build(entries(tiny_mixture))
    assert mixture.names == ['photo', 'sketch', 'aerial', 'scan']
    assert len(mixture) == 32
    assert mixture.metainfo['classes'][:4] == (
        'photo:person', 'photo:car', 'photo:dog', 'sketch:person')
    for idx, (name, low, high) in zip(
            (0, 8, 16, 24), (('photo', 0, 3), ('sketch', 3, 7),
                             ('aerial', 7, 10), ('scan', 10, 11))):
        sample = mixture[idx]['data_samples']
        assert sample.metainfo['dataset'] == name
        labels = sample.gt_instances.labels
        assert len(labels) and ((labels >= low) & (labels < high)).all()


def test_test_mode_keeps_local_ground_truth(tiny_mixture):
    mixture = build(entries(tiny_mixture, 'val'), test_mode=True)
    sample = mixture[4]['data_samples']
    info = mixture.get_data_info(4)
    assert sample.metainfo['dataset_idx'] == 1
    assert sample.metainfo['instances'] == info['instances']
    assert max(i['bbox_label'] for i in info['instances']) < 4


def test_label_space_options_reach_metainfo(tiny_mixture):
    mixture = build(entries(tiny_mixture, names=('photo', 'sketch')),
                    label_space=dict(merge_by_name=['photo', 'sketch']))
    classes = mixture.metainfo['classes']
    assert 'person' in classes and 'car' in classes
    assert len(classes) == 3 + 4 - 2


def test_voc_entry_reads_real_labelling_tool_xml(tmp_path):
    voc = SHARED / 'realdata' / 'voc2011'
    if not voc.is_dir():
        pytest.skip('../shared/realdata is not available')
    root = tmp_path / 'VOCdevkit' / 'VOC2012'
    shutil.copytree(voc / 'Annotations', root / 'Annotations')
    shutil.copytree(voc / 'JPEGImages', root / 'JPEGImages')
    (root / 'ImageSets' / 'Main').mkdir(parents=True)
    ids = sorted(p.stem for p in (voc / 'Annotations').glob('*.xml'))
    (root / 'ImageSets' / 'Main' / 'trainval.txt').write_text('\n'.join(ids))
    # Written by labelme: float coordinates, empty <difficult/> tags.
    voc_entry = dict(name='voc', type='TolerantVOCDataset',
                     data_root=str(tmp_path / 'VOCdevkit'),
                     ann_file='VOC2012/ImageSets/Main/trainval.txt',
                     data_prefix=dict(sub_data_root='VOC2012/'))
    mixture = build([voc_entry])
    assert len(mixture) == 3
    sample = mixture[0]['data_samples']
    assert sample.metainfo['dataset'] == 'voc'
    assert mixture.metainfo['classes'][14] == 'voc:person'


def test_duplicate_names_are_rejected(tiny_mixture):
    with pytest.raises(ValueError, match="two datasets named 'photo'"):
        build(entries(tiny_mixture, names=('photo', 'photo')))


def test_missing_annotation_file_names_dataset(tiny_mixture):
    bad = entries(tiny_mixture, names=('photo', ))
    bad[0]['ann_file'] = 'annotations/nope.json'
    with pytest.raises(FileNotFoundError, match="'photo'.*nope.json"):
        build(bad)


@pytest.mark.parametrize('edit, message', [
    (lambda c: c['annotations'].append(dict(c['annotations'][0], id=999,
                                            category_id=42)),
     r'category ids \[42\]'),
    (lambda c: c['annotations'].append(dict(c['annotations'][0], id=999,
                                            image_id=12345)),
     'image ids missing'),
    (lambda c: c.update(annotations=[]), 'none of its 8 images'),
    (lambda c: c.update(images=[], annotations=[]), 'lists no images'),
    (lambda c: c.update(categories=c['categories'][::-1]),
     "order of the file's categories"),
])
def test_bad_annotations_name_dataset_file_and_fix(tiny_mixture, tmp_path,
                                                   edit, message):
    root = copy_dataset(tiny_mixture, tmp_path)
    edit_json(root / 'annotations' / 'train.json', edit)
    entry = entries(tmp_path, names=('sketch', ))
    entry[0]['classes'] = ('person', 'car', 'house', 'tree')
    with pytest.raises(ValueError, match=message) as error:
        build(entry)
    assert "'sketch'" in str(error.value)


def test_malformed_json_reports_position(tiny_mixture, tmp_path):
    root = copy_dataset(tiny_mixture, tmp_path)
    (root / 'annotations' / 'train.json').write_text('{"images": [')
    with pytest.raises(ValueError, match='not valid JSON.*line 1'):
        build(entries(tmp_path, names=('sketch', )))


def test_degenerate_boxes_are_dropped_with_a_count(tiny_mixture, tmp_path):
    root = copy_dataset(tiny_mixture, tmp_path)

    def degenerate(content):
        content['annotations'][0]['bbox'][2] = 0
        content['annotations'][1]['bbox'][:2] = [500, 500]
    edit_json(root / 'annotations' / 'train.json', degenerate)
    mixture = build(entries(tmp_path, names=('sketch', )))
    assert mixture.dropped_boxes['sketch'] == {
        'with zero or negative size': 1, 'outside the image': 1}
    assert all(mixture[i] is not None for i in range(len(mixture)))


def test_corrupt_images_name_the_file(tiny_mixture, tmp_path):
    """Missing images stop the build already (test_image_checks.py)."""
    root = copy_dataset(tiny_mixture, tmp_path)
    images = sorted((root / 'images' / 'train').glob('*.png'))
    images[1].write_bytes(b'not a png')
    mixture = build(entries(tmp_path, names=('sketch', )))
    with pytest.raises(RuntimeError, match=f"'sketch'.*{images[1].name}.*Fix"):
        mixture[1]


def test_label_space_is_stored_as_plain_data(tiny_mixture):
    meta = build(entries(tiny_mixture)).metainfo
    json.dumps(meta)
    assert meta['dataset_cat_ids']['sketch'] == [1, 2, 3, 4]
    assert np.array(meta['palette']).shape == (11, 3)
