"""The COCO checks of a mixture entry, on variants of a real SAHI COCO file: duplicate
ids, the boxes mmdet's CocoDataset drops (compared with the installed mmdet), and
malformed files whose errors must name the file."""
import copy
import json
import re
from pathlib import Path

import pytest
from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS
from mmengine.registry import init_default_scope

import damex_mmdet  # noqa: F401
from damex_mmdet.datasets import annotation_checks
from damex_mmdet.datasets.annotation_checks import check_coco_annotations

from ..conftest import SHARED

TERRAIN = SHARED / 'realdata' / 'terrain'
pytestmark = pytest.mark.skipif(
    not TERRAIN.is_dir(), reason=f'{TERRAIN} not found: the real COCO samples live in '
    'shared/ beside the repo')


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


@pytest.fixture
def cars():
    """SAHI's terrain2 file: one 1024x682 aerial image with 5 cars."""
    return json.loads((TERRAIN / 'terrain2_coco.json').read_text())


def write_json(tmp_path: Path, content: dict, name: str = 'cars.json') -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return path


def variant(annotation: dict, new_id: int, **changes) -> dict:
    return dict(copy.deepcopy(annotation), id=new_id, **changes)


def test_duplicate_image_ids_are_rejected(cars, tmp_path):
    # Without the check pycocotools keeps one of the two images and gives it the boxes of
    # both.
    cars['images'].append(dict(cars['images'][0], file_name='terrain1.jpg'))
    ann_file = write_json(tmp_path, cars)
    with pytest.raises(ValueError, match=r'cars\.json.*image ids \[1\] are used twice'):
        check_coco_annotations(str(ann_file), 'cars', None)


def test_duplicate_annotation_ids_are_rejected(cars, tmp_path):
    cars['annotations'][3]['id'] = cars['annotations'][1]['id']
    ann_file = write_json(tmp_path, cars)
    with pytest.raises(ValueError, match=r'cars\.json.*annotation ids \[2\] are used twice'):
        check_coco_annotations(str(ann_file), 'cars', None)


def test_dropped_boxes_are_exactly_those_mmdet_drops(cars, tmp_path):
    real = cars['annotations'][0]                  # [218, 448, 222, 161]
    width, height = cars['images'][0]['width'], cars['images'][0]['height']
    cars['annotations'] += [
        variant(real, 101, ignore=1),
        variant(real, 102, ignore=0),                                   # kept
        variant(real, 103, area=0),
        variant(real, 104, bbox=[218, 448, 0.5, 161]),
        variant(real, 105, bbox=[218, 448, 222, 0]),
        variant(real, 106, bbox=[218, 448, -5, 161]),
        variant(real, 107, bbox=[width, 10, 20, 20]),                   # right of it
        variant(real, 108, bbox=[-30, 10, 30, 20]),                     # left of it
        variant(real, 109, bbox=[width - 10, height - 10, 50, 50]),     # partly: kept
        variant(real, 110, iscrowd=1),                                  # kept, ignore_flag
        variant(real, 111, bbox=[0.5, 0.5, 1, 1], area=1),              # kept
    ]
    ann_file = write_json(tmp_path, cars)

    check = check_coco_annotations(str(ann_file), 'cars', None)
    assert check.dropped_boxes == {
        "marked 'ignore'": 1, 'with area <= 0': 1, 'narrower or lower than 1 pixel': 1,
        'with zero or negative size': 2, 'outside the image': 2}

    dataset = CocoDataset(ann_file=str(ann_file), data_prefix=dict(img=str(TERRAIN)),
                          pipeline=[])
    instances = dataset.get_data_info(0)['instances']
    kept_by_mmdet = [(instance['bbox'], instance['ignore_flag']) for instance in instances]
    kept_by_check = [([x, y, x + w, y + h], ann.get('iscrowd', 0))
                     for ann in cars['annotations']
                     for x, y, w, h in [ann['bbox']]
                     if annotation_checks.mmdet_drop_reason(ann, width, height) is None]
    assert kept_by_mmdet == kept_by_check
    assert len(kept_by_check) == 5 + 4


def test_a_dataset_that_loses_every_box_stops(cars, tmp_path):
    for annotation in cars['annotations']:
        annotation['area'] = 0
    ann_file = write_json(tmp_path, cars)
    with pytest.raises(ValueError, match=r"(?s)cars\.json.*all 5 boxes.*5 with area <= 0"):
        check_coco_annotations(str(ann_file), 'cars', None)


def test_mixture_limits_the_share_of_dropped_boxes(cars, tmp_path):
    cars['annotations'][0]['area'] = 0
    cars['annotations'][1]['ignore'] = 1
    ann_file = write_json(tmp_path, cars)
    entry = dict(name='cars', ann_file=str(ann_file), img_prefix=str(TERRAIN))

    mixture = DATASETS.build(dict(type='DatasetMixture', datasets=[entry]))
    assert mixture.dropped_boxes == {'cars': {'with area <= 0': 1, "marked 'ignore'": 1}}

    with pytest.raises(ValueError, match=r"(?s)'cars'.*2 of its 5 boxes.*"
                       r'max_dropped_box_fraction=0\.3'):
        DATASETS.build(dict(type='DatasetMixture', datasets=[entry],
                            max_dropped_box_fraction=0.3))


@pytest.mark.parametrize('edit, message', [
    (lambda c: c['annotations'][2].pop('area'),
     r"annotation ids \[3\] have no 'area'"),
    (lambda c: c['annotations'][1].update(bbox=[1, 2, 3, 4, 5]),
     r'annotation ids \[2\] have a bbox that is not 4 numbers'),
    (lambda c: c['annotations'][1].update(bbox=['1', '2', '3', '4']),
     r'annotation ids \[2\] have a bbox that is not 4 numbers'),
    (lambda c: c['images'][0].pop('width'),
     r"image ids \[1\] have no positive 'width' and 'height'"),
])
def test_malformed_entries_name_the_file_and_ids(cars, tmp_path, edit, message):
    edit(cars)
    ann_file = write_json(tmp_path, cars)
    with pytest.raises(ValueError, match=rf'cars\.json.*{message}'):
        check_coco_annotations(str(ann_file), 'cars', None)


def test_non_utf8_json_names_the_file_and_line(cars, tmp_path):
    cars['categories'][0]['name'] = 'voiture\N{LATIN SMALL LETTER E WITH ACUTE}'
    ann_file = tmp_path / 'cars.json'
    ann_file.write_bytes(json.dumps(cars, ensure_ascii=False, indent=1).encode('latin-1'))
    with pytest.raises(ValueError, match=r'cars\.json.*line \d+.*not UTF-8.*iconv'):
        check_coco_annotations(str(ann_file), 'cars', None)


def test_ann_file_that_is_a_folder(tmp_path):
    (tmp_path / 'annotations').mkdir()
    (tmp_path / 'annotations' / 'train.json').write_text('{}')
    with pytest.raises(IsADirectoryError,
                       match=r'annotations is a folder.*annotations/train\.json'):
        check_coco_annotations(str(tmp_path / 'annotations'), 'cars', None)


def test_areas_larger_than_their_boxes_are_reported_with_the_fix(cars, tmp_path,
                                                                   monkeypatch):
    """The real drone-tool file gives every box the whole image's area, which the COCO
    evaluation would score as large objects."""
    warnings = []
    monkeypatch.setattr(annotation_checks, 'print_log',
                        lambda message, **kwargs: warnings.append(message))
    real = write_json(tmp_path, cars)
    check_coco_annotations(str(real), 'cars', None)
    assert len(warnings) == 1
    assert re.search(r"'cars' \(.*cars\.json\): 5 of its 5 boxes have an 'area' larger "
                     r"than their box's width x height \(annotation ids \[1, 2, 3, 4, 5\]; "
                     r'id 1: area 698368 for a 222x161 box\).*coco_merge\.py .*cars\.json '
                     r'--recompute-area', warnings[0])

    warnings.clear()
    for annotation in cars['annotations']:
        _, _, width, height = annotation['bbox']
        annotation['area'] = width * height
    # A mask's area is smaller than its box; rounding may exceed it by a hair.
    cars['annotations'][0]['area'] *= 0.6
    cars['annotations'][1]['area'] += 0.5
    check_coco_annotations(str(write_json(tmp_path, cars)), 'cars', None)
    assert warnings == []
