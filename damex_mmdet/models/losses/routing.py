"""Routing losses of the MoE layers: the DAMEX loss and the load-balancing baseline.

Both take the clean gate logits of each MoE layer (``MoEFFN.last_gate_logits``), of shape
(*S, E) with any leading shape S, and optional boolean masks of shape S saying which tokens
count (e.g. to leave out padded or denoising queries). A layer in which no token counts is
skipped; the loss is the mean over the remaining layers.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from torch import Tensor, nn

TensorOrSeq = Union[Tensor, Sequence[Tensor]]
OptMasks = Optional[Sequence[Optional[Tensor]]]


def _as_layers(gate_logits: TensorOrSeq) -> List[Tensor]:
    layers = [gate_logits] if isinstance(gate_logits, Tensor) else list(gate_logits)
    if not layers:
        raise ValueError('gate_logits is empty: expected one (..., E) tensor per MoE layer')
    return layers


def _per_layer(values: Union[None, Tensor, Sequence[Optional[Tensor]]], num_layers: int,
               name: str) -> List[Optional[Tensor]]:
    """Broadcast a single tensor (or None) to every layer, or check a per-layer sequence."""
    if values is None or isinstance(values, Tensor):
        return [values] * num_layers
    values = list(values)
    if len(values) != num_layers:
        raise ValueError(f'{name} has {len(values)} entries for {num_layers} MoE layers')
    return values


def _check_mask(mask: Optional[Tensor], logits: Tensor, layer: int) -> Tensor:
    """(*S) bool mask of the tokens that count; all True when None."""
    if mask is None:
        return torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    if mask.shape != logits.shape[:-1]:
        raise ValueError(f'layer {layer}: mask shape {tuple(mask.shape)} must equal the gate '
                         f'logits leading shape {tuple(logits.shape[:-1])}')
    return mask.to(device=logits.device, dtype=torch.bool)


def _zero(layers: Sequence[Tensor]) -> Tensor:
    """A zero that depends on every layer's logits, so backward still works."""
    return sum(logits.sum() for logits in layers) * 0.


@MODELS.register_module()
class DAMEXLoss(nn.Module):
    """Cross-entropy between each token's gate logits and its dataset's expert.

    Per layer: the mean cross-entropy over the counted tokens; then the mean over the layers
    with at least one counted token; times ``loss_weight``.

    Args:
        loss_weight: weight of the loss (0.1 in DAMEX).
    """

    def __init__(self, loss_weight: float = 0.1) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, gate_logits: TensorOrSeq, targets: TensorOrSeq,
                valid_masks: OptMasks = None) -> Tensor:
        """Args:
            gate_logits: per MoE layer, (*S_l, E) clean gate logits.
            targets: per layer, (*S_l) long expert ids of the tokens' datasets; a single
                tensor is used for every layer. It must be laid out exactly like the
                tokens (the reference code silently mismatched them for batch > 1).
            valid_masks: per layer, (*S_l) bool, True where a token counts; None (the whole
                argument or one entry) means every token counts. Targets of tokens that do
                not count are ignored.

        Returns:
            Scalar loss.
        """
        layers = _as_layers(gate_logits)
        all_targets = _per_layer(targets, len(layers), 'targets')
        masks = _per_layer(valid_masks, len(layers), 'valid_masks')
        layer_losses = []
        for layer, (logits, target, mask) in enumerate(zip(layers, all_targets, masks)):
            if target is None:
                raise ValueError(f'layer {layer}: targets missing')
            if target.shape != logits.shape[:-1]:
                raise ValueError(
                    f'layer {layer}: targets shape {tuple(target.shape)} must equal the gate '
                    f'logits leading shape {tuple(logits.shape[:-1])} (one target per token, '
                    'in the same layout as the tokens)')
            mask = _check_mask(mask, logits, layer)
            if not mask.any():
                continue
            num_experts = logits.size(-1)
            counted = target.to(logits.device)[mask]
            if counted.is_floating_point() or counted.min() < 0 \
                    or counted.max() >= num_experts:
                raise ValueError(f'layer {layer}: targets must be integer expert ids in '
                                 f'[0, {num_experts}), got values in '
                                 f'[{counted.min().item()}, {counted.max().item()}]')
            layer_losses.append(F.cross_entropy(logits[mask], counted.long()))
        if not layer_losses:
            return _zero(layers)
        return self.loss_weight * torch.stack(layer_losses).mean()


@MODELS.register_module()
class LoadBalancingLoss(nn.Module):
    """Switch Transformer load-balancing loss, the vanilla-MoE baseline's routing loss.

    Per layer, over the counted tokens: ``E * sum_e f_e * P_e`` with P_e the mean softmax
    probability of expert e and f_e the fraction of the top-k assignments that went to e
    (not differentiable). It is 1 when routing is perfectly balanced. Mean over the layers
    with at least one counted token; times ``loss_weight``.

    Args:
        loss_weight: weight of the loss (0.01 in Switch Transformer).
    """

    def __init__(self, loss_weight: float = 0.01) -> None:
        super().__init__()
        self.loss_weight = loss_weight

    def forward(self, gate_logits: TensorOrSeq, expert_indices: TensorOrSeq,
                valid_masks: OptMasks = None) -> Tensor:
        """Args:
            gate_logits: per MoE layer, (*S_l, E) clean gate logits.
            expert_indices: per layer, (*S_l, k) long experts each token was sent to
                (``MoEFFN.last_expert_indices``); a single tensor is used for every layer.
            valid_masks: per layer, (*S_l) bool, True where a token counts; None means all.

        Returns:
            Scalar loss.
        """
        layers = _as_layers(gate_logits)
        all_indices = _per_layer(expert_indices, len(layers), 'expert_indices')
        masks = _per_layer(valid_masks, len(layers), 'valid_masks')
        layer_losses = []
        for layer, (logits, indices, mask) in enumerate(zip(layers, all_indices, masks)):
            if indices is None or indices.dim() != logits.dim() \
                    or indices.shape[:-1] != logits.shape[:-1]:
                raise ValueError(
                    f'layer {layer}: expert_indices shape '
                    f'{None if indices is None else tuple(indices.shape)} must be the gate '
                    f'logits leading shape {tuple(logits.shape[:-1])} plus (k,)')
            mask = _check_mask(mask, logits, layer)
            if not mask.any():
                continue
            num_experts = logits.size(-1)
            mean_probs = logits[mask].softmax(dim=-1).mean(dim=0)  # (E,)
            assigned = indices.to(logits.device)[mask].reshape(-1)  # (n * k,)
            if assigned.is_floating_point() or assigned.min() < 0 \
                    or assigned.max() >= num_experts:
                raise ValueError(f'layer {layer}: expert_indices must be integer expert ids '
                                 f'in [0, {num_experts})')
            fractions = torch.bincount(assigned, minlength=num_experts).to(
                mean_probs.dtype) / assigned.numel()  # (E,)
            layer_losses.append(num_experts * (fractions * mean_probs).sum())
        if not layer_losses:
            return _zero(layers)
        return self.loss_weight * torch.stack(layer_losses).mean()
