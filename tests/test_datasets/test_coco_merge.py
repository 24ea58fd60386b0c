"""Merging COCO files (tools/dataset_converters/coco_merge.py): the real per-image drone
files of shared/realdata/terrain, whose areas are the whole image's, and small files
written here for the remapping, the conflicts and the clipping."""
import json
import runpy
import sys
from pathlib import Path

import pytest
from mmdet.datasets import CocoDataset
from pycocotools.coco import COCO

from damex_mmdet.datasets.converters import (ConversionError, merge_coco_files,
                                             write_coco_json)

from ..conftest import REALDATA, REPO_ROOT

TERRAIN = REALDATA / 'terrain'
TOOL = REPO_ROOT / 'tools' / 'dataset_converters' / 'coco_merge.py'
needs_realdata = pytest.mark.skipif(
    not TERRAIN.is_dir(), reason=f'{TERRAIN} not found: the real COCO samples live in '
    'shared/ beside the repo')


def write_json(path: Path, content: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


def coco_file(path: Path, images, categories, annotations) -> Path:
    """A COCO file of ``images`` ((id, file_name, width, height)), ``categories``
    ((id, name)) and ``annotations`` ((id, image_id, category_id, bbox)) with box areas."""
    return write_json(path, dict(
        images=[dict(id=i, file_name=f, width=w, height=h) for i, f, w, h in images],
        categories=[dict(id=i, name=n) for i, n in categories],
        annotations=[dict(id=i, image_id=image, category_id=category, bbox=bbox,
                          area=bbox[2] * bbox[3], iscrowd=0)
                     for i, image, category, bbox in annotations]))


def run_tool(args: list, monkeypatch) -> None:
    monkeypatch.setattr(sys, 'argv', ['coco_merge.py', *map(str, args)])
    runpy.run_path(str(TOOL), run_name='__main__')


@needs_realdata
def test_real_per_image_files_merge_with_recomputed_areas(tmp_path):
    coco, stats = merge_coco_files([TERRAIN], recompute_area=True)
    sources = [json.loads((TERRAIN / f'terrain{i}_coco.json').read_text()) for i in (1, 2)]
    # Both files call their only category id 1: human in one, car in the other.
    assert coco['categories'] == [dict(id=1, name='human'), dict(id=2, name='car')]
    assert [(i['id'], i['file_name']) for i in coco['images']] == [
        (1, 'terrain1.jpg'), (2, 'terrain2.png')]
    expected = [(image_id, category_id, a['bbox'], a['bbox'][2] * a['bbox'][3])
                for image_id, category_id, source in ((1, 1, sources[0]), (2, 2, sources[1]))
                for a in source['annotations']]
    assert [(a['image_id'], a['category_id'], a['bbox'], a['area'])
            for a in coco['annotations']] == expected
    assert [a['id'] for a in coco['annotations']] == list(range(1, 13))
    assert (stats.files, stats.images, stats.boxes, stats.areas_recomputed) == (2, 2, 12, 12)
    # The 48x152 box the drone tool gave 2,795,520 square pixels is medium now.
    assert any(a['bbox'][2:] == [48.0, 152.0] and a['area'] == 7296
               for a in coco['annotations'])

    out = write_coco_json(coco, tmp_path / 'terrain.json')
    assert len(COCO(str(out)).getAnnIds(catIds=[2])) == 5
    dataset = CocoDataset(ann_file=str(out), data_prefix=dict(img=str(TERRAIN)), pipeline=[],
                          metainfo=dict(classes=('human', 'car')))
    assert [len(dataset.get_data_info(i)['instances']) for i in range(2)] == [7, 5]


@needs_realdata
def test_real_areas_larger_than_their_boxes_stop_the_merge_per_file():
    with pytest.raises(ConversionError) as error:
        merge_coco_files([TERRAIN / 'terrain1_coco.json', TERRAIN / 'terrain2_coco.json'])
    message = str(error.value)
    assert 'terrain1_coco.json: 7 annotations' in message
    assert 'id 1: area 2795520 for a 153x182 box' in message
    assert 'terrain2_coco.json: 5 annotations' in message
    assert '--recompute-area' in message


def test_categories_are_matched_by_name_and_every_id_is_remapped(tmp_path):
    first = coco_file(tmp_path / 'a.json', [(10, 'a.jpg', 100, 50)],
                      [(3, 'dog'), (7, 'cat')],
                      [(5, 10, 7, [1, 2, 10, 20]), (6, 10, 3, [0, 0, 5, 5])])
    second = coco_file(tmp_path / 'b.json', [(10, 'b.jpg', 80, 60), (11, 'c.jpg', 80, 60)],
                       [(1, 'cat'), (2, 'bird')],
                       [(5, 11, 2, [3, 3, 4, 4]), (9, 10, 1, [1, 1, 2, 2])])
    coco, _ = merge_coco_files([first, second])
    assert coco['categories'] == [dict(id=1, name='dog'), dict(id=2, name='cat'),
                                  dict(id=3, name='bird')]
    names = {i['id']: i['file_name'] for i in coco['images']}
    assert names == {1: 'a.jpg', 2: 'b.jpg', 3: 'c.jpg'}
    assert [(a['id'], names[a['image_id']], a['category_id'], a['bbox'])
            for a in coco['annotations']] == [
        (1, 'a.jpg', 2, [1, 2, 10, 20]), (2, 'a.jpg', 1, [0, 0, 5, 5]),
        (3, 'c.jpg', 3, [3, 3, 4, 4]), (4, 'b.jpg', 2, [1, 1, 2, 2])]
    # Areas are kept unless asked: a mask's area may be smaller than its box.
    smaller = json.loads(first.read_text())
    smaller['annotations'][0]['area'] = 150
    coco, _ = merge_coco_files([write_json(tmp_path / 'mask.json', smaller)])
    assert coco['annotations'][0]['area'] == 150


def test_an_image_listed_twice_stops_with_both_files(tmp_path):
    first = coco_file(tmp_path / 'a.json', [(1, 'same.jpg', 100, 50)], [(1, 'cat')], [])
    resized = coco_file(tmp_path / 'b.json', [(1, 'same.jpg', 200, 100)], [(1, 'cat')], [])
    with pytest.raises(ConversionError, match=r'b\.json \(image id 1\): image same\.jpg is '
                       r'listed again with different sizes, 100x50 and 200x100; .*a\.json '
                       r'lists it first'):
        merge_coco_files([first, resized])
    copy = coco_file(tmp_path / 'c.json', [(4, 'same.jpg', 100, 50)], [(1, 'cat')], [])
    with pytest.raises(ConversionError, match=r'c\.json \(image id 4\): image same\.jpg is '
                       r'listed again; '):
        merge_coco_files([first, copy])


@pytest.mark.parametrize('edit, message', [
    (lambda c: c['images'].append(dict(c['images'][0])), r'image ids \[1\] are used twice'),
    (lambda c: c['annotations'][0].update(image_id=99),
     r'annotation ids \[1\] point at image ids missing'),
    (lambda c: c['annotations'][0].update(category_id=99),
     r'annotation ids \[1\] use category ids that "categories" does not define'),
    (lambda c: c['annotations'][0].pop('area'),
     r"annotation ids \[1\] have no positive number as 'area'.*--recompute-area"),
    (lambda c: c['categories'].append(dict(id=2, name='cat')),
     r"categories \['cat'\] are defined twice"),
    (lambda c: c.pop('annotations'), r'no list of objects "annotations"'),
])
def test_malformed_inputs_name_the_file_and_ids(tmp_path, edit, message):
    content = json.loads(coco_file(tmp_path / 'a.json', [(1, 'a.jpg', 100, 50)],
                                   [(1, 'cat')], [(1, 1, 1, [1, 2, 10, 20])]).read_text())
    edit(content)
    with pytest.raises(ConversionError, match=rf'bad\.json: {message}'):
        merge_coco_files([write_json(tmp_path / 'bad.json', content)])


def test_boxes_are_clipped_or_dropped_and_counted(tmp_path):
    source = coco_file(tmp_path / 'a.json', [(1, 'a.jpg', 100, 50)], [(1, 'cat')], [
        (1, 1, 1, [90, 40, 20, 20]),     # clipped to [90, 40, 10, 10]
        (2, 1, 1, [120, 10, 5, 5]),      # outside the image
        (3, 1, 1, [10, 10, 0, 5]),       # no width
        (4, 1, 1, [10, 10, 5, 5])])
    coco, stats = merge_coco_files([source], recompute_area=True)
    assert [(a['bbox'], a['area']) for a in coco['annotations']] == [
        ([90, 40, 10, 10], 100), ([10, 10, 5, 5], 25)]
    assert stats.clipped == 1
    assert stats.skipped == {'box outside the image': 1, 'box with zero or negative size': 1}
    assert 'a.json annotation 2' in stats.summary()


def test_file_names_relative_to_each_input_become_relative_to_one_root(tmp_path):
    for folder in ('day', 'night'):
        coco_file(tmp_path / 'drone' / folder / 'frame.json',
                  [(1, 'frame.jpg', 100, 50)], [(1, 'car')], [(1, 1, 1, [1, 2, 10, 20])])
    inputs = [str(tmp_path / 'drone' / '*' / 'frame.json')]
    coco, _ = merge_coco_files(inputs, file_name_root=tmp_path / 'drone')
    assert [i['file_name'] for i in coco['images']] == ['day/frame.jpg', 'night/frame.jpg']
    with pytest.raises(ConversionError, match=r'frame\.jpg .* is not inside file_name_root'):
        merge_coco_files(inputs, file_name_root=tmp_path / 'drone' / 'day')
    with pytest.raises(ConversionError, match=r'the pattern .*\*\.png matches no file'):
        merge_coco_files([str(tmp_path / '*.png')])


@needs_realdata
def test_cli_writes_the_merged_json_and_refuses_to_read_its_own_output(
        tmp_path, monkeypatch, capsys):
    folder = tmp_path / 'terrain'
    folder.mkdir()
    for name in ('terrain1_coco.json', 'terrain2_coco.json'):
        (folder / name).write_text((TERRAIN / name).read_text())
    out = folder / 'merged.json'
    run_tool([folder, '--recompute-area', '--out', out], monkeypatch)
    assert 'areas recomputed as box width x height: 12' in capsys.readouterr().out
    assert len(json.loads(out.read_text())['images']) == 2
    with pytest.raises(SystemExit, match=r'^error: --out .*merged\.json is also one of the '
                       'inputs'):
        run_tool([folder, '--recompute-area', '--out', out], monkeypatch)
