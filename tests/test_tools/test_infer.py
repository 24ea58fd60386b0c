"""damex_mmdet.apis.infer and its CLI tools/infer.py on real photos with a tiny
trained DAMEX checkpoint."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from mmdet.apis import DetInferencer, inference_detector, init_detector
from mmdet.registry import DATASETS
from mmengine.config import Config

from damex_mmdet.apis import infer

from ..conftest import REALDATA, REPO_ROOT, TINY_CONFIG, point_at_mixture

TOOL = REPO_ROOT / 'tools' / 'infer.py'
FACE = REALDATA / 'faces' / '2008_001009.jpg'
TERRAIN = REALDATA / 'terrain'

needs_realdata = pytest.mark.skipif(
    not (FACE.is_file() and TERRAIN.is_dir()),
    reason=f'real photos not found under {REALDATA}')


@pytest.fixture(scope='module')
def infer_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with a config whose data does not exist."""
    _, checkpoint = tiny_checkpoint
    work_dir = tmp_path_factory.mktemp('infer_config')
    # Inference must not need the training data: point the config elsewhere.
    cfg = point_at_mixture(Config.fromfile(str(TINY_CONFIG)), work_dir / 'absent')
    # Fewer detections than datasets: the unified top-k of an image always
    # leaves out some dataset.
    cfg.model.test_cfg.max_per_img = 3
    config_path = work_dir / 'infer_config.py'
    cfg.dump(str(config_path))
    return config_path, checkpoint


@needs_realdata
def test_tool_draws_boxes_on_a_real_photo(infer_checkpoint, tmp_path):
    config, checkpoint = infer_checkpoint
    result = subprocess.run(
        [sys.executable, str(TOOL), str(FACE), str(config), str(checkpoint),
         '--out-dir', str(tmp_path), '--score-thr', '0', '--device', 'cpu', '--no-progress'],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((tmp_path / 'predictions.json').read_text())
    assert len(predictions) == 1 and predictions[0]['image'] == str(FACE)
    instances = predictions[0]['instances']
    assert instances, 'score-thr 0 keeps every predicted box'
    assert all(':' in i['class'] and len(i['bbox']) == 4 for i in instances)
    moe_layers = Config.fromfile(str(config)).model.moe_layers['decoder']
    assert set(predictions[0]['routing_counts']) == {
        f'decoder.layers.{i}.ffn' for i in moe_layers}
    drawn, original = cv2.imread(predictions[0]['vis']), cv2.imread(str(FACE))
    assert drawn.shape == original.shape
    assert (cv2.absdiff(drawn, original).max(axis=2) > 60).sum() > 100, 'no boxes drawn'


@needs_realdata
def test_dataset_option_keeps_only_its_classes(infer_checkpoint, tmp_path):
    config, checkpoint = infer_checkpoint
    predictions = infer(str(TERRAIN), str(config), str(checkpoint), str(tmp_path),
                        dataset='aerial', score_thr=0, device='cpu', progress=False)
    assert sorted(Path(p['image']).name for p in predictions) == ['terrain1.jpg', 'terrain2.png']
    saved = json.loads((tmp_path / 'predictions.json').read_text())
    classes = {i['class'] for p in saved for i in p['instances']}
    assert classes and all(c.startswith('aerial:') for c in classes)
    assert all(Path(p['vis']).is_file() for p in saved)


@needs_realdata
def test_unknown_dataset_lists_the_known_ones(infer_checkpoint, tmp_path):
    config, checkpoint = infer_checkpoint
    with pytest.raises(ValueError, match='photo, sketch, aerial, scan'):
        infer(str(FACE), str(config), str(checkpoint), str(tmp_path),
              dataset='coco', device='cpu', progress=False)


def test_dataset_option_restricts_the_classes_before_the_top_k(
        infer_checkpoint, tiny_mixture, tmp_path):
    """The 3 unified top detections leave out some dataset; asking for it
    must still give 3 of its boxes, not an empty filter of those 3."""
    config, checkpoint = infer_checkpoint
    image = str(sorted((tiny_mixture / 'photo' / 'images' / 'val').iterdir())[0])
    unified = infer(image, str(config), str(checkpoint), str(tmp_path / 'all'),
                    score_thr=0, device='cpu', progress=False)
    found = {i['class'].split(':')[0] for i in unified[0]['instances']}
    assert len(unified[0]['instances']) == 3
    absent = next(n for n in ('photo', 'sketch', 'aerial', 'scan') if n not in found)
    restricted = infer(image, str(config), str(checkpoint), str(tmp_path / 'one'),
                       dataset=absent, score_thr=0, device='cpu', progress=False)
    classes = [i['class'] for i in restricted[0]['instances']]
    assert len(classes) == 3 and all(c.startswith(f'{absent}:') for c in classes)


def test_plain_mmdet_inference_needs_only_config_and_checkpoint(
        tiny_checkpoint, tiny_mixture, tmp_path, monkeypatch):
    """mmdet's init_detector, inference_detector and DetInferencer, run where
    the config's data/demo_mixture/ does not exist."""
    _, checkpoint = tiny_checkpoint
    monkeypatch.chdir(tmp_path)
    assert not Path(Config.fromfile(str(TINY_CONFIG)).test_dataloader.dataset
                    .datasets[0].data_root).exists()
    image = str(sorted((tiny_mixture / 'photo' / 'images' / 'val').iterdir())[0])
    stored = torch.load(str(checkpoint), map_location='cpu',
                        weights_only=False)['meta']['dataset_meta']

    model = init_detector(str(TINY_CONFIG), str(checkpoint), device='cpu')
    assert model.dataset_meta['classes'] == stored['classes']
    assert model.dataset_meta['palette'] == stored['palette']
    labels = inference_detector(model, image).pred_instances.labels.tolist()
    assert labels and all(':' in model.dataset_meta['classes'][i] for i in labels)

    inferencer = DetInferencer(model=str(TINY_CONFIG), weights=str(checkpoint),
                               device='cpu', show_progress=False)
    result = inferencer(image, out_dir=str(tmp_path / 'out'), return_datasamples=True,
                        no_save_pred=True)
    assert inferencer.visualizer.dataset_meta['classes'] == stored['classes']
    assert len(result['predictions'][0].pred_instances) == 10
    assert (tmp_path / 'out' / 'vis' / Path(image).name).is_file()


def test_lazy_mixture_metainfo_reads_no_file(tiny_mixture):
    """Before full_init the metainfo holds what the config states; with the
    classes listed, it is the metainfo of the loaded mixture."""
    classes = dict(photo=['person', 'car'], scan=['lesion'])
    entries = [dict(name=name, ann_file=f'{name}/annotations/val.json',
                    img_prefix=f'{name}/images/val/', classes=classes[name])
               for name in classes]
    nowhere = [dict(entry, data_root='/absent/') for entry in entries]
    here = [dict(entry, data_root=str(tiny_mixture)) for entry in entries]

    lazy = DATASETS.build(dict(type='DatasetMixture', datasets=nowhere, lazy_init=True))
    loaded = DATASETS.build(dict(type='DatasetMixture', datasets=here)).metainfo
    assert lazy.metainfo == {k: loaded[k] for k in
                             ('dataset_names', 'classes', 'palette', 'label_space')}
    entries[1].pop('classes')
    unlisted = DATASETS.build(dict(type='DatasetMixture', datasets=entries,
                                   lazy_init=True))
    assert unlisted.metainfo == dict(dataset_names=['photo', 'scan'])
