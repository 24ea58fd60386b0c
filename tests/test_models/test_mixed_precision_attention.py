"""The deformable attention DAMEX builds: float32 kernel inputs exactly where
mmcv's kernel lacks the autocast dtype (CUDA bfloat16), mmcv's module
elsewhere, and the same state as mmcv's in every DAMEX layer."""
import copy

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from damex_mmdet.models.layers import (
    BFloat16SafeMultiScaleDeformableAttention,
    deformable_attention_needs_float32)
from damex_mmdet.models.layers import deformable_attention, transformer

from ..conftest import TINY_CONFIG

CUDA, CPU = torch.device('cuda'), torch.device('cpu')
DIMS, LEVELS, SPATIAL_SHAPES = 16, 2, torch.tensor([[4, 4], [2, 2]])


@pytest.fixture
def cuda_autocast_state():
    """Sets CUDA's autocast flags (thread-local, settable without a GPU);
    restores them afterwards."""
    enabled = torch.is_autocast_enabled('cuda')
    dtype = torch.get_autocast_dtype('cuda')

    def set_state(enabled: bool, dtype: torch.dtype) -> None:
        torch.set_autocast_enabled('cuda', enabled)
        torch.set_autocast_dtype('cuda', dtype)

    yield set_state
    set_state(enabled, dtype)


@pytest.mark.parametrize('device, enabled, dtype, expected', [
    (CUDA, True, torch.bfloat16, True),
    (CUDA, True, torch.float16, False),
    (CUDA, False, torch.bfloat16, False),
    (CPU, True, torch.bfloat16, False),
])
def test_only_cuda_bfloat16_autocast_needs_float32(cuda_autocast_state, device,
                                                   enabled, dtype, expected):
    cuda_autocast_state(enabled, dtype)
    assert deformable_attention_needs_float32(device) is expected


def test_cpu_bfloat16_autocast_does_not_need_float32():
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not deformable_attention_needs_float32(CPU)


def attention_and_inputs():
    """A small bfloat16-safe attention (no dropout) and its keyword
    arguments: 3 queries over 2 levels (4x4, 2x2), batch 2."""
    torch.manual_seed(0)
    attention = BFloat16SafeMultiScaleDeformableAttention(
        embed_dims=DIMS, num_heads=2, num_levels=LEVELS, num_points=2,
        dropout=0., batch_first=True)
    # Non-zero offsets and attention logits, so sampling is not mmcv's
    # initial grid with uniform weights.
    for linear in (attention.sampling_offsets, attention.attention_weights):
        torch.nn.init.normal_(linear.weight, std=0.5)
    num_values = int(SPATIAL_SHAPES.prod(dim=1).sum())
    inputs = dict(
        query=torch.randn(2, 3, DIMS), value=torch.randn(2, num_values, DIMS),
        query_pos=torch.randn(2, 3, DIMS),
        reference_points=torch.rand(2, 3, LEVELS, 2),
        spatial_shapes=SPATIAL_SHAPES,
        level_start_index=torch.tensor([0, 16]),
        key_padding_mask=torch.zeros(2, num_values, dtype=torch.bool))
    return attention, inputs


def test_float32_path_under_bfloat16_autocast_equals_float32():
    attention, inputs = attention_and_inputs()
    reference = attention(**inputs)
    bfloat16_inputs = {name: value.bfloat16() if value.is_floating_point()
                       else value for name, value in inputs.items()}
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mmcv_output = attention(**inputs)
        output = attention.forward_in_float32(**inputs)
        from_bfloat16 = attention.forward_in_float32(**bfloat16_inputs)
    # On CPU the forward is mmcv's: its projections ran in bfloat16.
    with pytest.raises(AssertionError):
        torch.testing.assert_close(mmcv_output, reference)
    assert output.dtype == from_bfloat16.dtype == torch.float32
    torch.testing.assert_close(output, reference)
    # bfloat16 inputs: what float32 computes on those (rounded) values.
    torch.testing.assert_close(
        from_bfloat16,
        attention(**{name: value.float() if value.is_floating_point()
                     else value for name, value in bfloat16_inputs.items()}))


def test_forward_takes_the_float32_path_when_the_kernel_needs_it(monkeypatch):
    attention, inputs = attention_and_inputs()
    reference = attention(**inputs)
    reference.sum().backward()
    reference_grads = [p.grad.clone() for p in attention.parameters()]
    attention.zero_grad()
    # Simulates CUDA bfloat16 autocast: this machine may have no GPU.
    monkeypatch.setattr(deformable_attention,
                        'deformable_attention_needs_float32',
                        lambda device: True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        output = attention(**inputs)
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, reference)
    output.sum().backward()
    for param, expected in zip(attention.parameters(), reference_grads):
        torch.testing.assert_close(param.grad, expected)


def build_tiny_damex(**overrides):
    init_default_scope('mmdet')
    cfg = copy.deepcopy(Config.fromfile(str(TINY_CONFIG)).model)
    cfg.update(overrides)
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()  # DINO's level_embed is uninitialised until then
    return model


def test_every_deformable_attention_of_damex_is_bfloat16_safe(monkeypatch):
    # Dense and MoE layers: a dense encoder layer, decoder layer 0 dense and
    # decoder layer 1 MoE.
    moe_layers = dict(encoder=[], decoder=[1])
    model = build_tiny_damex(moe_layers=moe_layers)
    attentions = {name: type(module) for name, module in model.named_modules()
                  if isinstance(module, MultiScaleDeformableAttention)}
    assert attentions == {
        'encoder.layers.0.self_attn':
        BFloat16SafeMultiScaleDeformableAttention,
        'decoder.layers.0.cross_attn':
        BFloat16SafeMultiScaleDeformableAttention,
        'decoder.layers.1.cross_attn':
        BFloat16SafeMultiScaleDeformableAttention,
    }

    monkeypatch.setattr(transformer, 'use_bfloat16_safe_deformable_attention',
                        lambda layers: None)
    plain = build_tiny_damex(moe_layers=moe_layers)
    assert type(plain.decoder.layers[1].cross_attn) is (
        MultiScaleDeformableAttention)
    # Same keys in the same order, and the same seeded weights.
    state, plain_state = model.state_dict(), plain.state_dict()
    assert list(state) == list(plain_state)
    for name, value in plain_state.items():
        assert torch.equal(state[name], value), name
