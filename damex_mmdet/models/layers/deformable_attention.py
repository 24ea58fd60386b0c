"""mmcv's multi-scale deformable attention, made to train under CUDA
bfloat16 autocast."""
from typing import Any

import torch
from mmcv.ops import MultiScaleDeformableAttention
from torch import Tensor, nn


def deformable_attention_needs_float32(device: torch.device) -> bool:
    """Whether mmcv's deformable attention on ``device`` would reach a kernel
    without the current autocast dtype.

    Only CUDA autocast to bfloat16 does: mmcv 2.1's CUDA kernel has float32,
    float64 and float16 versions, and on CPU mmcv runs a PyTorch version that
    handles every dtype.
    """
    return (device.type == 'cuda' and torch.is_autocast_enabled('cuda')
            and torch.get_autocast_dtype('cuda') == torch.bfloat16)


def _to_float32(value: Any) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point():
        return value.float()
    return value


class BFloat16SafeMultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """mmcv's ``MultiScaleDeformableAttention`` that also runs under CUDA
    bfloat16 autocast.

    mmcv 2.1.0's CUDA kernel (``ms_deform_attn_cuda.cu``) dispatches on
    float32, float64 and float16 only. Under CUDA bfloat16 autocast,
    ``value_proj`` returns a bfloat16 ``value``, mmcv casts the sampling
    locations and attention weights to it, and the kernel fails with
    "... not implemented for 'BFloat16'". In that case alone this module casts
    its floating inputs to float32 and runs mmcv's forward with autocast off
    (projections included: the forward cannot be split without copying it),
    returning float32; the next autocast op casts it as it needs. Everywhere
    else (no autocast, float16 autocast, CPU) it is mmcv's module unchanged.
    It has mmcv's parameters and state dict keys, so checkpoints load either
    way.
    """

    def forward(self, *args, **kwargs) -> Tensor:
        """mmcv's forward, in float32 where
        :func:`deformable_attention_needs_float32` says so. Takes and returns
        what mmcv's forward does (output (num_query, bs, embed_dims), or
        batch first)."""
        if deformable_attention_needs_float32(self.value_proj.weight.device):
            return self.forward_in_float32(*args, **kwargs)
        return super().forward(*args, **kwargs)

    def forward_in_float32(self, *args, **kwargs) -> Tensor:
        """mmcv's forward with autocast off and every floating tensor
        argument cast to float32; the output is float32."""
        float32_kwargs = {name: _to_float32(value)
                          for name, value in kwargs.items()}
        device_type = self.value_proj.weight.device.type
        with torch.autocast(device_type, enabled=False):
            return super().forward(*map(_to_float32, args), **float32_kwargs)


def use_bfloat16_safe_deformable_attention(module: nn.Module) -> None:
    """Rebuilds every mmcv ``MultiScaleDeformableAttention`` inside
    ``module`` as :class:`BFloat16SafeMultiScaleDeformableAttention`.

    mmdet's deformable DETR layers build the attention inline in their
    ``_init_layers`` from ``self_attn_cfg`` / ``cross_attn_cfg``; the
    replacement is built from the same config of its layer and takes over the
    built weights. It is built with the random generator forked, so the model
    (its state dict keys and values included) is the one the same seed built
    without this swap.
    """
    targets = [(layer, name, attention)
               for layer in module.modules()
               for name, attention in layer.named_children()
               if type(attention) is MultiScaleDeformableAttention]
    for layer, name, attention in targets:
        with torch.random.fork_rng(devices=[]):
            replacement = BFloat16SafeMultiScaleDeformableAttention(
                **getattr(layer, f'{name}_cfg'))
        replacement.load_state_dict(attention.state_dict())
        replacement.train(attention.training)
        setattr(layer, name, replacement)
