"""Tests of the unified label space and of the UODB class lists."""
import json
import pickle

import numpy as np
import pytest
import torch

from damex_mmdet.datasets.label_space import UnifiedLabelSpace
from damex_mmdet.datasets.uodb_classes import (UODB_CLASSES,
                                               UODB_SHARED_BLOCKS)

VOC = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat',
       'chair', 'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person',
       'pottedplant', 'sheep', 'sofa', 'train', 'tvmonitor')

# Written out independently of damex_mmdet.datasets.uodb_classes, so that an
# edit of the package's lists shows up here. COCO's 80 classes are checked
# against mmdet's CocoDataset instead of a third copy.
EXPECTED_UODB = {
    'kitti': ('Car', 'Pedestrian', 'Cyclist'),
    'widerface': ('face', ),
    'voc07': VOC,
    'voc12': VOC,
    'lisa': ('speedLimit', 'warning', 'noTurn', 'stop'),
    'dota': ('plane', 'baseball-diamond', 'bridge', 'ground-track-field',
             'small-vehicle', 'large-vehicle', 'ship', 'tennis-court',
             'basketball-court', 'storage-tank', 'soccer-ball-field',
             'roundabout', 'harbor', 'swimming-pool', 'helicopter'),
    'watercolor': ('bicycle', 'bird', 'car', 'cat', 'dog', 'person'),
    'clipart': VOC,
    'comic': ('bicycle', 'bird', 'car', 'cat', 'dog', 'person'),
    'kitchen': ('coca_cola_glass_bottle', 'coffee_mate_french_vanilla',
                'honey_bunches_of_oats_honey_roasted', 'hunts_sauce',
                'mahatma_rice',
                'nature_valley_soft_baked_oatmeal_squares_'
                'cinnamon_brown_sugar',
                'nature_valley_sweet_and_salty_nut_almond',
                'palmolive_orange', 'pop_secret_light_butter', 'pringles_bbq',
                'red_bull'),
    'deeplesion': ('lesion', ),
}


@pytest.fixture
def small():
    """Three disjoint datasets of 3, 1 and 2 classes."""
    return UnifiedLabelSpace(
        dict(kitti=['Car', 'Pedestrian', 'Cyclist'],
             widerface=['face'],
             comic=['car', 'person']))


@pytest.fixture
def uodb():
    return UnifiedLabelSpace(UODB_CLASSES, shared_blocks=[['voc07', 'voc12']])


def test_disjoint_layout(small):
    assert small.num_classes == 6
    assert small.dataset_names == ('kitti', 'widerface', 'comic')
    assert small.classes == ('kitti:Car', 'kitti:Pedestrian', 'kitti:Cyclist',
                             'widerface:face', 'comic:car', 'comic:person')
    # Block offsets 0, 3 and 4, in dataset order.
    assert small.to_unified('kitti', [0, 1, 2]) == [0, 1, 2]
    assert small.to_unified('widerface', [0]) == [3]
    assert small.to_unified('comic', [0, 1]) == [4, 5]
    assert small.block_name('comic') == 'comic'
    assert small.classes_of('kitti') == ('Car', 'Pedestrian', 'Cyclist')
    assert small.unified_classes_of('comic') == ('comic:car', 'comic:person')
    assert small.dataset_of_class(3) == ('widerface', )


def test_shared_block():
    space = UnifiedLabelSpace(
        dict(kitti=['Car'], voc07=VOC, voc12=VOC, clipart=VOC),
        shared_blocks=[['voc12', 'voc07']])
    # VOC's 20 classes appear once, clipart keeps its own block.
    assert space.num_classes == 1 + 20 + 20
    assert space.block_name('voc07') == space.block_name('voc12') == \
        'voc07+voc12'
    assert space.classes[1 + VOC.index('person')] == 'voc07+voc12:person'
    assert space.classes[21 + VOC.index('person')] == 'clipart:person'
    labels = list(range(20))
    assert space.to_unified('voc07', labels) == space.to_unified(
        'voc12', labels) == list(range(1, 21))
    assert space.to_unified('clipart', labels) == list(range(21, 41))
    assert space.dataset_of_class(1) == ('voc07', 'voc12')
    np.testing.assert_array_equal(
        space.class_mask('voc12'), space.class_mask('voc07'))


def test_uodb_class_lists_and_167_classes(uodb):
    from mmdet.datasets import CocoDataset, VOCDataset

    assert list(UODB_CLASSES) == [
        'kitti', 'widerface', 'voc07', 'voc12', 'lisa', 'dota', 'coco',
        'watercolor', 'clipart', 'comic', 'kitchen', 'deeplesion'
    ]
    assert UODB_CLASSES['coco'] == tuple(CocoDataset.METAINFO['classes'])
    assert VOC == tuple(VOCDataset.METAINFO['classes'])
    for name, classes in EXPECTED_UODB.items():
        assert tuple(UODB_CLASSES[name]) == classes, name

    sizes = {name: len(c) for name, c in UODB_CLASSES.items()}
    assert [sizes[n] for n in ('kitti', 'widerface', 'voc07', 'lisa', 'dota',
                               'coco', 'watercolor', 'clipart', 'comic',
                               'kitchen', 'deeplesion')] == \
        [3, 1, 20, 4, 15, 80, 6, 20, 6, 11, 1]
    assert 3 + 1 + 20 + 4 + 15 + 80 + 6 + 20 + 6 + 11 + 1 == 167
    assert uodb.num_classes == 167
    assert len(set(uodb.classes)) == 167
    assert UnifiedLabelSpace(
        UODB_CLASSES, shared_blocks=UODB_SHARED_BLOCKS) == uodb

    # Block starts: kitti 0, widerface 3, voc 4, lisa 24, dota 28, coco 43,
    # watercolor 123, clipart 129, comic 149, kitchen 155, deeplesion 166.
    starts = {name: uodb.to_unified(name, 0) for name in UODB_CLASSES}
    assert starts == dict(kitti=0, widerface=3, voc07=4, voc12=4, lisa=24,
                          dota=28, coco=43, watercolor=123, clipart=129,
                          comic=149, kitchen=155, deeplesion=166)
    assert uodb.classes[-1] == 'deeplesion:lesion'


def test_merge_by_name():
    space = UnifiedLabelSpace(
        dict(kitti=['Car', 'Pedestrian'],
             voc07=['car', 'person', 'dog'],
             voc12=['car', 'person', 'dog'],
             coco=['person', 'car', 'giraffe'],
             comic=['person', 'dog']),
        shared_blocks=[['voc07', 'voc12']],
        merge_by_name=['coco', 'voc12'])
    # voc12 brings its whole shared block into the merge; comic and kitti
    # are not merged (and 'Car' != 'car' anyway).
    assert space.classes == ('kitti:Car', 'kitti:Pedestrian', 'car', 'person',
                             'voc07+voc12:dog', 'coco:giraffe',
                             'comic:person', 'comic:dog')
    # A merged class sits at its first occurrence (the VOC block).
    assert space.to_unified('coco', [0, 1, 2]) == [3, 2, 5]
    assert space.to_unified('voc07', [0, 1, 2]) == [2, 3, 4]
    assert space.to_local('coco', [2, 3, 4]) == [1, 0, -1]
    assert space.dataset_of_class(3) == ('voc07', 'voc12', 'coco')
    assert 'merge_by_name' in repr(space)


def test_merge_of_uodb_cross_domain_sets():
    space = UnifiedLabelSpace(
        UODB_CLASSES,
        shared_blocks=UODB_SHARED_BLOCKS,
        merge_by_name=['voc07', 'watercolor', 'clipart', 'comic'])
    # Watercolor, comic and clipart reuse the VOC classes: 167 - 6 - 6 - 20.
    assert space.num_classes == 135
    assert space.to_unified('comic', [5]) == space.to_unified(
        'voc12', [VOC.index('person')])


def test_round_trips_and_foreign_classes(uodb):
    for name, classes in UODB_CLASSES.items():
        local = list(range(len(classes)))
        unified = uodb.to_unified(name, local)
        assert uodb.to_local(name, unified) == local
        everything = uodb.to_local(name, list(range(uodb.num_classes)))
        mask = uodb.class_mask(name)
        assert mask.dtype == np.bool_ and mask.shape == (167, )
        np.testing.assert_array_equal(np.asarray(everything) >= 0, mask)
        assert sorted(np.flatnonzero(mask).tolist()) == sorted(unified)
        # Every class that is not the dataset's own maps to -1.
        assert everything.count(-1) == 167 - len(classes)
    assert uodb.to_local('kitti', 166) == -1
    assert uodb.to_local('deeplesion', 166) == 0


def test_input_types_keep_type_dtype_shape(small):
    assert small.to_unified('comic', 1) == 5
    assert type(small.to_unified('comic', np.int64(1))) is int
    assert small.to_unified('comic', (0, 1)) == (4, 5)
    assert small.to_unified('comic', []) == []

    array = np.array([[0, 1], [1, 0]], dtype=np.int32)
    out = small.to_unified('comic', array)
    assert out.dtype == np.int32 and out.shape == (2, 2)
    np.testing.assert_array_equal(out, [[4, 5], [5, 4]])

    for dtype in (torch.int64, torch.int32, torch.uint8):
        tensor = torch.tensor([1, 0, 1], dtype=dtype)
        out = small.to_unified('comic', tensor)
        assert out.dtype == dtype and out.device == tensor.device
        assert out.tolist() == [5, 4, 5]
        back = small.to_local('kitti', out.long())
        assert back.tolist() == [-1, -1, -1]
    empty = torch.zeros(0, dtype=torch.long)
    assert small.to_local('comic', empty).shape == (0, )


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_tensors_stay_on_gpu(small):
    tensor = torch.tensor([0, 1], device='cuda')
    out = small.to_unified('comic', tensor)
    assert out.device == tensor.device and out.tolist() == [4, 5]
    assert small.to_local('comic', out).device == tensor.device


def test_to_dict_json_pickle_round_trip(uodb):
    stored = uodb.to_dict()
    assert UnifiedLabelSpace.from_dict(stored) == uodb
    # Sorting keys must not change the layout: the order is stored as a list.
    text = json.dumps(stored, sort_keys=True)
    restored = UnifiedLabelSpace.from_dict(json.loads(text))
    assert restored == uodb and restored.classes == uodb.classes
    assert pickle.loads(pickle.dumps(uodb)) == uodb
    assert UnifiedLabelSpace.from_dict(pickle.loads(
        pickle.dumps(stored))) == uodb
    assert hash(restored) == hash(uodb)
    assert uodb != UnifiedLabelSpace(UODB_CLASSES)
    assert 'num_classes=167' in repr(uodb)
    assert 'voc07+voc12(20)' in repr(uodb)


def test_errors_of_the_constructor():
    with pytest.raises(ValueError, match='empty'):
        UnifiedLabelSpace({})
    with pytest.raises(ValueError, match="'b' has an empty class list"):
        UnifiedLabelSpace(dict(a=['x'], b=[]))
    with pytest.raises(ValueError, match=r"'a' lists the classes \['x'\]"):
        UnifiedLabelSpace(dict(a=['x', 'y', 'x']))
    with pytest.raises(TypeError, match=r"write \['face'\]"):
        UnifiedLabelSpace(dict(a='face'))
    with pytest.raises(ValueError, match="contains ':'"):
        UnifiedLabelSpace({'a:b': ['x']})
    with pytest.raises(ValueError,
                       match=r"merge_by_name names \['c'\].*\['a', 'b'\]"):
        UnifiedLabelSpace(dict(a=['x'], b=['x']), merge_by_name=['c'])
    with pytest.raises(TypeError, match='wrap it in a list'):
        UnifiedLabelSpace(dict(a=['x'], b=['x']), merge_by_name='a')
    with pytest.raises(ValueError, match=r"shared_blocks names \['voc'\]"):
        UnifiedLabelSpace(dict(a=['x'], b=['x']), shared_blocks=[['a', 'voc']])
    with pytest.raises(TypeError, match='groups of dataset names'):
        UnifiedLabelSpace(dict(a=['x'], b=['x']), shared_blocks=['a', 'b'])
    with pytest.raises(ValueError, match='in two shared blocks'):
        UnifiedLabelSpace(
            dict(a=['x'], b=['x'], c=['x']),
            shared_blocks=[['a', 'b'], ['b', 'c']])


def test_shared_block_with_different_classes_names_both():
    with pytest.raises(ValueError) as err:
        UnifiedLabelSpace(
            dict(voc07=['cat', 'dog'], voc12=['cat', 'cow']),
            shared_blocks=[['voc07', 'voc12']])
    message = str(err.value)
    for part in ("'voc07'", "'voc12'", "only in 'voc07': ['dog']",
                 "only in 'voc12': ['cow']"):
        assert part in message
    with pytest.raises(ValueError, match='different order'):
        UnifiedLabelSpace(
            dict(voc07=['cat', 'dog'], voc12=['dog', 'cat']),
            shared_blocks=[['voc07', 'voc12']])


def test_errors_of_the_label_maps(small):
    with pytest.raises(ValueError,
                       match=r"unknown dataset 'coco'.*'kitti', 'widerface'"):
        small.to_unified('coco', [0])
    for bad in ('block_name', 'classes_of', 'class_mask'):
        with pytest.raises(ValueError, match='unknown dataset'):
            getattr(small, bad)('coco')
    with pytest.raises(ValueError,
                       match=r"local label 3 .* 'kitti' .* 0\.\.2"):
        small.to_unified('kitti', [0, 3])
    with pytest.raises(ValueError, match='local label -1'):
        small.to_unified('kitti', torch.tensor([-1, 0]))
    with pytest.raises(ValueError,
                       match=r'unified label 6 .*\(6 classes\).* 0\.\.5'):
        small.to_local('kitti', np.array([6]))
    with pytest.raises(ValueError, match='unified label 9'):
        small.dataset_of_class(9)
    with pytest.raises(TypeError, match='integer tensor'):
        small.to_unified('kitti', torch.tensor([0.0]))
    with pytest.raises(TypeError, match='integer array'):
        small.to_unified('kitti', np.array([0.5]))
    with pytest.raises(TypeError, match='must be integers'):
        small.to_unified('kitti', [0.0, 1.0])
    with pytest.raises(TypeError, match='must be integers'):
        small.to_unified('kitti', True)
    with pytest.raises(TypeError, match='int, list, tuple'):
        small.to_unified('kitti', '0')


def test_check_num_classes(uodb):
    uodb.check_num_classes(167)
    with pytest.raises(ValueError,
                       match=r'model.bbox_head.num_classes is 80.*167 classes'
                       r'.*set model.bbox_head.num_classes=167'):
        uodb.check_num_classes(80)
    with pytest.raises(ValueError, match='set head.n=167'):
        uodb.check_num_classes(178, where='head.n')


def test_from_dict_errors(small):
    stored = small.to_dict()
    edited = dict(stored, classes=list(reversed(stored['classes'])))
    with pytest.raises(ValueError, match='stored classes differ'):
        UnifiedLabelSpace.from_dict(edited)
    with pytest.raises(ValueError, match=r"lacks \['merge_by_name'\]"):
        UnifiedLabelSpace.from_dict(
            {k: v
             for k, v in stored.items() if k != 'merge_by_name'})
    with pytest.raises(ValueError, match="'datasets'"):
        UnifiedLabelSpace.from_dict(dict(stored, datasets=['kitti']))
