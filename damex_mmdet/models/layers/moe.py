"""Mixture-of-Experts feed-forward layer, a drop-in replacement for mmcv's ``FFN``.

DAMEX replaces some FFNs of DINO's transformer with a set of experts and a linear gate.
:class:`MoEFFN` keeps ``FFN``'s call convention (``forward(x, identity=None)``) and accepts
``FFN``'s constructor keywords, so a DINO ``ffn_cfg`` can be passed through unchanged
together with the MoE keywords.

Dispatch is dropless by default: every token reaches its chosen experts, each expert runs
once on the contiguous block of tokens routed to it, and no expert is padded to a common
capacity. A capacity (GShard/tutel style) is available as an option.
"""
import math
from contextlib import contextmanager
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer
from mmcv.cnn.bricks.drop import build_dropout
from torch import Tensor, nn

# MoEFFN parameter name -> name of the same tensor in mmcv's dense ``FFN`` (num_fcs=2):
# ``layers.0`` is Sequential(Linear, act, Dropout), ``layers.1`` the output Linear.
DENSE_FFN_KEYS: Dict[str, str] = {
    'expert_w1': 'layers.0.0.weight',
    'expert_b1': 'layers.0.0.bias',
    'expert_w2': 'layers.1.weight',
    'expert_b2': 'layers.1.bias',
}


def dense_ffn_to_moe_state(dense_state: Mapping[str, Tensor],
                           num_experts: int) -> Dict[str, Tensor]:
    """Replicate a dense mmcv ``FFN`` state dict into every expert of a MoEFFN.

    Args:
        dense_state: the FFN's own state dict (no prefix), with keys ``layers.0.0.weight``
            (H, D), ``layers.0.0.bias`` (H,), ``layers.1.weight`` (D, H), ``layers.1.bias``
            (D,). Other keys are ignored.
        num_experts: E, the number of copies.

    Returns:
        ``expert_w1`` (E, H, D), ``expert_b1`` (E, H), ``expert_w2`` (E, D, H) and
        ``expert_b2`` (E, D), without prefix; the gate is not included.
    """
    if num_experts < 1:
        raise ValueError(f'num_experts must be >= 1, got {num_experts}')
    missing = [key for key in DENSE_FFN_KEYS.values() if key not in dense_state]
    if missing:
        raise KeyError(f'dense FFN state lacks {missing}; expected the keys of '
                       f'mmcv FFN(num_fcs=2): {sorted(DENSE_FFN_KEYS.values())}')
    tensors = {name: dense_state[key] for name, key in DENSE_FFN_KEYS.items()}
    hidden, dims = tensors['expert_w1'].shape if tensors['expert_w1'].dim() == 2 else (-1, -1)
    expected = {'expert_w1': (hidden, dims), 'expert_b1': (hidden, ),
                'expert_w2': (dims, hidden), 'expert_b2': (dims, )}
    if hidden < 0 or any(tuple(tensors[name].shape) != shape
                         for name, shape in expected.items()):
        found = ', '.join(f'{DENSE_FFN_KEYS[name]} {tuple(tensor.shape)}'
                          for name, tensor in tensors.items())
        raise ValueError(f'inconsistent dense FFN shapes: {found}; expected (H, D), (H,), '
                         '(D, H), (D,) in that order')
    return {name: tensor.detach().unsqueeze(0).expand(num_experts, *tensor.shape).clone()
            for name, tensor in tensors.items()}


class _PermuteRows(torch.autograd.Function):
    """``src[index]`` along dim 0 for a permutation ``index`` whose inverse is given.

    Autograd's own backward of ``index_select`` is a scatter-add (``index_add_``), which is
    atomic and so non-deterministic on GPU; for a permutation the gradient is simply the
    gather with the inverse permutation. Using it in both directions keeps the dispatch free
    of scatter-adds (top-k outputs are summed with a plain reduction). Shapes: src (A, D),
    index and inverse (A,) long, output (A, D).
    """

    @staticmethod
    def forward(ctx, src: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return src.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, None, None]:
        inverse, = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


class MoEFFN(nn.Module):
    """Top-k Mixture-of-Experts FFN with dropless (or capacity-limited) dispatch.

    Each expert is the two-layer MLP of mmcv's ``FFN``: Linear(D, H), activation, Dropout,
    Linear(H, D), Dropout. A bias-free linear gate scores the E experts per token; each token
    goes to its k best experts and their outputs are summed with routing weights.

    Routing weights (``normalize_weights``):

    - ``None`` (auto): for k=1 the chosen expert's softmax probability (Switch Transformer,
      and the DAMEX reference), so the task loss also trains the gate; for k>1 the top-k
      probabilities renormalised to sum to 1.
    - ``True``: always renormalise (k=1 gives weight 1.0, so a MoE upcycled from a dense FFN
      reproduces it exactly).
    - ``False``: always the raw softmax probabilities.

    With ``gate_noise_std > 0`` Gaussian noise is added to the logits during training before
    experts are chosen and weighted; the clean logits are exposed for the routing losses.

    Args:
        embed_dims: D, the token width.
        feedforward_channels: H, the hidden width of each expert.
        num_experts: E.
        top_k: k, experts per token (1 <= k <= E).
        act_cfg: activation config of the experts (mmcv ``build_activation_layer``).
        ffn_drop: dropout probability after the activation and after the second linear.
        add_identity: add the residual ``identity`` (default ``x``) to the output, as ``FFN``.
        gate_noise_std: std of the training-time routing noise; 0 disables it.
        capacity_factor: None for dropless dispatch; otherwise each expert takes at most
            ``ceil(capacity_factor * T * k / E)`` assignments of the T tokens of a forward,
            first choices before second choices and, within those, in token order; the rest
            are dropped (they add nothing; with ``add_identity`` the token passes through).
        normalize_weights: see above.
        num_fcs: accepted for ``FFN`` compatibility; only 2 is supported.
        dropout_layer: ``FFN``'s dropout on the output branch (e.g. DropPath), built with
            mmcv ``build_dropout``; None or empty means identity.

    Attributes set by every forward (x of shape (*S, D), T = prod(S)):
        last_gate_logits: (*S, E) clean gate logits, still attached to the autograd graph.
        last_expert_indices: (*S, k') long, chosen experts (k' = 1 under forced routing).
        last_expert_counts: (E,) long, assignments per expert before any capacity drop;
            sums to T * k'.
        last_num_dropped: int, assignments dropped by the capacity (0 when dropless).
    """

    def __init__(self,
                 embed_dims: int = 256,
                 feedforward_channels: int = 1024,
                 num_experts: int = 8,
                 top_k: int = 1,
                 act_cfg: dict = dict(type='ReLU', inplace=True),
                 ffn_drop: float = 0.,
                 add_identity: bool = True,
                 gate_noise_std: float = 0.,
                 capacity_factor: Optional[float] = None,
                 normalize_weights: Optional[bool] = None,
                 num_fcs: int = 2,
                 dropout_layer: Optional[dict] = None) -> None:
        super().__init__()
        if embed_dims < 1 or feedforward_channels < 1:
            raise ValueError('embed_dims and feedforward_channels must be >= 1, got '
                             f'{embed_dims} and {feedforward_channels}')
        if num_experts < 1:
            raise ValueError(f'num_experts must be >= 1, got {num_experts}')
        if not 1 <= top_k <= num_experts:
            raise ValueError(f'top_k must be in [1, num_experts={num_experts}], got {top_k}')
        if num_fcs != 2:
            raise ValueError(f'MoEFFN experts have exactly 2 linear layers (num_fcs=2), '
                             f'got num_fcs={num_fcs}')
        if not 0. <= ffn_drop < 1.:
            raise ValueError(f'ffn_drop must be in [0, 1), got {ffn_drop}')
        if gate_noise_std < 0:
            raise ValueError(f'gate_noise_std must be >= 0, got {gate_noise_std}')
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f'capacity_factor must be > 0 or None, got {capacity_factor}')
        if normalize_weights not in (None, True, False):
            raise ValueError(f'normalize_weights must be None, True or False, '
                             f'got {normalize_weights!r}')

        self.embed_dims = embed_dims
        self.feedforward_channels = feedforward_channels
        self.num_experts = num_experts
        self.top_k = top_k
        self.add_identity = add_identity
        self.gate_noise_std = float(gate_noise_std)
        self.capacity_factor = capacity_factor
        self.normalize_weights = normalize_weights

        self.gate = nn.Linear(embed_dims, num_experts, bias=False)
        # The experts are stacked into four parameters rather than E modules: every parameter
        # takes part in every step, so DDP never sees unused parameters when some expert
        # receives no token, and each expert is still a plain nn.Linear-shaped slice.
        self.expert_w1 = nn.Parameter(torch.empty(num_experts, feedforward_channels, embed_dims))
        self.expert_b1 = nn.Parameter(torch.empty(num_experts, feedforward_channels))
        self.expert_w2 = nn.Parameter(torch.empty(num_experts, embed_dims, feedforward_channels))
        self.expert_b2 = nn.Parameter(torch.empty(num_experts, embed_dims))
        self.activate = build_activation_layer(act_cfg)
        self.drop = nn.Dropout(ffn_drop)
        self.dropout_layer = build_dropout(dropout_layer) if dropout_layer else nn.Identity()

        # Oracle routing: (B,) long, one expert per leading-dim sample; see force_experts().
        self.forced_experts: Optional[Tensor] = None
        self.last_gate_logits: Optional[Tensor] = None
        self.last_expert_indices: Optional[Tensor] = None
        self.last_expert_counts: Optional[Tensor] = None
        self.last_num_dropped: int = 0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Re-initialise the gate and all experts.

        Public because mmdet's ``DINO.init_weights`` applies ``xavier_uniform_`` to every
        parameter with more than one dimension, which treats the stacked (E, H, D) expert
        tensors as a single conv-like kernel; the detector calls this method afterwards.

        - gate: normal(0, 0.02), so routing starts near uniform and no expert is favoured
          before the routing loss acts;
        - w1, w2: ``xavier_uniform_`` on each expert's 2-D matrix, which is what DINO gives a
          dense FFN's linears;
        - biases: nn.Linear's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which DINO leaves
          untouched on dense FFNs.
        """
        nn.init.normal_(self.gate.weight, std=0.02)
        for expert in range(self.num_experts):
            nn.init.xavier_uniform_(self.expert_w1[expert])
            nn.init.xavier_uniform_(self.expert_w2[expert])
        for bias, fan_in in ((self.expert_b1, self.embed_dims),
                             (self.expert_b2, self.feedforward_channels)):
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(bias, -bound, bound)

    @torch.no_grad()
    def upcycle_from_dense(self, state: Mapping[str, Tensor]) -> None:
        """Copy a dense mmcv ``FFN``'s weights into every expert (the gate is kept).

        Args:
            state: the FFN's state dict without prefix (see :func:`dense_ffn_to_moe_state`).
        """
        moe_state = dense_ffn_to_moe_state(state, self.num_experts)
        for name, value in moe_state.items():  # check all before copying any
            param = getattr(self, name)
            if value.shape != param.shape:
                raise ValueError(f'{name}: dense FFN gives {tuple(value.shape)}, this MoEFFN '
                                 f'(E={self.num_experts}, H={self.feedforward_channels}, '
                                 f'D={self.embed_dims}) needs {tuple(param.shape)}')
        for name, value in moe_state.items():
            getattr(self, name).copy_(value)

    @contextmanager
    def force_experts(self, experts: Tensor) -> Iterator['MoEFFN']:
        """Route every token of leading-dim sample b to ``experts[b]`` inside the block.

        Args:
            experts: (B,) integer tensor, B = x.shape[0] of the forwards in the block.
        """
        if experts.dim() != 1 or experts.is_floating_point():
            raise ValueError(f'forced experts must be a 1-D integer tensor (B,), got '
                             f'{experts.dtype} of shape {tuple(experts.shape)}')
        previous, self.forced_experts = self.forced_experts, experts
        try:
            yield self
        finally:
            self.forced_experts = previous

    def forward(self, x: Tensor, identity: Optional[Tensor] = None) -> Tensor:
        """Args:
            x: (*S, D) tokens, typically (B, N, D).
            identity: (*S, D) residual added when ``add_identity``; defaults to ``x``.

        Returns:
            (*S, D): ``identity + dropout_layer(moe(x))``, or ``dropout_layer(moe(x))``
            without identity.
        """
        lead_shape = x.shape[:-1]
        tokens = x.reshape(-1, self.embed_dims)  # (T, D)
        logits = self.gate(tokens)  # (T, E)
        expert_idx, weights = self._route(logits, lead_shape)  # (T, k'), (T, k')
        out = self._dispatch(tokens, expert_idx, weights).reshape(x.shape)

        self.last_gate_logits = logits.reshape(*lead_shape, self.num_experts)
        self.last_expert_indices = expert_idx.reshape(*lead_shape, expert_idx.size(1))
        out = self.dropout_layer(out)
        if not self.add_identity:
            return out
        return (x if identity is None else identity) + out

    def _route(self, logits: Tensor, lead_shape: torch.Size) -> Tuple[Tensor, Tensor]:
        """Choose experts and weights from (T, E) logits; returns (T, k') long and float."""
        if self.forced_experts is not None:
            return self._forced_route(logits, lead_shape)
        if self.training and self.gate_noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.gate_noise_std
        probs = logits.softmax(dim=-1)
        top_probs, top_idx = probs.topk(self.top_k, dim=-1)
        renormalise = self.top_k > 1 if self.normalize_weights is None else self.normalize_weights
        if renormalise:
            top_probs = top_probs / top_probs.sum(dim=-1, keepdim=True)
        return top_idx, top_probs

    def _forced_route(self, logits: Tensor, lead_shape: torch.Size) -> Tuple[Tensor, Tensor]:
        if self.forced_experts.is_floating_point():
            raise ValueError('forced experts must be an integer tensor')
        forced = self.forced_experts.to(device=logits.device, dtype=torch.long)
        if len(lead_shape) == 0 or forced.shape != lead_shape[:1]:
            raise ValueError(f'forced experts have shape {tuple(forced.shape)}, expected '
                             f'({lead_shape[0] if len(lead_shape) else "?"},): one expert '
                             f'per sample along the first dim of x (*{tuple(lead_shape)}, D)')
        if forced.numel() and (forced.min() < 0 or forced.max() >= self.num_experts):
            raise ValueError(f'forced experts must be in [0, {self.num_experts}), '
                             f'got {forced.tolist()}')
        per_token = forced.view(-1, *[1] * (len(lead_shape) - 1)).expand(lead_shape)
        return per_token.reshape(-1, 1), logits.new_ones(logits.size(0), 1)

    def _dispatch(self, tokens: Tensor, expert_idx: Tensor, weights: Tensor) -> Tensor:
        """Run each expert on its tokens and combine; records ``last_expert_counts`` and
        ``last_num_dropped``.

        Args:
            tokens: (T, D).
            expert_idx: (T, k) long.
            weights: (T, k) routing weights.

        Returns:
            (T, D) weighted sum of the expert outputs of each token (zero for a token whose
            assignments were all dropped).
        """
        num_tokens, k = expert_idx.shape
        num_assignments = num_tokens * k
        # Assignment a = rank * T + token (rank-major: all first choices, then all second
        # choices). A stable sort groups them by expert, first choices before second choices
        # and in token order within each: the priority a capacity keeps (GShard/tutel).
        flat_expert = expert_idx.t().reshape(-1)  # (k*T,)
        flat_weight = weights.t().reshape(-1)  # (k*T,)
        order = torch.argsort(flat_expert, stable=True)  # (k*T,) sorted slot -> assignment
        counts = torch.bincount(flat_expert, minlength=self.num_experts)  # (E,)
        self.last_expert_counts = counts
        # The only host sync: the slice sizes drive a Python loop over experts.
        count_list: List[int] = counts.tolist()

        if self.capacity_factor is None:
            kept_list = count_list
        else:
            capacity = math.ceil(self.capacity_factor * num_assignments / self.num_experts)
            kept_list = [min(count, capacity) for count in count_list]
            # Each expert's first `capacity` assignments, then all dropped ones at the end,
            # so `order` stays a permutation of the assignments.
            segments = order.split(count_list)
            order = torch.cat([seg[:kept] for seg, kept in zip(segments, kept_list)] +
                              [seg[kept:] for seg, kept in zip(segments, kept_list)])
        num_kept = sum(kept_list)
        self.last_num_dropped = num_assignments - num_kept
        if num_kept == 0:
            return tokens.new_zeros(tokens.shape)
        inverse = torch.empty_like(order).scatter_(  # assignment -> sorted slot
            0, order, torch.arange(num_assignments, device=order.device))

        assigned = tokens if k == 1 else tokens.repeat(k, 1)  # (k*T, D)
        expert_inputs = _PermuteRows.apply(assigned, order, inverse)[:num_kept].split(kept_list)
        # unbind, not indexing: its backward stacks the E gradients once instead of
        # materialising a zero (E, H, D) tensor per expert.
        params = zip(self.expert_w1.unbind(0), self.expert_b1.unbind(0),
                     self.expert_w2.unbind(0), self.expert_b2.unbind(0))
        outputs = [self._expert(inputs, *expert_params)
                   for inputs, expert_params in zip(expert_inputs, params) if inputs.size(0)]
        if num_kept < num_assignments:  # dropped assignments contribute nothing
            outputs.append(outputs[0].new_zeros(num_assignments - num_kept, self.embed_dims))
        sorted_out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # (k*T, D)
        out = _PermuteRows.apply(sorted_out, inverse, order) * flat_weight.unsqueeze(1)
        return out if k == 1 else out.view(k, num_tokens, self.embed_dims).sum(0)

    def _expert(self, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        """One expert, as mmcv FFN: (n, D) -> Linear, act, Dropout, Linear, Dropout -> (n, D)."""
        hidden = self.drop(self.activate(F.linear(x, w1, b1)))
        return self.drop(F.linear(hidden, w2, b2))

    def extra_repr(self) -> str:
        capacity = ('dropless' if self.capacity_factor is None else
                    f'capacity_factor={self.capacity_factor}')
        return (f'embed_dims={self.embed_dims}, feedforward_channels='
                f'{self.feedforward_channels}, num_experts={self.num_experts}, '
                f'top_k={self.top_k}, {capacity}, gate_noise_std={self.gate_noise_std}, '
                f'normalize_weights={self.normalize_weights}, add_identity={self.add_identity}')
