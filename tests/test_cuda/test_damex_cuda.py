"""The tiny DAMEX on CUDA: a training step, ``predict``, and mixed-precision
steps through mmengine's ``AmpOptimWrapper``."""
import math

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.runner import Runner

from ..test_engine.test_amp import (OPTIMIZER, assert_mixed_precision_step,
                                    tiny_model_and_batch)


@pytest.mark.cuda
def test_damex_trains_and_predicts_on_cuda(tiny_checkpoint):
    config_path, _ = tiny_checkpoint
    model, batch = tiny_model_and_batch(*tiny_checkpoint, 'cuda')
    before = {name: param.detach().clone()
              for name, param in model.named_parameters()}
    wrapper = build_optim_wrapper(
        model, dict(type='OptimWrapper', optimizer=OPTIMIZER))
    log_vars = model.train_step(batch, wrapper)
    bad = {k: float(v) for k, v in log_vars.items()
           if not math.isfinite(float(v))}
    assert not bad, f'non-finite losses on CUDA: {bad}'
    assert log_vars['loss_route'] > 0
    for name, moe in model.named_moe_layers():
        assert moe.expert_w1.is_cuda, name
        assert not torch.equal(moe.gate.weight, before[f'{name}.gate.weight'])
        assert not torch.equal(moe.expert_w1, before[f'{name}.expert_w1'])

    cfg = Config.fromfile(str(config_path))
    val_batch = next(iter(Runner.build_dataloader(cfg.val_dataloader)))
    model.eval()
    samples = model.val_step(val_batch)
    num_moe_layers = len(list(model.named_moe_layers()))
    for sample in samples:
        boxes = sample.pred_instances.bboxes
        assert boxes.is_cuda and torch.isfinite(boxes).all()
        # Every query of the image routed once in each MoE layer.
        assert sample.routing_counts.shape == (num_moe_layers,
                                               model.num_experts)
        assert sample.routing_counts.sum(dim=1).tolist() == [
            model.num_queries] * num_moe_layers


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', ['float16', 'bfloat16'])
def test_mixed_precision_step_on_cuda(tiny_checkpoint, dtype):
    model, batch = tiny_model_and_batch(*tiny_checkpoint, 'cuda')
    assert_mixed_precision_step(model, batch, dtype)
