"""Upcycling a dense DINO into DAMEX reproduces the dense model at step 0, or says why not."""
import copy
import sys

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from damex_mmdet.models import upcycle_dense_state_dict
from damex_mmdet.models.upcycle import upcycling_mismatches

from ..conftest import TINY_CONFIG, load_script
from .test_damex import make_batch


@pytest.fixture(scope='module')
def model_cfg():
    init_default_scope('mmdet')
    return Config.fromfile(str(TINY_CONFIG)).model


def dense_from(model_cfg):
    """A randomly initialised dense DINO of the tiny config's architecture."""
    torch.manual_seed(0)
    cfg = copy.deepcopy(model_cfg)
    cfg.type = 'DINO'
    for key in ('num_experts', 'moe_layers', 'routing_loss', 'dataset_to_expert'):
        cfg.pop(key)
    dense = MODELS.build(cfg)
    dense.init_weights()
    return dense.eval()


def damex_from(model_cfg, **moe_cfg):
    cfg = copy.deepcopy(model_cfg)
    cfg.moe_cfg = dict(cfg.get('moe_cfg') or {}, **moe_cfg)
    model = MODELS.build(cfg)
    model.init_weights()
    return model.eval()


def predictions(model, inputs, samples):
    with torch.no_grad():
        return model.predict(inputs, copy.deepcopy(samples))


def assert_same_predictions(result, expected):
    for got, want in zip(result, expected):
        for key in ('bboxes', 'scores', 'labels'):
            torch.testing.assert_close(got.pred_instances[key], want.pred_instances[key],
                                       rtol=0, atol=1e-5, msg=key)


def test_default_top1_config_is_refused_with_the_fix(model_cfg):
    dense = dense_from(model_cfg)
    damex = damex_from(model_cfg)  # k=1, normalize_weights=None: output scaled by p
    problems = upcycling_mismatches(damex)
    assert len(problems) == 2 and all('normalize_weights=True' in p for p in problems)
    with pytest.raises(ValueError, match='model.moe_cfg.normalize_weights=True'):
        upcycle_dense_state_dict(damex, dense.state_dict())
    # Accepted when asked for, and then measurably not the dense model.
    damex.load_state_dict(upcycle_dense_state_dict(damex, dense.state_dict(), exact=False))
    inputs, samples = make_batch([None, None])
    result, expected = predictions(damex, inputs, samples), predictions(dense, inputs, samples)
    assert not torch.allclose(result[0].pred_instances.scores,
                              expected[0].pred_instances.scores, atol=1e-5)


@pytest.mark.parametrize('moe_cfg,fix', [
    (dict(normalize_weights=True, capacity_factor=1.25), 'capacity_factor=None'),
    (dict(normalize_weights=True, act_cfg=dict(type='GELU')), 'drop act_cfg'),
])
def test_other_inexact_settings_are_named(model_cfg, moe_cfg, fix):
    problems = upcycling_mismatches(damex_from(model_cfg, **moe_cfg))
    assert len(problems) == 2 and all(fix in p for p in problems)


@pytest.mark.parametrize('moe_cfg', [
    dict(normalize_weights=True),
    dict(top_k=2, gate_noise_std=0.5),
    # The tiny FFNs are 64 wide: split into a shared half and routed halves,
    dict(normalize_weights=True, shared_expert=True, shared_feedforward_channels=32,
         expert_feedforward_channels=32),
    # or a full-width shared expert beside silent experts (any routing, any capacity).
    dict(shared_expert=True, expert_feedforward_channels=32, capacity_factor=0.5),
])
def test_upcycled_damex_predicts_what_dense_dino_predicts(model_cfg, moe_cfg):
    dense = dense_from(model_cfg)
    damex = damex_from(model_cfg, **moe_cfg)
    assert upcycling_mismatches(damex) == []
    damex.load_state_dict(upcycle_dense_state_dict(damex, dense.state_dict()))
    inputs, samples = make_batch([None, None])
    assert_same_predictions(predictions(damex, inputs, samples),
                            predictions(dense, inputs, samples))


def test_tool_writes_a_checkpoint_that_predicts_like_the_dense_one(
        model_cfg, tmp_path, monkeypatch):
    dense = dense_from(model_cfg)
    dense_path, out = tmp_path / 'dino.pth', tmp_path / 'damex.pth'
    torch.save(dict(state_dict=dense.state_dict(), meta=dict()), dense_path)
    tool = load_script('tools/upcycle_checkpoint.py')

    monkeypatch.setattr(sys, 'argv', ['upcycle', str(TINY_CONFIG), str(dense_path), str(out)])
    with pytest.raises(SystemExit, match='normalize_weights=True'):
        tool.main()
    assert not out.exists()

    monkeypatch.setattr(sys, 'argv', [
        'upcycle', str(TINY_CONFIG), str(dense_path), str(out),
        '--cfg-options', 'model.moe_cfg.normalize_weights=True'])
    tool.main()
    damex = damex_from(model_cfg, normalize_weights=True)
    damex.load_state_dict(torch.load(out, map_location='cpu')['state_dict'])
    inputs, samples = make_batch([None])
    assert_same_predictions(predictions(damex, inputs, samples),
                            predictions(dense, inputs, samples))
