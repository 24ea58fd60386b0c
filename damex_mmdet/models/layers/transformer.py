"""DINO transformer layers whose FFN is a Mixture-of-Experts.

Only the construction differs from mmdet's layers, and the forwards tell the
MoE FFNs which tokens are padding: otherwise mmdet's forward passes run
unchanged, because :class:`MoEFFN` honours the call convention of mmcv's
``FFN`` (``ffn(query)`` returns ``query + expert_output``). The encoder and
decoder also build every deformable attention, dense layers' and MoE layers'
alike, as :class:`BFloat16SafeMultiScaleDeformableAttention`, so DAMEX trains
under CUDA bfloat16 autocast.
"""
import copy
from contextlib import ExitStack
from typing import Mapping, Optional, Sequence

from mmdet.models.layers import (DeformableDetrTransformerDecoderLayer,
                                 DeformableDetrTransformerEncoder,
                                 DeformableDetrTransformerEncoderLayer,
                                 DinoTransformerDecoder)
from mmdet.models.layers.transformer import deformable_detr_layers
from mmdet.registry import MODELS
from mmdet.utils import ConfigType
from torch import Tensor

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
    """Deformable DETR encoder layer with an MoE FFN, which routes no padded
    feature position (the layer's own ``key_padding_mask``)."""

    def forward(self, query: Tensor, query_pos: Tensor,
                key_padding_mask: Optional[Tensor], **kwargs) -> Tensor:
        # Inside the layer's forward, so that a checkpointed layer recomputes
        # its FFN in backward with the same mask.
        with self.ffn.ignore_padding(key_padding_mask):
            return super().forward(query=query, query_pos=query_pos,
                                   key_padding_mask=key_padding_mask,
                                   **kwargs)


@MODELS.register_module()
class MoEDeformableDetrTransformerDecoderLayer(
        _MoEFFNLayer, DeformableDetrTransformerDecoderLayer):
    """Deformable DETR / DINO decoder layer with an MoE FFN."""


class _MoELayerPlacement:
    """Swaps the layers at ``moe_layers`` for their MoE variant, and gives the
    layers in ``ffn_channels`` their own FFN hidden width.

    Shared by the encoder and the decoder, which build their dense layers in
    mmdet's ``_init_layers``; the swap happens right after, so every other
    part of their construction stays mmdet's. A layer mmdet wrapped for
    activation checkpointing (the encoder's first ``num_cp`` layers) is
    replaced by its new variant wrapped the same way. Then every layer's
    deformable attention becomes bfloat16-safe (same weights, state dict keys
    and seeded initialisation; see
    :func:`use_bfloat16_safe_deformable_attention`).

    Args:
        moe_layers (Sequence[int]): Indices of the layers whose FFN is an
            MoE. Empty keeps every layer dense.
        moe_cfg (dict): Keyword arguments of :class:`MoEFFN`.
        ffn_channels (dict): Layer index to the hidden width of its FFN,
            replacing ``layer_cfg.ffn_cfg.feedforward_channels`` there (for an
            MoE layer, the width of the dense FFN it replaces). Empty keeps
            every layer's width.
    """

    moe_layer_type: type

    def __init__(self, *args, moe_layers: Sequence[int] = (),
                 moe_cfg: ConfigType = None,
                 ffn_channels: Optional[Mapping[int, int]] = None,
                 **kwargs) -> None:
        self.moe_layers = tuple(moe_layers)
        self.moe_cfg = moe_cfg
        self.ffn_channels = dict(ffn_channels or {})
        super().__init__(*args, **kwargs)

    def _check_index(self, index: int, option: str) -> None:
        if isinstance(index, bool) or not isinstance(index, int) or not (
                0 <= index < self.num_layers):
            raise ValueError(
                f'layer index {index!r} in {option} does not exist in a '
                f'{type(self).__name__} of {self.num_layers} layers; use '
                f'indices in [0, {self.num_layers - 1}].')

    def _layer_cfg(self, index: int) -> dict:
        """``layer_cfg`` with the FFN width of layer ``index``."""
        layer_cfg = copy.deepcopy(dict(self.layer_cfg))
        if index in self.ffn_channels:
            layer_cfg['ffn_cfg'] = dict(layer_cfg.get('ffn_cfg', {}),
                                        feedforward_channels=self.ffn_channels[index])
        return layer_cfg

    def _init_layers(self) -> None:
        super()._init_layers()
        for index in self.moe_layers:
            self._check_index(index, 'model.moe_layers')
        for index, width in self.ffn_channels.items():
            self._check_index(index, 'model.ffn_channels')
            if isinstance(width, bool) or not isinstance(width, int) or width < 1:
                raise ValueError(
                    f'model.ffn_channels gives layer {index} the FFN width '
                    f'{width!r}; write a positive int.')
        for index in sorted({*self.moe_layers, *self.ffn_channels}):
            if index in self.moe_layers:
                layer = self.moe_layer_type(**self._layer_cfg(index),
                                            moe_cfg=self.moe_cfg)
            else:
                layer = self.dense_layer_type(**self._layer_cfg(index))
            if index < getattr(self, 'num_cp', -1):
                # mmdet's own wrapper (fairscale's checkpoint_wrapper), looked
                # up at call time as mmdet's _init_layers does.
                layer = deformable_detr_layers.checkpoint_wrapper(layer)
            self.layers[index] = layer
        use_bfloat16_safe_deformable_attention(self.layers)


@MODELS.register_module()
class MoEDeformableDetrTransformerEncoder(_MoELayerPlacement,
                                          DeformableDetrTransformerEncoder):
    """Deformable DETR encoder with MoE FFNs at the layers ``moe_layers`` and
    per-layer FFN widths ``ffn_channels``."""

    moe_layer_type = MoEDeformableDetrTransformerEncoderLayer
    dense_layer_type = DeformableDetrTransformerEncoderLayer


@MODELS.register_module()
class MoEDinoTransformerDecoder(_MoELayerPlacement, DinoTransformerDecoder):
    """DINO decoder with MoE FFNs at the layers ``moe_layers`` (the
    reference uses 0, 2 and 4) and per-layer FFN widths ``ffn_channels``."""

    moe_layer_type = MoEDeformableDetrTransformerDecoderLayer
    dense_layer_type = DeformableDetrTransformerDecoderLayer

    def forward(self, *args, query_padding_mask: Optional[Tensor] = None,
                **kwargs):
        """mmdet's forward; its MoE FFNs route no query of
        ``query_padding_mask``.

        Args:
            query_padding_mask (Tensor, optional): Bool, (bs,
                num_queries_total), True at the queries that are padding:
                the denoising slots DINO leaves empty in an image with fewer
                boxes than the batch's most. None: every query is real.
        """
        with ExitStack() as stack:
            for index in self.moe_layers:
                stack.enter_context(self.layers[index].ffn.ignore_padding(
                    query_padding_mask))
            return super().forward(*args, **kwargs)
