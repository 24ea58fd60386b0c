"""Converters from the UODB source formats to COCO: small fixtures written in each original
format, exact boxes out, and the json loads in pycocotools and in mmdet's CocoDataset."""
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from damex_mmdet.datasets.converters import (DOTA_CLASSES, LISA_CLASSES, VOC_STYLE_CLASSES,
                                             ConversionError,
                                             deeplesion_image_path, deeplesion_to_coco,
                                             dlib_to_coco, dota_to_coco, kitti_to_coco,
                                             lisa_class_of, lisa_to_coco, validate_coco,
                                             voc_to_coco, widerface_to_coco, write_coco_json)
from damex_mmdet.datasets.converters.coco_builder import read_image_size

from ..conftest import REALDATA, REPO_ROOT

needs_realdata = pytest.mark.skipif(
    not REALDATA.is_dir(),
    reason=f'{REALDATA} not found: the real annotation samples live in shared/ beside the repo')


def draw_image(path: Path, width: int, height: int, dtype=np.uint8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    if dtype == np.uint16:  # DeepLesion ships 16-bit grey PNGs
        Image.fromarray(pixels[..., 0].astype(np.uint16) * 256).save(path)
    else:
        Image.fromarray(pixels).save(path)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def boxes_of(coco: dict, file_name: str) -> list:
    """``(class name, bbox, iscrowd)`` of one image, in annotation order."""
    image_id = next(image['id'] for image in coco['images'] if image['file_name'] == file_name)
    names = {category['id']: category['name'] for category in coco['categories']}
    return [(names[ann['category_id']], ann['bbox'], ann['iscrowd'])
            for ann in coco['annotations'] if ann['image_id'] == image_id]


def check_loads(coco: dict, img_dir: Path, tmp_path: Path) -> None:
    """The json loads in pycocotools and in mmdet's CocoDataset with the same boxes."""
    from mmdet.datasets import CocoDataset

    ann_file = write_coco_json(coco, tmp_path / 'out' / 'annotations.json')
    assert not [path for path in ann_file.parent.iterdir() if path != ann_file]
    api = COCO(str(ann_file))
    assert sorted(api.getImgIds()) == [image['id'] for image in coco['images']]
    assert len(api.getAnnIds()) == len(coco['annotations'])

    classes = tuple(category['name'] for category in coco['categories'])
    dataset = CocoDataset(ann_file=str(ann_file), data_prefix=dict(img=str(img_dir)),
                          metainfo=dict(classes=classes), pipeline=[])
    assert len(dataset) == len(coco['images'])
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        assert Path(info['img_path']).is_file()
        annotations = [ann for ann in coco['annotations'] if ann['image_id'] == info['img_id']]
        instances = info['instances']
        assert [(instance['bbox_label'], instance['ignore_flag']) for instance in instances] \
            == [(ann['category_id'] - 1, ann['iscrowd']) for ann in annotations]
        np.testing.assert_allclose(
            np.array([instance['bbox'] for instance in instances]).reshape(-1, 4),
            np.array([[x, y, x + w, y + h] for x, y, w, h in
                      (ann['bbox'] for ann in annotations)]).reshape(-1, 4))


# --- PASCAL VOC ---------------------------------------------------------------------------

def voc_object(name, box, difficult='<difficult>0</difficult>'):
    xmin, ymin, xmax, ymax = box
    return (f'<object><name>{name}</name><pose/><truncated/>{difficult}<bndbox><xmin>{xmin}'
            f'</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>')


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / 'VOC'
    draw_image(root / 'JPEGImages' / 'a.jpg', 64, 48)
    draw_image(root / 'JPEGImages' / 'b.png', 40, 30)
    write(root / 'Annotations' / 'a.xml', '<annotation><filename>a.jpg</filename><size><width>64'
          '</width><height>48</height><depth>3</depth></size>'
          + voc_object('dog', (11, 6, 30, 25))
          + voc_object('person', (20.5, 10.5, 40.25, 47.0), '<difficult>1</difficult>')
          + voc_object('car', (51, 1, 70, 20))          # crosses the right border
          + voc_object('cat', (6, 5, 5, 10))            # 1-based xmax = xmin - 1: empty
          + '</annotation>')
    # Labelling-tool style: no <size>, empty tags, a <filename> that does not exist.
    write(root / 'Annotations' / 'b.xml', '<annotation><filename>b.jpeg</filename>'
          + voc_object('person', (1, 1, 40, 30), '<difficult/>')
          + voc_object('unicorn', (2, 2, 9, 9)) + '</annotation>')
    write(root / 'ImageSets' / 'Main' / 'train.txt', 'a\nb\nmissing\n')
    return root


def test_voc_boxes_difficult_clipping_and_skips(voc_root, tmp_path):
    coco, stats = voc_to_coco(voc_root / 'Annotations', voc_root / 'JPEGImages',
                              image_set_file=voc_root / 'ImageSets/Main/train.txt',
                              skip_unknown=True)
    assert [c['name'] for c in coco['categories']] == list(VOC_STYLE_CLASSES['voc07'])
    assert [c['id'] for c in coco['categories']] == list(range(1, 21))
    assert [(i['file_name'], i['width'], i['height']) for i in coco['images']] == [
        ('a.jpg', 64, 48), ('b.png', 40, 30)]
    # 1-based VOC pixels: xmin/ymin move by -1, xmax/ymax stay.
    assert boxes_of(coco, 'a.jpg') == [('dog', [10.0, 5.0, 20.0, 20.0], 0),
                                       ('person', [19.5, 9.5, 20.75, 37.5], 1),
                                       ('car', [50.0, 0.0, 14.0, 20.0], 0)]
    assert boxes_of(coco, 'b.png') == [('person', [0.0, 0.0, 40.0, 30.0], 0)]
    assert coco['annotations'][0]['area'] == 400.0
    assert (stats.images, stats.boxes, stats.ignored, stats.clipped) == (2, 4, 1, 1)
    assert stats.skipped == {'box with zero or negative size': 1,
                             "class 'unicorn' not in the class list": 1,
                             'annotation file missing': 1}
    assert 'unicorn' in stats.summary()
    check_loads(coco, voc_root / 'JPEGImages', tmp_path)


def test_voc_unknown_class_names_file_and_class(voc_root):
    with pytest.raises(ConversionError,
                       match=r"b\.xml \(object 2\): class 'unicorn'.*--skip-unknown"):
        voc_to_coco(voc_root / 'Annotations', voc_root / 'JPEGImages')


def test_voc_accepts_other_class_lists_and_zero_based(voc_root):
    (voc_root / 'Annotations' / 'b.xml').unlink()
    coco, _ = voc_to_coco(voc_root / 'Annotations', voc_root / 'JPEGImages',
                          classes=VOC_STYLE_CLASSES['watercolor'], one_based=False)
    assert [c['name'] for c in coco['categories']] == list(VOC_STYLE_CLASSES['watercolor'])
    assert boxes_of(coco, 'a.jpg')[:2] == [('dog', [11.0, 6.0, 19.0, 19.0], 0),
                                           ('person', [20.5, 10.5, 19.75, 36.5], 1)]


def test_voc_broken_xml_reports_line(voc_root):
    write(voc_root / 'Annotations' / 'a.xml', '<annotation>\n<object>\n</annotation>')
    with pytest.raises(ConversionError, match=r'a\.xml:3: not well-formed'):
        voc_to_coco(voc_root / 'Annotations', voc_root / 'JPEGImages', skip_unknown=True)


@needs_realdata
def test_voc_real_labelme_files(tmp_path):
    root = REALDATA / 'voc2011'
    coco, stats = voc_to_coco(root / 'Annotations', root / 'JPEGImages')
    assert (stats.images, stats.boxes, stats.ignored) == (3, 9, 0)
    assert not stats.skipped
    assert boxes_of(coco, '2011_000003.jpg') == [('person', [190.0, 106.37, 123.0, 223.0], 0),
                                                 ('person', [364.0, 82.0, 136.0, 251.0], 0)]
    assert [name for name, _, _ in boxes_of(coco, '2011_000025.jpg')] == ['bus', 'bus', 'car']
    check_loads(coco, root / 'JPEGImages', tmp_path)

@needs_realdata
def test_voc_size_that_disagrees_with_the_image(tmp_path, monkeypatch, capsys):
    """labelme's 2011_000003.xml with <width> 400 instead of the JPEG's 500: stop, or take
    the image's size with --fix-sizes; never clip the boxes to the wrong size."""
    root = tmp_path / 'voc2011'
    shutil.copytree(REALDATA / 'voc2011', root)
    xml_file = root / 'Annotations' / '2011_000003.xml'
    xml_file.write_text(xml_file.read_text().replace('<width>500</width>', '<width>400</width>'))
    with pytest.raises(ConversionError, match=r'2011_000003\.xml: the annotation gives the '
                       r'image size 400x338, but .*2011_000003\.jpg is 500x338.*--fix-sizes'):
        voc_to_coco(root / 'Annotations', root / 'JPEGImages')

    coco, stats = voc_to_coco(root / 'Annotations', root / 'JPEGImages', fix_sizes=True)
    assert coco == voc_to_coco(REALDATA / 'voc2011' / 'Annotations',
                               REALDATA / 'voc2011' / 'JPEGImages').coco
    assert stats.sizes_corrected == 1
    assert 'warning: 1 image size' in stats.summary()
    assert '2011_000003.xml' in stats.summary()

    out_file = tmp_path / 'train.json'
    run_cli_in_process('voc2coco', [root, '--out', out_file, '--fix-sizes'], monkeypatch)
    assert json.loads(out_file.read_text()) == coco
    assert 'warning: 1 image size' in capsys.readouterr().out


def test_image_size_is_the_size_mmdet_loads(tmp_path):
    """A JPEG stored 50x30 with EXIF orientation 6 (rotate by 90 degrees): mmcv loads it
    upright, 30 wide and 50 high, and so must the converters measure it."""
    import mmcv
    image_file = tmp_path / 'JPEGImages' / 'r.jpg'
    image_file.parent.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(image_file, exif=exif.tobytes())
    height, width = mmcv.imread(str(image_file)).shape[:2]
    assert read_image_size(image_file) == (width, height) == (30, 50)

    box = voc_object('dog', (1, 1, 30, 50))
    write(tmp_path / 'Annotations' / 'r.xml', f'<annotation><filename>r.jpg</filename>{box}'
          '</annotation>')
    coco, stats = voc_to_coco(tmp_path / 'Annotations', tmp_path / 'JPEGImages')
    assert (coco['images'][0]['width'], coco['images'][0]['height']) == (30, 50)
    assert stats.clipped == 0
    # A labelling tool that shows the photo upright writes that size too: no mismatch.
    write(tmp_path / 'Annotations' / 'r.xml', '<annotation><filename>r.jpg</filename><size>'
          f'<width>30</width><height>50</height></size>{box}</annotation>')
    assert voc_to_coco(tmp_path / 'Annotations', tmp_path / 'JPEGImages').coco == coco


# --- KITTI --------------------------------------------------------------------------------

KITTI_TAIL = '1.65 1.67 3.64 -0.65 1.71 46.70 -1.59'


@pytest.fixture
def kitti_root(tmp_path):
    root = tmp_path / 'training'
    draw_image(root / 'image_2' / '000000.png', 80, 40)
    draw_image(root / 'image_2' / '000001.png', 80, 40)
    write(root / 'label_2' / '000000.txt',
          f'Car 0.00 0 -1.58 10.5 5.25 30.0 20.0 {KITTI_TAIL}\n'
          f'Van 0.00 1 -1.58 40 5 60 25 {KITTI_TAIL}\n'
          f'DontCare -1 -1 -10 0 0 10 10 -1 -1 -1 -1000 -1000 -1000 -10\n')
    write(root / 'label_2' / '000001.txt',
          f'Pedestrian 0.00 0 0.2 70 10 90 39 {KITTI_TAIL} 0.93\n'
          f'Cyclist 0.00 0 0.2 1 2 3 2 {KITTI_TAIL}\n')
    return root


def test_kitti_classes_dontcare_and_mapping(kitti_root, tmp_path):
    coco, stats = kitti_to_coco(kitti_root / 'label_2', kitti_root / 'image_2')
    assert [c['name'] for c in coco['categories']] == ['Car', 'Pedestrian', 'Cyclist']
    assert boxes_of(coco, '000000.png') == [('Car', [10.5, 5.25, 19.5, 14.75], 0)]
    assert boxes_of(coco, '000001.png') == [('Pedestrian', [70.0, 10.0, 10.0, 29.0], 0)]
    assert stats.skipped == {"type 'Van' not in the classes": 1, 'DontCare region': 1,
                             'box with zero or negative size': 1}
    assert stats.clipped == 1
    check_loads(coco, kitti_root / 'image_2', tmp_path)

    write(tmp_path / 'val.txt', '000000\n')
    coco, _ = kitti_to_coco(kitti_root / 'label_2', kitti_root / 'image_2',
                            image_list=tmp_path / 'val.txt', class_map={'Van': 'Car'})
    assert [image['file_name'] for image in coco['images']] == ['000000.png']
    assert [name for name, _, _ in boxes_of(coco, '000000.png')] == ['Car', 'Car']


def test_kitti_malformed_line_reports_file_and_line(kitti_root):
    write(kitti_root / 'label_2' / '000001.txt', f'Car 0 0 0 1 2 3 4 {KITTI_TAIL}\nCar 1 2\n')
    with pytest.raises(ConversionError, match=r'000001\.txt:2: expected 15 fields'):
        kitti_to_coco(kitti_root / 'label_2', kitti_root / 'image_2')
    with pytest.raises(ConversionError, match='not in the classes'):
        kitti_to_coco(kitti_root / 'label_2', kitti_root / 'image_2', class_map={'Van': 'Bus'})


# --- WIDER FACE ---------------------------------------------------------------------------

def test_widerface_invalid_faces_and_empty_images(tmp_path):
    img_dir = tmp_path / 'WIDER_train' / 'images'
    for name in ('a.jpg', 'b.jpg', 'c.jpg'):
        draw_image(img_dir / '0--Parade' / name, 50, 40)
    gt_file = write(tmp_path / 'wider_face_train_bbx_gt.txt',
                    '0--Parade/a.jpg\n2\n'
                    '1 2 10 12 0 0 0 0 0 0 \n'
                    '20 5 8 8 2 0 0 1 0 0 \n'
                    '0--Parade/b.jpg\n0\n0 0 0 0 0 0 0 0 0 0 \n'
                    '0--Parade/c.jpg\n2\n'
                    '30 30 0 5 0 0 0 0 0 0 \n'
                    '45 35 10 10 0 0 0 0 0 0 \n')
    coco, stats = widerface_to_coco(gt_file, img_dir)
    assert [image['file_name'] for image in coco['images']] == [
        '0--Parade/a.jpg', '0--Parade/b.jpg', '0--Parade/c.jpg']
    assert boxes_of(coco, '0--Parade/a.jpg') == [('face', [1.0, 2.0, 10.0, 12.0], 0),
                                                 ('face', [20.0, 5.0, 8.0, 8.0], 1)]
    assert boxes_of(coco, '0--Parade/b.jpg') == []
    assert boxes_of(coco, '0--Parade/c.jpg') == [('face', [45.0, 35.0, 5.0, 5.0], 0)]
    assert (stats.boxes, stats.ignored, stats.clipped) == (3, 1, 1)
    assert stats.skipped == {'box with zero or negative size': 1}
    check_loads(coco, img_dir, tmp_path)

    # Splits in different folders, one data_prefix: names relative to a common parent.
    coco, _ = widerface_to_coco(gt_file, img_dir, file_name_root=tmp_path)
    assert coco['images'][0]['file_name'] == 'WIDER_train/images/0--Parade/a.jpg'
    check_loads(coco, tmp_path, tmp_path)
    with pytest.raises(ConversionError, match='not inside file_name_root'):
        widerface_to_coco(gt_file, img_dir, file_name_root=tmp_path / 'elsewhere')


def test_widerface_wrong_count_reports_line(tmp_path):
    gt_file = write(tmp_path / 'gt.txt', '0--Parade/a.jpg\n2\n1 2 10 12 0 0 0 0 0 0\n'
                                         '0--Parade/b.jpg\n1\n1 2 3 4 0 0 0 0 0 0\n')
    with pytest.raises(ConversionError, match=r'gt\.txt:4: expected 10 numbers'):
        widerface_to_coco(gt_file, tmp_path)


# --- LISA ---------------------------------------------------------------------------------

LISA_HEADER = ('Filename;Annotation tag;Upper left corner X;Upper left corner Y;'
               'Lower right corner X;Lower right corner Y;Occluded,On another road;'
               'Origin file;Origin frame number;Origin track;Origin track frame number\n')


def test_lisa_tag_mapping():
    assert lisa_class_of('speedLimit25') == 'speedLimit'
    assert lisa_class_of('truckSpeedLimit55') == 'speedLimit'
    assert lisa_class_of('rampSpeedAdvisory35') == 'warning'
    assert lisa_class_of('pedestrianCrossing') == 'warning'
    assert lisa_class_of('noLeftTurn') == 'noTurn'
    assert lisa_class_of('stop') == 'stop'
    assert lisa_class_of('yield') is None
    assert lisa_class_of('yield', {'yield': 'warning'}) == 'warning'
    assert lisa_class_of('stop', {'stop': None}) is None


def test_lisa_csv(tmp_path):
    root = tmp_path / 'lisa'
    draw_image(root / 'seq0' / 'f1.png', 60, 40)
    draw_image(root / 'seq0' / 'f2.png', 60, 40)
    csv_file = write(root / 'allAnnotations.csv', LISA_HEADER
                     + 'seq0/f1.png;speedLimit25;1;2;11;22;0,0;x.avi;1;0;1\n'
                     + 'seq0/f1.png;yield;20;2;30;12;0,0;x.avi;1;0;1\n'
                     + 'seq0/f2.png;stop;40;10;70;30;1,0;x.avi;2;0;2\n'
                     + 'seq0/f2.png;noRightTurn;3;4;13;14;0,0;x.avi;2;0;2\n'
                     + 'seq0/f3.png;curveLeft;3;4;13;14;0,0;x.avi;3;0;3\n')
    coco, stats = lisa_to_coco(csv_file)
    assert [c['name'] for c in coco['categories']] == list(LISA_CLASSES)
    assert boxes_of(coco, 'seq0/f1.png') == [('speedLimit', [1.0, 2.0, 10.0, 20.0], 0)]
    assert boxes_of(coco, 'seq0/f2.png') == [('stop', [40.0, 10.0, 20.0, 20.0], 0),
                                             ('noTurn', [3.0, 4.0, 10.0, 10.0], 0)]
    assert stats.skipped == {"tag 'yield' has no UODB class": 1, 'image file missing': 1}
    check_loads(coco, root, tmp_path)

    image_list = write(tmp_path / 'test.txt', 'seq0/f1.png\n')
    coco, _ = lisa_to_coco(csv_file, image_list=image_list, tag_map={'yield': 'warning'})
    assert [name for name, _, _ in boxes_of(coco, 'seq0/f1.png')] == ['speedLimit', 'warning']
    assert len(coco['images']) == 1
    with pytest.raises(ConversionError, match='not among the LISA classes'):
        lisa_to_coco(csv_file, tag_map={'yield': 'yieldSign'})


def test_lisa_bad_csv(tmp_path):
    csv_file = write(tmp_path / 'a.csv', LISA_HEADER + 'f.png;stop;1;2;x;4;0,0;a;1;0;1\n')
    csv_file.write_bytes((LISA_HEADER + 'f\N{LATIN SMALL LETTER E WITH ACUTE}.png;stop;1;2;3;4;'
                          '0,0;a;1;0;1\n').encode('latin-1'))
    with pytest.raises(ConversionError, match=r'a\.csv:2: byte 0xe9 .*not UTF-8'):
        lisa_to_coco(csv_file)
    write(tmp_path / 'a.csv', LISA_HEADER + 'f.png;stop;1;2;x;4;0,0;a;1;0;1\n')
    with pytest.raises(ConversionError, match=r'a\.csv:2: the corner columns must be numbers'):
        lisa_to_coco(csv_file)
    write(tmp_path / 'a.csv', 'Filename,Annotation tag\n')
    with pytest.raises(ConversionError, match='missing from the header'):
        lisa_to_coco(csv_file)


# --- DOTA ---------------------------------------------------------------------------------

@pytest.fixture
def dota_root(tmp_path):
    root = tmp_path / 'dota'
    draw_image(root / 'images' / 'P0001.png', 100, 80)
    write(root / 'labelTxt' / 'P0001.txt',
          'imagesource:GoogleEarth\ngsd:0.146\n'
          '10 20 30 10 40 30 20 40 plane 0\n'               # rotated square
          '50 50 70 50 70 60 50 60 small-vehicle 1\n'
          '90 70 110 70 110 90 90 90 ship 0\n'              # clipped to 100x80
          '200 200 210 200 210 210 200 210 ship 0\n')       # outside the image
    write(root / 'labelTxt' / 'P0002.txt', '1 1 5 1 5 5 1 5 plane 0\n')  # no image
    return root


def test_dota_polygons_to_boxes(dota_root, tmp_path):
    coco, stats = dota_to_coco(dota_root / 'labelTxt', dota_root / 'images')
    assert [c['name'] for c in coco['categories']] == list(DOTA_CLASSES)
    assert boxes_of(coco, 'P0001.png') == [('plane', [10.0, 10.0, 30.0, 30.0], 0),
                                           ('small-vehicle', [50.0, 50.0, 20.0, 10.0], 1),
                                           ('ship', [90.0, 70.0, 10.0, 10.0], 0)]
    assert (stats.images, stats.boxes, stats.ignored, stats.clipped) == (1, 3, 1, 1)
    assert stats.skipped == {'box outside the image': 1, 'image file missing': 1}
    assert 'P0002.txt' in stats.summary()
    check_loads(coco, dota_root / 'images', tmp_path)

    coco, _ = dota_to_coco(dota_root / 'labelTxt', dota_root / 'images',
                           difficult_as_ignore=False)
    assert [ann['iscrowd'] for ann in coco['annotations']] == [0, 0, 0]


def test_dota_bad_lines(dota_root):
    write(dota_root / 'labelTxt' / 'P0001.txt', '1 1 5 1 5 5 1 5 container-crane 0\n')
    with pytest.raises(ConversionError, match=r"P0001\.txt:1: class 'container-crane'"):
        dota_to_coco(dota_root / 'labelTxt', dota_root / 'images')
    write(dota_root / 'labelTxt' / 'P0001.txt', 'gsd:null\n1 1 5 1 plane 0\n')
    with pytest.raises(ConversionError,
                       match=r"P0001\.txt:2: malformed line.*4 numbers before 'plane'"):
        dota_to_coco(dota_root / 'labelTxt', dota_root / 'images')
    write(dota_root / 'labelTxt' / 'P0001.txt', '1 1 5 1 5 5 1 5 0\n')
    with pytest.raises(ConversionError, match=r'P0001\.txt:1: malformed line.*no class name'):
        dota_to_coco(dota_root / 'labelTxt', dota_root / 'images')


@needs_realdata
@pytest.mark.parametrize('skip_unknown', [False, True])
def test_dota_line_with_seven_coordinates_is_malformed(tmp_path, skip_unknown):
    """Not a box of class '0' without a difficulty: a polygon that lost a coordinate."""
    root = tmp_path / 'dota'
    shutil.copytree(REALDATA / 'dota', root)
    label_file = root / 'labelTxt' / 'P0004__1__0___0.txt'
    lines = label_file.read_text().splitlines()
    fields = lines[3].split()
    lines[3] = ' '.join(fields[:6] + fields[7:])
    label_file.write_text('\n'.join(lines) + '\n')
    with pytest.raises(ConversionError, match=r"P0004__1__0___0\.txt:4: malformed line.*"
                       r"got 7 numbers before 'plane'"):
        dota_to_coco(root / 'labelTxt', root / 'images', skip_unknown=skip_unknown)


def test_dota_label_file_that_is_not_utf8(dota_root):
    label_file = dota_root / 'labelTxt' / 'P0001.txt'
    label_file.write_bytes('imagesource:G\N{LATIN SMALL LETTER E WITH ACUTE}oportail\n'
                           '10 20 30 10 40 30 20 40 plane 0\n'.encode('latin-1'))
    with pytest.raises(ConversionError, match=r'P0001\.txt:1: byte 0xe9 .*not UTF-8.*iconv'):
        dota_to_coco(dota_root / 'labelTxt', dota_root / 'images')


@needs_realdata
def test_dota_real_files(tmp_path):
    """The sample image is a 285x294 patch; only one of its four labelled polygons lies
    inside it, and the second label file has no image."""
    root = REALDATA / 'dota'
    coco, stats = dota_to_coco(root / 'labelTxt', root / 'images')
    assert [(i['file_name'], i['width'], i['height']) for i in coco['images']] == [
        ('P0004__1__0___0.png', 285, 294)]
    assert boxes_of(coco, 'P0004__1__0___0.png') == [('plane', [123.0, 171.0, 98.0, 28.0], 0)]
    assert stats.skipped == {'box outside the image': 3, 'image file missing': 1}
    check_loads(coco, root / 'images', tmp_path)


# --- DeepLesion ---------------------------------------------------------------------------

def test_deeplesion_splits_and_paths(tmp_path):
    img_dir = tmp_path / 'Images_png'
    draw_image(img_dir / '000001_01_01' / '109.png', 64, 64, dtype=np.uint16)
    draw_image(img_dir / '000002_03_01' / '020.png', 64, 64, dtype=np.uint16)
    header = ('File_name,Patient_index,Study_index,Series_ID,Key_slice_index,'
              'Measurement_coordinates,Bounding_boxes,Lesion_diameters_Pixel_,'
              'Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,'
              'Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,'
              'Train_Val_Test\n')
    tail = '"0.5, 0.5, 0.5",-1,0,"100, 120","0.8, 0.8, 5","64, 64","-175, 275",F,51'
    info_csv = write(tmp_path / 'DL_info.csv', header
                     + f'000001_01_01_109.png,1,1,1,109,"1, 2",'
                     f'"10.5, 20.25, 30.5, 40.75","3, 4",{tail},1\n'
                     + f'000001_01_01_109.png,1,1,1,109,"1, 2","40, 40, 50, 52","3, 4",{tail},1\n'
                     + f'000002_03_01_020.png,2,3,1,20,"1, 2","5, 6, 7, 8","3, 4",{tail},3\n')
    assert deeplesion_image_path('000001_01_01_109.png') == '000001_01_01/109.png'

    coco, stats = deeplesion_to_coco(info_csv, img_dir, split='trainval')
    assert [(i['file_name'], i['width'], i['height']) for i in coco['images']] == [
        ('000001_01_01/109.png', 64, 64)]
    assert boxes_of(coco, '000001_01_01/109.png') == [('lesion', [10.5, 20.25, 20.0, 20.5], 0),
                                                      ('lesion', [40.0, 40.0, 10.0, 12.0], 0)]
    assert stats.boxes == 2
    check_loads(coco, img_dir, tmp_path)

    coco, _ = deeplesion_to_coco(info_csv, img_dir, split='test')
    assert boxes_of(coco, '000002_03_01/020.png') == [('lesion', [5.0, 6.0, 2.0, 2.0], 0)]
    with pytest.raises(ConversionError, match="no row of split 'val'"):
        deeplesion_to_coco(info_csv, img_dir, split='val')
    write(tmp_path / 'DL_info.csv', header + f'a_1.png,1,1,1,1,"1, 2","1, 2, 3","3, 4",{tail},1\n')
    with pytest.raises(ConversionError, match=r"DL_info\.csv:2: Bounding_boxes"):
        deeplesion_to_coco(info_csv, img_dir)


# --- dlib imglab --------------------------------------------------------------------------

def test_dlib_ignore_and_labels(tmp_path):
    draw_image(tmp_path / 'faces' / 'a.jpg', 50, 40)
    xml_file = write(tmp_path / 'faces' / 'train.xml', (
        "<?xml version='1.0' encoding='ISO-8859-1'?><dataset><images>"
        "<image file='a.jpg'>"
        "<box top='5' left='4' width='10' height='12'/>"
        "<box top='20' left='30' width='10' height='10' ignore='1'/>"
        "<box top='30' left='45' width='10' height='20'><label>face</label></box>"
        "</image><image file='gone.jpg'><box top='1' left='1' width='2' height='2'/></image>"
        "</images></dataset>"))
    coco, stats = dlib_to_coco(xml_file)
    assert boxes_of(coco, 'a.jpg') == [('face', [4.0, 5.0, 10.0, 12.0], 0),
                                       ('face', [30.0, 20.0, 10.0, 10.0], 1),
                                       ('face', [45.0, 30.0, 5.0, 10.0], 0)]
    assert (stats.images, stats.ignored, stats.clipped) == (1, 1, 1)
    assert stats.skipped == {'image file missing': 1}
    check_loads(coco, tmp_path / 'faces', tmp_path)
    with pytest.raises(ConversionError, match='ambiguous'):
        dlib_to_coco(xml_file, classes=('face', 'head'))


@needs_realdata
def test_dlib_real_faces(tmp_path):
    root = REALDATA / 'faces'
    coco, stats = dlib_to_coco(root / 'training.xml')
    assert (stats.images, stats.boxes, stats.ignored) == (4, 18, 0)
    assert not stats.skipped
    assert boxes_of(coco, '2008_001009.jpg') == [('face', [145.0, 79.0, 76.0, 76.0], 0),
                                                 ('face', [125.0, 214.0, 90.0, 91.0], 0)]
    check_loads(coco, root, tmp_path)

@needs_realdata
def test_dlib_size_that_disagrees_with_the_image(tmp_path, monkeypatch, capsys):
    root = tmp_path / 'faces'
    shutil.copytree(REALDATA / 'faces', root)
    xml_file = root / 'training.xml'
    xml_file.write_bytes(xml_file.read_bytes().replace(
        b"file='2007_007763.jpg' width='500'", b"file='2007_007763.jpg' width='400'"))
    with pytest.raises(ConversionError, match=r'training\.xml \(image 1: 2007_007763\.jpg\): '
                       r'the annotation gives the image size 400x375, but .* is 500x375'):
        dlib_to_coco(xml_file)
    out_file = tmp_path / 'train.json'
    run_cli_in_process('dlib2coco', [xml_file, '--out', out_file, '--fix-sizes'], monkeypatch)
    assert json.loads(out_file.read_text()) == dlib_to_coco(REALDATA / 'faces' /
                                                            'training.xml').coco
    assert 'warning: 1 image size' in capsys.readouterr().out


def test_a_folder_instead_of_an_annotation_file(tmp_path):
    write(tmp_path / 'faces' / 'training.xml', '<dataset/>')
    with pytest.raises(ConversionError, match=r'faces is a folder, not a file.*training\.xml'):
        dlib_to_coco(tmp_path / 'faces')
    with pytest.raises(ConversionError, match=r'faces is a folder, not a file'):
        widerface_to_coco(tmp_path / 'faces', tmp_path)


# --- the shared COCO writer ---------------------------------------------------------------

def test_validate_and_atomic_write(tmp_path):
    good = dict(images=[dict(id=1, file_name='a.jpg', width=10, height=10)],
                annotations=[dict(id=1, image_id=1, category_id=1, bbox=[1, 1, 2, 2],
                                  area=4, iscrowd=0)],
                categories=[dict(id=1, name='x')])
    out_file = write_coco_json(good, tmp_path / 'a' / 'b.json')
    assert json.loads(out_file.read_text()) == good
    assert [path.name for path in out_file.parent.iterdir()] == ['b.json']

    bad = json.loads(json.dumps(good))
    bad['annotations'][0]['bbox'] = [8, 8, 5, 5]
    bad['categories'][0]['id'] = 0
    with pytest.raises(ConversionError, match=r'(?s)category ids must be 1\.\.K.*outside'):
        validate_coco(bad)
    with pytest.raises(ConversionError):
        write_coco_json(bad, out_file)
    assert json.loads(out_file.read_text()) == good

    whole_image_area = json.loads(json.dumps(good))
    whole_image_area['annotations'][0]['area'] = 100
    with pytest.raises(ConversionError, match=r'annotation 1: area 100 is larger than its '
                       r'2x2 box'):
        validate_coco(whole_image_area)


# --- command-line wrappers ----------------------------------------------------------------

CLI_DIR = REPO_ROOT / 'tools' / 'dataset_converters'
CLI_SCRIPTS = ('voc2coco', 'kitti2coco', 'widerface2coco', 'lisa2coco', 'dota2coco',
               'deeplesion2coco', 'dlib2coco')


def run_cli_in_process(script: str, args: list, monkeypatch) -> None:
    """Run a CLI script as ``__main__`` in this process (a subprocess per script would
    re-import torch and mmdet each time)."""
    monkeypatch.setattr(sys, 'argv', [f'{script}.py', *map(str, args)])
    runpy.run_path(str(CLI_DIR / f'{script}.py'), run_name='__main__')


@pytest.mark.parametrize('script', CLI_SCRIPTS)
def test_cli_help(script, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli_in_process(script, ['--help'], monkeypatch)
    assert exit_info.value.code == 0
    assert '--out' in capsys.readouterr().out


def test_voc_cli_from_repo_root(voc_root, tmp_path, monkeypatch, capsys):
    out_file = tmp_path / 'uodb' / 'voc' / 'annotations' / 'train.json'
    result = subprocess.run(
        [sys.executable, 'tools/dataset_converters/voc2coco.py', str(voc_root), '--split',
         'train', '--skip-unknown', '--out', str(out_file)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'images: 2' in result.stdout and '1 x annotation file missing' in result.stdout
    assert len(json.loads(out_file.read_text())['annotations']) == 4

    with pytest.raises(SystemExit, match=r"^error: .*class 'unicorn'"):
        run_cli_in_process('voc2coco', [voc_root, '--out', out_file], monkeypatch)


def test_out_that_is_a_folder(dota_root, tmp_path, monkeypatch):
    (tmp_path / 'annotations').mkdir()
    with pytest.raises(SystemExit, match=r'^error: .*annotations is a folder.*--out'):
        run_cli_in_process('dota2coco', [dota_root, '--out', tmp_path / 'annotations'],
                           monkeypatch)
    coco, _ = dota_to_coco(dota_root / 'labelTxt', dota_root / 'images')
    with pytest.raises(ConversionError, match='annotations is a folder'):
        write_coco_json(coco, tmp_path / 'annotations')
