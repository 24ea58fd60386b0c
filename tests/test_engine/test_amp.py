"""Mixed precision by config: ``optim_wrapper=dict(type='AmpOptimWrapper')``
trains DAMEX, here on CPU in bfloat16 (tests/test_cuda repeats it on a GPU
in float16 and bfloat16)."""
import copy
import math
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint

from damex_mmdet.engine import AmpOptimWrapper

OPTIMIZER = dict(type='AdamW', lr=1e-4)
# mmengine autocasts the device it trains on: CUDA wherever there is one.
cpu_machine_only = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason='CPU autocast runs only on machines without CUDA; '
    'tests/test_cuda covers GPUs')


def tiny_model_and_batch(config_path: Path, checkpoint: Path,
                         device: str) -> Tuple[torch.nn.Module, dict]:
    """The tiny DAMEX of ``checkpoint`` on ``device`` and the first batch
    of its training data (2 images)."""
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(config_path))
    model = MODELS.build(cfg.model)
    load_checkpoint(model, str(checkpoint), map_location='cpu')
    batch = next(iter(Runner.build_dataloader(cfg.train_dataloader, seed=0)))
    return model.to(device), batch


def train_step(model: torch.nn.Module, batch: dict, optim_wrapper: dict
               ) -> Tuple[Dict[str, float], Dict[str, dict], torch.dtype]:
    """One mmengine ``train_step`` of a copy of ``model``.

    Returns:
        tuple: the logged losses; per MoE layer its input ``x`` (*S, D),
        chosen experts (*S, k) and gate logits (*S, E) of that step; and
        the dtype of the classification head's output (the autocast dtype
        when autocast ran).
    """
    model = copy.deepcopy(model)
    wrapper = build_optim_wrapper(model, dict(optim_wrapper,
                                              optimizer=OPTIMIZER))
    moe_inputs, head_dtypes = {}, []
    hooks = [moe.register_forward_pre_hook(
        lambda module, args, name=name: moe_inputs.__setitem__(
            name, args[0].detach()))
        for name, moe in model.named_moe_layers()]
    hooks.append(model.bbox_head.cls_branches[0].register_forward_hook(
        lambda module, args, output: head_dtypes.append(output.dtype)))
    torch.manual_seed(0)  # the same denoising queries in every call
    log_vars = model.train_step(batch, wrapper)
    for hook in hooks:
        hook.remove()
    routing = {name: dict(x=moe_inputs[name],
                          experts=moe.last_expert_indices,
                          logits=moe.last_gate_logits.detach())
               for name, moe in model.named_moe_layers()}
    return ({k: float(v) for k, v in log_vars.items()}, routing,
            head_dtypes[0])


def float32_routing(moe: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The experts ``moe``'s gate chooses for ``x`` computed in float32,
    outside any autocast: (*S, k) long."""
    with torch.autocast(x.device.type, enabled=False):
        logits = F.linear(x.float(), moe.gate.weight.float())
    return logits.softmax(dim=-1).topk(moe.top_k, dim=-1).indices


def assert_mixed_precision_step(model: torch.nn.Module, batch: dict,
                                dtype: str) -> List[float]:
    """A DAMEX ``train_step`` with ``AmpOptimWrapper(dtype)`` ran under
    autocast, has finite losses, and every MoE layer routed its input as
    the float32 gate does.

    Returns:
        list: per MoE layer, the share of tokens that chose the same
        experts as in a float32 step on the same batch (the layer inputs
        themselves differ with the precision of the layers before).
    """
    log_vars, routing, head_dtype = train_step(
        model, batch, dict(type='AmpOptimWrapper', dtype=dtype))
    assert head_dtype == getattr(torch, dtype), 'autocast did not run'
    bad = {k: v for k, v in log_vars.items() if not math.isfinite(v)}
    assert not bad, f'non-finite {dtype} losses: {bad}'
    _, reference, reference_dtype = train_step(
        model, batch, dict(type='OptimWrapper'))
    assert reference_dtype == torch.float32
    agreement = []
    for name, moe in model.named_moe_layers():
        layer = routing[name]
        # The gate's softmax and top-k run in float32 under autocast.
        assert layer['logits'].dtype == torch.float32, name
        torch.testing.assert_close(
            layer['experts'], float32_routing(moe, layer['x']), rtol=0,
            atol=0, msg=f'{name}: {dtype} routing differs from float32')
        agreement.append((layer['experts'] == reference[name]['experts'])
                         .float().mean().item())
    return agreement


@cpu_machine_only
def test_amp_optim_wrapper_config_trains_damex_on_cpu(tiny_cfg):
    tiny_cfg.optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16',
                                  optimizer=OPTIMIZER,
                                  clip_grad=dict(max_norm=0.1))
    tiny_cfg.train_cfg.update(max_iters=1, val_interval=1)
    tiny_cfg.update(val_cfg=None, val_dataloader=None, val_evaluator=None)
    runner = Runner.from_cfg(tiny_cfg)
    runner.train()
    assert isinstance(runner.optim_wrapper, AmpOptimWrapper)
    assert runner.optim_wrapper.cast_dtype == torch.bfloat16
    assert math.isfinite(runner.message_hub.get_scalar('train/loss')
                         .current())


@cpu_machine_only
def test_bfloat16_step_on_cpu_routes_as_the_float32_gate(tiny_checkpoint):
    model, batch = tiny_model_and_batch(*tiny_checkpoint, 'cpu')
    agreement = assert_mixed_precision_step(model, batch, 'bfloat16')
    # Most tokens keep their experts although every layer before the
    # gates ran in bfloat16.
    assert min(agreement) >= 0.9, agreement


@cpu_machine_only
def test_amp_on_cpu_refuses_float16():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="dtype='bfloat16'"):
        AmpOptimWrapper(dtype='float16',
                        optimizer=torch.optim.SGD(model.parameters(), lr=1))
