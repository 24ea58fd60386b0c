"""tools/infer.py on real photos with a tiny trained DAMEX checkpoint."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from mmengine.config import Config

from ..conftest import TINY_CONFIG, point_at_mixture

REPO_ROOT = Path(__file__).resolve().parents[2]
TOOL = REPO_ROOT / 'tools' / 'infer.py'
REALDATA = Path(__file__).resolve().parents[2].parent / 'shared' / 'realdata'
FACE = REALDATA / 'faces' / '2008_001009.jpg'
TERRAIN = REALDATA / 'terrain'

needs_realdata = pytest.mark.skipif(
    not (FACE.is_file() and TERRAIN.is_dir()),
    reason=f'real photos not found under {REALDATA}')


def load_tool():
    spec = importlib.util.spec_from_file_location('infer_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def infer_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with a config whose data does not exist."""
    _, checkpoint = tiny_checkpoint
    work_dir = tmp_path_factory.mktemp('infer_config')
    # Inference must not need the training data: point the config elsewhere.
    cfg = point_at_mixture(Config.fromfile(str(TINY_CONFIG)), work_dir / 'absent')
    # Keep 100 of the 10 queries x 11 classes: at least 20 of every 3-class
    # dataset's candidates survive, whatever the barely trained scores.
    cfg.model.test_cfg.max_per_img = 100
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
    tool = load_tool()
    predictions = tool.infer(str(TERRAIN), str(config), str(checkpoint), str(tmp_path),
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
        load_tool().infer(str(FACE), str(config), str(checkpoint), str(tmp_path),
                          dataset='coco', device='cpu', progress=False)
