"""DINO transformer layers whose FFN is a Mixture-of-Experts.

Only the construction differs from mmdet's layers: the forward passes are
inherited unchanged, because :class:`MoEFFN` honours the call convention of
mmcv's ``FFN`` (``ffn(query)`` returns ``query + expert_output``). The
encoder and decoder also build every deformable attention, dense layers' and
MoE layers' alike, as :class:`BFloat16SafeMultiScaleDeformableAttention`, so
DAMEX trains under CUDA bfloat16 autocast.
"""
from typing import Sequence

from mmdet.models.layers import (DeformableDetrTransformerDecoderLayer,
                                 DeformableDetrTransformerEncoder,
                                 DeformableDetrTransformerEncoderLayer,
                                 DinoTransformerDecoder)
from mmdet.models.layers.transformer import deformable_detr_layers
from mmdet.registry import MODELS
from mmdet.utils import ConfigType

from .deformable_attention import use_bfloat16_safe_deformable_attention
from .moe import MoEFFN


class _MoEFFNLayer:
    """Builds the layer as mmdet does, then replaces its FFN by an MoE.

    Args:
        moe_cfg (dict): Keyword arguments of :class:`MoEFFN` added to the
            layer's ``ffn_cfg`` (``num_experts``, ``top_k``, ...).
    """

    def __init__(self, *args, moe_cfg: ConfigType, **kwargs) -> None:
        self.moe_cfg = dict(moe_cfg)
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()
        self.ffn = MoEFFN(**self.ffn_cfg, **self.moe_cfg)


@MODELS.register_module()
class MoEDeformableDetrTransformerEncoderLayer(
        _MoEFFNLayer, DeformableDetrTransformerEncoderLayer):
    """Deformable DETR encoder layer with an MoE FFN."""


@MODELS.register_module()
class MoEDeformableDetrTransformerDecoderLayer(
        _MoEFFNLayer, DeformableDetrTransformerDecoderLayer):
    """Deformable DETR / DINO decoder layer with an MoE FFN."""


class _MoELayerPlacement:
    """Swaps the layers at ``moe_layers`` for their MoE variant.

    Shared by the encoder and the decoder, which build their dense layers in
    mmdet's ``_init_layers``; the swap happens right after, so every other
    part of their construction stays mmdet's. A layer mmdet wrapped for
    activation checkpointing (the encoder's first ``num_cp`` layers) is
    replaced by its MoE variant wrapped the same way. Then every layer's
    deformable attention becomes bfloat16-safe (same weights, state dict keys
    and seeded initialisation; see
    :func:`use_bfloat16_safe_deformable_attention`).

    Args:
        moe_layers (Sequence[int]): Indices of the layers whose FFN is an
            MoE. Empty keeps every layer dense.
        moe_cfg (dict): Keyword arguments of :class:`MoEFFN`.
    """

    moe_layer_type: type

    def __init__(self, *args, moe_layers: Sequence[int] = (),
                 moe_cfg: ConfigType = None, **kwargs) -> None:
        self.moe_layers = tuple(moe_layers)
        self.moe_cfg = moe_cfg
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()
        for index in self.moe_layers:
            if not 0 <= index < self.num_layers:
                raise ValueError(
                    f'MoE layer index {index} does not exist in a '
                    f'{type(self).__name__} of {self.num_layers} layers; '
                    f'use indices in [0, {self.num_layers - 1}] in '
                    f'model.moe_layers.')
            layer = self.moe_layer_type(**self.layer_cfg, moe_cfg=self.moe_cfg)
            if index < getattr(self, 'num_cp', -1):
                # mmdet's own wrapper (fairscale's checkpoint_wrapper), looked
                # up at call time as mmdet's _init_layers does.
                layer = deformable_detr_layers.checkpoint_wrapper(layer)
            self.layers[index] = layer
        use_bfloat16_safe_deformable_attention(self.layers)


@MODELS.register_module()
class MoEDeformableDetrTransformerEncoder(_MoELayerPlacement,
                                          DeformableDetrTransformerEncoder):
    """Deformable DETR encoder with MoE FFNs at the layers ``moe_layers``."""

    moe_layer_type = MoEDeformableDetrTransformerEncoderLayer


@MODELS.register_module()
class MoEDinoTransformerDecoder(_MoELayerPlacement, DinoTransformerDecoder):
    """DINO decoder with MoE FFNs at the layers ``moe_layers`` (the
    reference uses 0, 2 and 4)."""

    moe_layer_type = MoEDeformableDetrTransformerDecoderLayer
