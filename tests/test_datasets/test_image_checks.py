"""Every image of a mixture is checked when the mixture is built: a wrong
img_prefix or a lost file stops before training, counted per dataset, where
mmdet would fail at the first missing image mid-epoch."""
import re
import shutil
from pathlib import Path

import pytest
from mmdet.registry import DATASETS
from mmengine.registry import init_default_scope

import damex_mmdet  # noqa: F401
from damex_mmdet.datasets import image_checks


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def entry(root, name, split='train', img_prefix=None):
    return dict(name=name, data_root=f'{root}/{name}/',
                ann_file=f'annotations/{split}.json',
                img_prefix=img_prefix or f'images/{split}/')


def build(datasets, **kwargs):
    return DATASETS.build(dict(type='DatasetMixture', datasets=datasets,
                               **kwargs))


@pytest.mark.parametrize('test_mode', [False, True])
def test_wrong_img_prefix_names_the_prefix_and_an_expected_path(
        tiny_mixture, test_mode):
    split = 'val' if test_mode else 'train'
    first = sorted((tiny_mixture / 'photo' / 'images' / split).iterdir())[0]
    expected = f'{tiny_mixture}/photo/imgs/{split}/{first.name}'
    with pytest.raises(FileNotFoundError) as error:
        build([entry(tiny_mixture, 'photo', split, f'imgs/{split}/'),
               entry(tiny_mixture, 'scan', split)], test_mode=test_mode)
    message = str(error.value)
    count = 8 if split == 'train' else 4
    assert f"dataset 'photo': {count} of {count} images are missing, " \
           f'e.g. {expected}' in message
    assert f'its folder {tiny_mixture}/photo/imgs/{split} does not exist' in (
        message)
    assert 'img_prefix (data_prefix in a full dataset config) or data_root ' \
           'is the likely cause' in message
    assert f"'img': '{tiny_mixture}/photo/imgs/{split}/'" in message
    assert "'scan'" not in message


def test_one_missing_image_is_named_with_the_count(tiny_mixture, tmp_path):
    shutil.copytree(tiny_mixture / 'sketch', tmp_path / 'sketch')
    lost = sorted((tmp_path / 'sketch' / 'images' / 'train').iterdir())[3]
    lost.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"dataset 'sketch': 1 of 8 images is missing: {lost}. Restore "
            f'them, or remove these images and their boxes from '
            f'{tmp_path}/sketch/annotations/train.json.')) as error:
        build([entry(tiny_mixture, 'photo'), entry(tmp_path, 'sketch')])
    assert 'likely cause' not in str(error.value)


def test_every_dataset_with_missing_images_is_reported(tiny_mixture,
                                                       tmp_path):
    shutil.copytree(tiny_mixture / 'sketch', tmp_path / 'sketch')
    images = sorted((tmp_path / 'sketch' / 'images' / 'train').iterdir())
    for lost in images[:7]:
        lost.unlink()
    with pytest.raises(FileNotFoundError) as error:
        # The images are one folder further down than this prefix says.
        build([entry(tiny_mixture, 'photo', img_prefix='images/'),
               entry(tmp_path, 'sketch')])
    lines = str(error.value).splitlines()
    assert lines[1].startswith("- dataset 'photo': 8 of 8 images are missing")
    assert f'(its folder {tiny_mixture}/photo/images exists)' in lines[1]
    # Most (7 of 8) missing: the paths are the likely cause, not the files.
    assert lines[2].startswith("- dataset 'sketch': 7 of 8 images are missing")
    assert 'likely cause' in lines[2]


def test_large_datasets_show_progress(tiny_mixture, monkeypatch, capsys):
    monkeypatch.setattr(image_checks, 'PROGRESS_FROM', 8)
    build([entry(tiny_mixture, 'photo'), entry(tiny_mixture, 'scan', 'val')])
    progress = capsys.readouterr().err
    assert 'photo: images' in progress and 'scan: images' not in progress
