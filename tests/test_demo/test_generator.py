"""The demo mixture generator: determinism, valid COCO, mmdet loading, caching."""
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from damex_mmdet.demo import (DEMO_DATASETS, EXTRA_DEMO_DATASETS, MANIFEST_NAME,
                               generate_demo_mixture)
from damex_mmdet.demo.generator import SPLITS

from ..conftest import load_script

# Tiny splits keep the module fast; scan's 3 training images stay fewer than the others'.
NUM_TRAIN = {'photo': 4, 'sketch': 4, 'aerial': 4, 'scan': 3}
NUM_VAL = 2
NUM_TEST = 2
# Decoded pixels of the first train and val image of each dataset as version 1 (before the
# test split existed) wrote them: adding a split must leave the other splits unchanged.
VERSION_1_PIXELS = {
    'photo_train_0000.png': '43477ff25bb685eb', 'photo_val_0000.png': '247f4c081257df93',
    'sketch_train_0000.png': '7ca752f419443f5b', 'sketch_val_0000.png': '852b708bd1622ac6',
    'aerial_train_0000.png': '0ff2f13f0bf592ca', 'aerial_val_0000.png': '32f4413b296faf54',
    'scan_train_0000.png': 'f097865dccec027d', 'scan_val_0000.png': '2ea9494cb0c1c878',
}


def generate(out_dir: Path, seed: int = 0) -> dict:
    return generate_demo_mixture(out_dir, seed=seed, num_train=NUM_TRAIN, num_val=NUM_VAL,
                                 num_test=NUM_TEST, progress=False)


def file_digests(root: Path) -> dict:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob('*')) if path.is_file()
    }


@pytest.fixture(scope='module')
def mixture(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('demo_mixture')
    return out_dir, generate(out_dir)


def test_description_matches_specs(mixture):
    out_dir, description = mixture
    assert list(description) == [spec.name for spec in DEMO_DATASETS]
    for spec in DEMO_DATASETS:
        entry = description[spec.name]
        assert entry['classes'] == spec.classes
        assert entry['train']['num_images'] == NUM_TRAIN[spec.name]
        assert entry['val']['num_images'] == NUM_VAL
        assert entry['test']['num_images'] == NUM_TEST
        for split in ('train', 'val', 'test'):
            assert Path(entry[split]['ann_file']).is_file()
            assert Path(entry[split]['img_prefix']).is_dir()
    assert (out_dir / MANIFEST_NAME).is_file()


def test_same_seed_gives_same_bytes_and_other_seed_differs(mixture, tmp_path):
    out_dir, _ = mixture
    generate(tmp_path / 'same')
    generate(tmp_path / 'other', seed=1)
    reference = file_digests(out_dir)
    assert file_digests(tmp_path / 'same') == reference
    other = file_digests(tmp_path / 'other')
    assert other.keys() == reference.keys()
    changed = [name for name in reference if name.endswith('.png')
               and other[name] != reference[name]]
    assert len(changed) == sum(name.endswith('.png') for name in reference)


def test_splits_are_prefixes_of_larger_splits(mixture, tmp_path):
    out_dir, _ = mixture
    generate_demo_mixture(tmp_path, num_train=1, num_val=1, num_test=1, progress=False)
    for spec in DEMO_DATASETS:
        name = f'{spec.name}_train_0000.png'
        relative = Path(spec.name, 'images', 'train', name)
        assert (tmp_path / relative).read_bytes() == (out_dir / relative).read_bytes()


def test_train_and_val_are_those_of_version_1_and_test_is_new(mixture):
    out_dir, _ = mixture
    pixels = {}
    for spec in DEMO_DATASETS:
        for split in SPLITS:
            path = out_dir / spec.name / 'images' / split / f'{spec.name}_{split}_0000.png'
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            pixels[path.name] = hashlib.sha256(image.tobytes()).hexdigest()[:16]
    assert {name: pixels[name] for name in VERSION_1_PIXELS} == VERSION_1_PIXELS
    # The test split draws from its own stream: no test image repeats a val image.
    for spec in DEMO_DATASETS:
        assert pixels[f'{spec.name}_test_0000.png'] != pixels[f'{spec.name}_val_0000.png']


def test_annotations_are_valid_coco(mixture):
    _, description = mixture
    assert_valid_coco(description, DEMO_DATASETS)


def assert_valid_coco(description: dict, specs) -> None:
    for spec in specs:
        height, width = spec.image_size
        for split in SPLITS:
            coco = COCO(description[spec.name][split]['ann_file'])
            categories = coco.loadCats(coco.getCatIds())
            assert [(c['id'], c['name']) for c in categories] == list(
                enumerate(spec.classes, start=1))
            assert len(coco.getImgIds()) == description[spec.name][split]['num_images']
            for image_id in coco.getImgIds():
                image = coco.loadImgs(image_id)[0]
                assert (image['height'], image['width']) == (height, width)
                assert (Path(description[spec.name][split]['img_prefix']) /
                        image['file_name']).is_file()
                boxes = [ann['bbox'] for ann in coco.imgToAnns[image_id]]
                assert spec.objects_per_image[0] <= len(boxes) <= spec.objects_per_image[1]
                for x, y, w, h in boxes:
                    assert w > 0 and h > 0
                    assert x >= 0 and y >= 0 and x + w <= width and y + h <= height
                assert max_pairwise_iou(boxes) <= spec.max_iou
            for ann in coco.dataset['annotations']:
                assert ann['iscrowd'] == 0
                assert ann['area'] == pytest.approx(ann['bbox'][2] * ann['bbox'][3])


def max_pairwise_iou(boxes) -> float:
    worst = 0.0
    for i, (ax, ay, aw, ah) in enumerate(boxes):
        for bx, by, bw, bh in boxes[i + 1:]:
            inter = (max(0.0, min(ax + aw, bx + bw) - max(ax, bx)) *
                     max(0.0, min(ay + ah, by + bh) - max(ay, by)))
            worst = max(worst, inter / (aw * ah + bw * bh - inter))
    return worst


def test_boxes_are_tight_on_the_painted_pixels(mixture):
    """Sketch strokes are the only dark pixels on the paper: no ink lies outside the boxes,
    and inside each box the clearly dark pixels reach within a pixel (the anti-aliased
    fringe) of every edge."""
    _, description = mixture
    entry = description['sketch']['train']
    coco = COCO(entry['ann_file'])
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        grey = cv2.imread(entry['img_prefix'] + info['file_name'], cv2.IMREAD_GRAYSCALE)
        ink = grey < 180
        inside = np.zeros_like(ink)
        for ann in coco.imgToAnns[image_id]:
            x, y, w, h = (int(v) for v in ann['bbox'])
            rows = np.flatnonzero(ink[y:y + h, x:x + w].any(axis=1))
            cols = np.flatnonzero(ink[y:y + h, x:x + w].any(axis=0))
            assert rows[0] <= 1 and rows[-1] >= h - 2 and cols[0] <= 1 and cols[-1] >= w - 2
            inside[y:y + h, x:x + w] = True
        assert not (grey < 215)[~inside].any()


def test_loads_with_mmdet_coco_dataset(mixture):
    from mmdet.datasets import CocoDataset
    _, description = mixture
    for spec in DEMO_DATASETS:
        split = description[spec.name]['train']
        dataset = CocoDataset(ann_file=split['ann_file'], data_prefix=dict(img=split['img_prefix']),
                              metainfo=dict(classes=spec.classes), pipeline=[],
                              filter_cfg=None, test_mode=False)
        assert len(dataset) == split['num_images']
        infos = [dataset[i] for i in range(len(dataset))]
        assert sum(len(info['instances']) for info in infos) == split['num_objects']
        assert Path(infos[0]['img_path']).is_file()
        labels = {inst['bbox_label'] for info in infos for inst in info['instances']}
        assert labels <= set(range(len(spec.classes)))


def test_rerun_reuses_files_and_new_counts_regenerate(tmp_path):
    first = generate_demo_mixture(tmp_path, num_train=2, num_val=1, num_test=1, progress=False)
    mtimes = {path: path.stat().st_mtime_ns for path in tmp_path.rglob('*') if path.is_file()}
    assert generate_demo_mixture(tmp_path, num_train=2, num_val=1, num_test=1, progress=False) == first
    assert {path: path.stat().st_mtime_ns for path in mtimes} == mtimes

    fewer = {'photo': 2, 'sketch': 2, 'aerial': 2, 'scan': 1}
    second = generate_demo_mixture(tmp_path, num_train=fewer, num_val=1, num_test=1,
                                   progress=False)
    assert second['scan']['train']['num_images'] == 1
    # The image left over from the larger split is removed, not kept as a stray file.
    assert sorted(p.name for p in (tmp_path / 'scan' / 'images' / 'train').iterdir()) == [
        'scan_train_0000.png']


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='Unknown demo datasets'):
        generate_demo_mixture(tmp_path, num_train={'coco': 3}, progress=False)
    with pytest.raises(ValueError, match='positive int'):
        generate_demo_mixture(tmp_path, num_val=0, progress=False)
    with pytest.raises(ValueError, match='non-negative'):
        generate_demo_mixture(tmp_path, seed=-1, progress=False)


EXTRA_NAMES = [spec.name for spec in EXTRA_DEMO_DATASETS]


@pytest.fixture(scope='module')
def extra_mixture(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp('extra_mixture')
    return out_dir, generate_demo_mixture(out_dir, num_train=3, num_val=1, num_test=1,
                                          progress=False, datasets=EXTRA_NAMES)


def test_extra_datasets_are_valid_coco_in_the_order_asked(extra_mixture):
    out_dir, description = extra_mixture
    assert list(description) == EXTRA_NAMES
    assert_valid_coco(description, EXTRA_DEMO_DATASETS)
    manifest = json.loads((out_dir / MANIFEST_NAME).read_text())
    assert manifest['names'] == EXTRA_NAMES
    assert sorted(path.name for path in out_dir.iterdir()) == sorted([*EXTRA_NAMES,
                                                                      MANIFEST_NAME])


def test_a_dataset_is_the_same_whichever_others_it_is_generated_with(mixture, extra_mixture,
                                                                     tmp_path):
    """Subsets mixing default and extra datasets, in any order: every file of a dataset is
    byte-identical to the one generated with its own tuple (so also deterministic)."""
    subset = ['microscopy', 'photo', 'comic']
    description = generate_demo_mixture(tmp_path, num_train={'photo': 4, 'microscopy': 3,
                                                             'comic': 3},
                                        num_val={'photo': 2, 'microscopy': 1, 'comic': 1},
                                        num_test={'photo': 2, 'microscopy': 1, 'comic': 1},
                                        progress=False, datasets=subset)
    assert list(description) == subset
    for name in subset:
        reference = mixture[0] if name == 'photo' else extra_mixture[0]
        assert file_digests(tmp_path / name) == file_digests(reference / name)


# Per dataset: mean red, green and blue; grey-level contrast; colourfulness (max - min
# channel); how much brighter the lower half is than the upper (sky and ground).
STATISTICS = ('mean R', 'mean G', 'mean B', 'grey std', 'colourfulness', 'lower - upper')


def image_statistics(image_dir: Path) -> np.ndarray:
    images = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32)
              for path in sorted(image_dir.glob('*.png'))]
    pixels = np.concatenate([image.reshape(-1, 3) for image in images])
    greys = [image.mean(axis=2) for image in images]
    half = greys[0].shape[0] // 2
    return np.array([*pixels.mean(axis=0), np.mean([grey.std() for grey in greys]),
                     np.mean(pixels.max(axis=1) - pixels.min(axis=1)),
                     np.mean([grey[half:].mean() - grey[:half].mean() for grey in greys])])


def test_every_domain_looks_unlike_every_other(mixture, extra_mixture):
    """Each pair of the eight datasets differs by at least 25 grey levels in some image
    statistic, so no new domain is a recoloured copy of another."""
    statistics = {}
    for out_dir, description in (mixture, extra_mixture):
        for name, entry in description.items():
            statistics[name] = image_statistics(Path(entry['train']['img_prefix']))
    assert len(statistics) == 8
    names = list(statistics)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            gaps = np.abs(statistics[first] - statistics[second])
            assert gaps.max() >= 25, (first, second, dict(zip(STATISTICS, gaps.round(1))))


def test_microscopy_boxes_are_tight_on_the_glowing_pixels(extra_mixture):
    """On the dark slide only objects glow brightly (debris and haze stay dim): no bright
    pixel lies outside the boxes, and inside each box bright pixels reach within a pixel
    (the anti-aliased fringe) of every edge, at any rotation."""
    _, description = extra_mixture
    entry = description['microscopy']['train']
    coco = COCO(entry['ann_file'])
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        brightest = cv2.imread(entry['img_prefix'] + info['file_name']).max(axis=2)
        inside = np.zeros(brightest.shape, bool)
        for ann in coco.imgToAnns[image_id]:
            x, y, w, h = (int(v) for v in ann['bbox'])
            glowing = brightest[y:y + h, x:x + w] > 60
            rows, cols = np.flatnonzero(glowing.any(axis=1)), np.flatnonzero(glowing.any(axis=0))
            assert rows[0] <= 1 and rows[-1] >= h - 2 and cols[0] <= 1 and cols[-1] >= w - 2
            inside[y:y + h, x:x + w] = True
        assert not (brightest > 110)[~inside].any()


def test_the_cache_is_per_choice_of_datasets(tmp_path):
    first = generate_demo_mixture(tmp_path, num_train=1, num_val=1, num_test=1,
                                  progress=False, datasets=['thermal', 'scan'])
    digests = file_digests(tmp_path)
    assert generate_demo_mixture(tmp_path, num_train=1, num_val=1, num_test=1,
                                 progress=False, datasets=['thermal', 'scan']) == first
    assert file_digests(tmp_path) == digests
    # The same datasets in another order are another mixture's description.
    swapped = generate_demo_mixture(tmp_path, num_train=1, num_val=1, num_test=1,
                                    progress=False, datasets=['scan', 'thermal'])
    assert list(swapped) == ['scan', 'thermal']
    assert json.loads((tmp_path / MANIFEST_NAME).read_text())['names'] == ['scan', 'thermal']


@pytest.mark.parametrize('datasets, message', [
    (['photo', 'infrared'], r"Unknown demo datasets \['infrared'\]; known: \['photo', 'sketch', "
     r"'aerial', 'scan', 'thermal', 'comic', 'microscopy', 'underwater'\]"),
    ('photo', 'non-empty list of demo dataset names'),
    ([], 'non-empty list of demo dataset names'),
    (['comic', 'comic'], r"names \['comic'\] more than once"),
])
def test_rejects_bad_dataset_choices(tmp_path, datasets, message):
    with pytest.raises(ValueError, match=message):
        generate_demo_mixture(tmp_path, progress=False, datasets=datasets)
    assert not any(tmp_path.iterdir())


def test_counts_must_name_chosen_datasets(tmp_path):
    with pytest.raises(ValueError, match=r"num_train gives counts for \['scan'\], which are not "
                       r"among the datasets generated \(\['photo', 'comic'\]\)"):
        generate_demo_mixture(tmp_path, num_train={'scan': 2}, progress=False,
                              datasets=['photo', 'comic'])
    with pytest.raises(ValueError, match=r"Unknown demo datasets \['coco'\] in num_val"):
        generate_demo_mixture(tmp_path, num_val={'coco': 2}, progress=False,
                              datasets=['photo', 'comic'])


def test_the_tool_writes_the_datasets_named_in_order(tmp_path, capsys):
    tool = load_script('tools/generate_demo_mixture.py')
    tool.main(['--out', str(tmp_path), '--datasets', 'underwater', 'sketch', '--num-train', '1',
               '--num-val', '1', '--num-test', '1', '--no-progress'])
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows[2:4]] == ['underwater', 'sketch']
    assert rows[2].split()[-3:] == ['fish,', 'jellyfish,', 'person']
    assert sorted(path.name for path in tmp_path.iterdir()) == [MANIFEST_NAME, 'sketch',
                                                                'underwater']
    with pytest.raises(SystemExit, match=r"error: Unknown demo datasets \['sonar'\]; known: "):
        tool.main(['--out', str(tmp_path / 'bad'), '--datasets', 'photo', 'sonar'])
