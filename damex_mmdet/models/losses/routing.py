"""Routing losses of the MoE layers: the DAMEX loss and two load-balancing baselines.

All take the clean gate logits of each MoE layer (``MoEFFN.last_gate_logits``), of shape
(*S, E) with any leading shape S, and optional boolean masks of shape S saying which tokens
count (e.g. to leave out padded or denoising queries, or to keep only the queries matched
to a ground-truth box). A layer in which no token counts is skipped; the loss is the mean
over the remaining layers, times the loss weight.

The weight may decay over training (``weight_schedule``), read from the iteration that
mmengine's runner publishes in its ``MessageHub`` (``'iter'`` and ``'max_iters'``).
"""
import math
from typing import List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmengine.logging import MessageHub
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


WEIGHT_DECAYS = ('cosine', 'linear')


class _RoutingLoss(nn.Module):
    """A routing loss weight, constant or decaying over the training iterations.

    Args:
        loss_weight: the weight at iteration 0.
        weight_schedule: None for a constant weight, or ``dict(decay='cosine' | 'linear',
            min_factor=0.1, end=None)``: the weight falls from ``loss_weight`` at iteration 0
            to ``min_factor * loss_weight`` at iteration ``end`` (default: the run's
            ``max_iters``) and stays there. ``'cosine'`` follows half a cosine,
            ``'linear'`` a straight line.
    """

    def __init__(self, loss_weight: float,
                 weight_schedule: Optional[Mapping] = None) -> None:
        super().__init__()
        self.loss_weight = loss_weight
        self.weight_schedule = self._checked_schedule(weight_schedule)

    @staticmethod
    def _checked_schedule(schedule: Optional[Mapping]) -> Optional[dict]:
        if schedule is None:
            return None
        schedule = dict(schedule)
        unknown = set(schedule) - {'decay', 'min_factor', 'end'}
        if unknown:
            raise ValueError(f'weight_schedule has unknown keys {sorted(unknown)}; it takes '
                             "decay ('cosine' or 'linear'), min_factor and end")
        schedule.setdefault('min_factor', 0.1)
        schedule.setdefault('end', None)
        if schedule.get('decay') not in WEIGHT_DECAYS:
            raise ValueError(f"weight_schedule.decay must be one of {WEIGHT_DECAYS}, got "
                             f"{schedule.get('decay')!r}")
        if not 0 <= schedule['min_factor'] <= 1:
            raise ValueError('weight_schedule.min_factor must be in [0, 1], got '
                             f"{schedule['min_factor']}")
        end = schedule['end']
        if end is not None and (not isinstance(end, int) or end <= 0):
            raise ValueError(f'weight_schedule.end must be a positive int or None, got {end!r}')
        return schedule

    def current_weight(self) -> float:
        """The loss weight at the runner's current training iteration."""
        if self.weight_schedule is None:
            return self.loss_weight
        hub = MessageHub.get_current_instance()
        step, end = hub.get_info('iter'), self.weight_schedule['end']
        if end is None:
            end = hub.get_info('max_iters')
        if step is None or end is None:
            raise RuntimeError(
                f'{type(self).__name__}.weight_schedule needs the training iteration and '
                "max_iters from mmengine's MessageHub ('iter', 'max_iters'), which the "
                "Runner's RuntimeInfoHook publishes; outside a Runner set them with "
                "MessageHub.get_current_instance().update_info(...), or give "
                'weight_schedule.end.')
        progress = min(max(step / end, 0.), 1.)
        if self.weight_schedule['decay'] == 'cosine':
            decay = 0.5 * (1. + math.cos(math.pi * progress))
        else:
            decay = 1. - progress
        floor = self.weight_schedule['min_factor']
        return self.loss_weight * (floor + (1. - floor) * decay)


@MODELS.register_module()
class DAMEXLoss(_RoutingLoss):
    """Cross-entropy between each token's gate logits and its dataset's expert.

    Per layer: the mean cross-entropy over the counted tokens; then the mean over the layers
    with at least one counted token; times the loss weight.

    Args:
        loss_weight: weight of the loss (0.1 in DAMEX).
        weight_schedule: None (constant) or a decay, see :class:`_RoutingLoss`.
        expert_weight: None, or one non-negative weight per expert: each token's
            cross-entropy counts with the weight of its target expert, and a layer's loss is
            the weighted mean (as ``class_weight`` in mmdet's ``CrossEntropyLoss``). With
            weights of 1 / each dataset's sampling ratio, every expert holds the same
            share of the loss whatever the sampler draws: the growth configs use that so
            that the new dataset's larger share does not outweigh what keeps the old
            datasets' tokens at their experts (benchmarks/README.md#growing-a-trained-model).
    """

    def __init__(self, loss_weight: float = 0.1,
                 weight_schedule: Optional[Mapping] = None,
                 expert_weight: Optional[Sequence[float]] = None) -> None:
        super().__init__(loss_weight, weight_schedule)
        self.expert_weight = self._checked_expert_weight(expert_weight)

    @staticmethod
    def _checked_expert_weight(weights: Optional[Sequence[float]]) -> Optional[List[float]]:
        if weights is None:
            return None
        if isinstance(weights, (str, Mapping)) or not isinstance(weights, Sequence):
            raise ValueError('expert_weight must be a list with one weight per expert, e.g. '
                             f'[1.0, 1.0, 0.2], got {weights!r}')
        weights = [float(w) for w in weights]
        if not weights or any(not math.isfinite(w) or w < 0 for w in weights) \
                or not any(weights):
            raise ValueError('expert_weight must hold finite weights >= 0, at least one '
                             f'positive, got {weights}')
        return weights

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
            if self.expert_weight is not None and len(self.expert_weight) != logits.size(-1):
                raise ValueError(
                    f'layer {layer}: expert_weight has {len(self.expert_weight)} weights for '
                    f'{logits.size(-1)} experts: give one weight per expert '
                    '(model.num_experts)')
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
            if self.expert_weight is None:
                layer_losses.append(F.cross_entropy(logits[mask], counted.long()))
                continue
            weight = logits.new_tensor(self.expert_weight)
            if weight[counted.long()].sum() == 0:
                continue
            layer_losses.append(F.cross_entropy(logits[mask], counted.long(), weight=weight))
        if not layer_losses:
            return _zero(layers)
        return self.current_weight() * torch.stack(layer_losses).mean()


def _checked_indices(indices: Optional[Tensor], logits: Tensor, layer: int) -> Tensor:
    """(*S, k) long expert indices laid out like the (*S, E) logits."""
    if indices is None or indices.dim() != logits.dim() \
            or indices.shape[:-1] != logits.shape[:-1]:
        raise ValueError(
            f'layer {layer}: expert_indices shape '
            f'{None if indices is None else tuple(indices.shape)} must be the gate '
            f'logits leading shape {tuple(logits.shape[:-1])} plus (k,)')
    if indices.is_floating_point() or (indices.numel() and (
            indices.min() < 0 or indices.max() >= logits.size(-1))):
        raise ValueError(f'layer {layer}: expert_indices must be integer expert ids '
                         f'in [0, {logits.size(-1)})')
    return indices.to(logits.device)


@MODELS.register_module()
class LoadBalancingLoss(_RoutingLoss):
    """Switch Transformer load-balancing loss, a vanilla-MoE baseline's routing loss.

    Per layer, over the counted tokens: ``E * sum_e f_e * P_e`` with P_e the mean softmax
    probability of expert e and f_e the fraction of the top-k assignments that went to e
    (not differentiable). It is 1 when routing is perfectly balanced. Mean over the layers
    with at least one counted token; times the loss weight.

    Args:
        loss_weight: weight of the loss (0.01 in Switch Transformer).
        weight_schedule: None (constant) or a decay, see :class:`_RoutingLoss`.
    """

    def __init__(self, loss_weight: float = 0.01,
                 weight_schedule: Optional[Mapping] = None) -> None:
        super().__init__(loss_weight, weight_schedule)

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
            indices = _checked_indices(indices, logits, layer)
            mask = _check_mask(mask, logits, layer)
            if not mask.any():
                continue
            num_experts = logits.size(-1)
            mean_probs = logits[mask].softmax(dim=-1).mean(dim=0)  # (E,)
            assigned = indices[mask].reshape(-1)  # (n * k,)
            fractions = torch.bincount(assigned, minlength=num_experts).to(
                mean_probs.dtype) / assigned.numel()  # (E,)
            layer_losses.append(num_experts * (fractions * mean_probs).sum())
        if not layer_losses:
            return _zero(layers)
        return self.current_weight() * torch.stack(layer_losses).mean()


def _cv_squared(values: Tensor) -> Tensor:
    """Squared coefficient of variation of (E,) values, with the unbiased variance (tutel's
    ``var() / (mean() ** 2 + 1e-10)``)."""
    return values.var() / (values.mean() ** 2 + 1e-10)


@MODELS.register_module()
class LoadImportanceLoss(_RoutingLoss):
    """tutel's load + importance loss, the DAMEX reference's vanilla-MoE routing loss.

    The reference trains its vanilla MoE with tutel's ``load_importance_loss`` (Shazeer et
    al., 2017) on the matched foreground queries only, weight 0.1. For one group of counted
    tokens with clean gate logits ``l`` (n, E), probabilities ``p = softmax(l)``, and the
    experts each token was sent to (chosen on the noisy logits):

    - importance ``I_e = sum_i p_ie``;
    - load ``L_e = sum_i Phi((p_ie - t_i) / sigma)``, with ``t_i`` the clean logit of the
      token's k-th chosen expert, ``sigma`` the std of the layer's gate noise and ``Phi``
      the standard normal CDF. This is the reference's formula as written: it compares a
      probability with a logit, unlike Shazeer et al.'s smooth load estimate, and is kept
      as is so that the baseline is the reference's;
    - loss ``(CV^2(I) + CV^2(L)) / 2``, CV^2 the squared coefficient of variation over the
      experts with the unbiased variance.

    With ``per_image=True`` each image (the first leading dim of the logits) is one group
    and the layer's loss is the mean over the images with at least one counted token: the
    reference holds one image per GPU, computes the loss there, and DDP averages. With
    ``per_image=False`` all counted tokens of the layer form one group. Then the mean over
    layers, times the loss weight.

    Args:
        loss_weight: weight of the loss (0.1 in the DAMEX reference).
        per_image: group the tokens per image (the reference) or per layer.
        weight_schedule: None (constant) or a decay, see :class:`_RoutingLoss`.
    """

    def __init__(self, loss_weight: float = 0.1, per_image: bool = True,
                 weight_schedule: Optional[Mapping] = None) -> None:
        super().__init__(loss_weight, weight_schedule)
        self.per_image = per_image

    def forward(self, gate_logits: TensorOrSeq, expert_indices: TensorOrSeq,
                noise_stds: Union[float, Sequence[float]],
                valid_masks: OptMasks = None) -> Tensor:
        """Args:
            gate_logits: per MoE layer, (B, *S_l, E) clean gate logits, B the images.
            expert_indices: per layer, (B, *S_l, k) long experts each token was sent to,
                best first (``MoEFFN.last_expert_indices``); a single tensor is used for
                every layer.
            noise_stds: the std of each layer's training-time gate noise
                (``MoEFFN.gate_noise_std``), or one std for all; must be > 0.
            valid_masks: per layer, (B, *S_l) bool, True where a token counts; None means
                all.

        Returns:
            Scalar loss.
        """
        layers = _as_layers(gate_logits)
        all_indices = _per_layer(expert_indices, len(layers), 'expert_indices')
        masks = _per_layer(valid_masks, len(layers), 'valid_masks')
        stds = ([noise_stds] * len(layers) if isinstance(noise_stds, (int, float))
                else list(noise_stds))
        if len(stds) != len(layers):
            raise ValueError(f'noise_stds has {len(stds)} entries for {len(layers)} MoE layers')
        layer_losses = []
        for layer, (logits, indices, mask, std) in enumerate(
                zip(layers, all_indices, masks, stds)):
            if not std > 0:
                raise ValueError(
                    f'layer {layer}: LoadImportanceLoss needs gate noise (its load term '
                    f'divides by the noise std), got gate_noise_std={std}; set '
                    'model.moe_cfg.gate_noise_std > 0 (the reference uses 1 / num_experts)')
            indices = _checked_indices(indices, logits, layer)
            mask = _check_mask(mask, logits, layer)
            if self.per_image and logits.dim() > 2:
                groups = [(logits[b], indices[b], mask[b]) for b in range(logits.size(0))]
            else:
                groups = [(logits, indices, mask)]
            group_losses = [self._group_loss(group_logits[counted], group_indices[counted], std)
                            for group_logits, group_indices, counted in groups
                            if counted.any()]
            if group_losses:
                layer_losses.append(torch.stack(group_losses).mean())
        if not layer_losses:
            return _zero(layers)
        return self.current_weight() * torch.stack(layer_losses).mean()

    @staticmethod
    def _group_loss(logits: Tensor, indices: Tensor, noise_std: float) -> Tensor:
        """(n, E) clean logits and (n, k) chosen experts of one group -> scalar."""
        probs = logits.softmax(dim=-1)
        threshold = logits.gather(-1, indices[:, -1:])  # (n, 1): k-th chosen expert's logit
        load = torch.special.ndtr((probs - threshold) / noise_std).sum(dim=0)  # (E,)
        importance = probs.sum(dim=0)  # (E,)
        return (_cv_squared(importance) + _cv_squared(load)) / 2
