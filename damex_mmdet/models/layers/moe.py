"""Mixture-of-Experts feed-forward layer, a drop-in replacement for mmcv's ``FFN``.

DAMEX replaces some FFNs of DINO's transformer with a set of experts and a linear gate.
:class:`MoEFFN` keeps ``FFN``'s call convention (``forward(x, identity=None)``) and accepts
``FFN``'s constructor keywords, so a DINO ``ffn_cfg`` can be passed through unchanged
together with the MoE keywords.

Dispatch is dropless by default: every token reaches its chosen experts, each expert runs
once on the contiguous block of tokens routed to it, and no expert is padded to a common
capacity. A capacity (GShard/tutel style, batch-prioritised) is available as an option.
On an accelerator the experts run as one grouped GEMM (``torch._grouped_mm``, group
offsets on the device) where this torch supports it, so dropless dispatch of unpadded
tokens never reads anything back to the host; on CPU, and as the fallback, they run in a
Python loop over experts. Padding tokens (a batch of images of different sizes) are not
routed at all.
"""
import math
from contextlib import contextmanager
from functools import lru_cache
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer
from mmcv.cnn.bricks.drop import build_dropout
from mmcv.cnn.bricks.transformer import FFN
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


class _GroupedBias(torch.autograd.Function):
    """``rows += bias[row_expert]`` for rows sorted by expert, with a scatter-free backward.

    In place: ``rows`` is a fresh grouped-GEMM output that nothing else saved, and adding
    into it saves a pass over an (R, C) tensor (about 5% of a 10k-token forward on CPU).
    The bias gradient of expert e is the sum of the gradient rows of its group, computed as
    a grouped GEMM with a column of ones (deterministic, and no read-back of the group
    sizes); autograd's own backward of the gather would be a scatter-add. Shapes: rows
    (R, C), bias (E, C), row_expert (R,) long and sorted, offsets (E,) int32, the cumulative
    group sizes (``offsets[-1] == R``); output: ``rows``.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, bias: Tensor, row_expert: Tensor,
                offsets: Tensor) -> Tensor:
        ctx.save_for_backward(offsets)
        ctx.mark_dirty(rows)
        return rows.add_(bias.index_select(0, row_expert))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, Tensor, None, None]:
        offsets, = ctx.saved_tensors
        grad = grad.contiguous()
        # (R, w) ones seen as (w, R): w columns keep the 16-byte stride alignment the
        # grouped GEMM requires; all w rows of the (E, w, C) product are the same sums.
        width = max(1, 16 // grad.element_size())
        ones = grad.new_ones(grad.size(0), width).t()
        return grad, torch._grouped_mm(ones, grad, offs=offsets)[:, 0], None, None


@lru_cache(maxsize=None)
def _grouped_mm_runs(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch has a grouped GEMM kernel for ``dtype`` on ``device_type``.

    Probed once per (device type, dtype) with a tiny product: the kernels depend on the
    build and, on CUDA, on the GPU generation, which no version number tells.
    """
    if not hasattr(torch, '_grouped_mm'):
        return False
    device = torch.device(device_type)
    try:
        rows = torch.ones(8, 8, device=device, dtype=dtype)
        weight = torch.ones(2, 8, 8, device=device, dtype=dtype)
        offsets = torch.tensor([3, 8], device=device, dtype=torch.int32)
        out = torch._grouped_mm(rows, weight, offs=offsets)
        return bool((out == 8).all())
    except (RuntimeError, NotImplementedError):
        return False


class MoEFFN(nn.Module):
    """Top-k Mixture-of-Experts FFN with dropless (or capacity-limited) dispatch.

    Each expert is the two-layer MLP of mmcv's ``FFN``: Linear(D, H), activation, Dropout,
    Linear(H, D), Dropout. A bias-free linear gate scores the E experts per token; each token
    goes to its k best experts and their outputs are summed with routing weights.

    The gate (linear, softmax and top-k) always runs in at least fp32, also under autocast,
    so that fp16/bf16 training routes exactly as fp32 would; the experts follow autocast.

    Routing weights (``normalize_weights``):

    - ``None`` (auto): for k=1 the chosen expert's softmax probability (Switch Transformer,
      and the DAMEX reference), so the task loss also trains the gate; for k>1 the top-k
      probabilities renormalised to sum to 1.
    - ``True``: always renormalise (k=1 gives weight 1.0, so a MoE upcycled from a dense FFN
      reproduces it exactly).
    - ``False``: always the raw softmax probabilities.

    With ``gate_noise_std > 0`` Gaussian noise is added to the logits during training before
    experts are chosen and weighted; the clean logits are exposed for the routing losses.

    Shared expert (``shared_expert=True``, DeepSeekMoE style): a dense mmcv ``FFN`` of width
    Hs that every token uses, summed with the routed experts' output, so that what the whole
    mixture learns is shared while each routed expert specialises. With narrower routed
    experts (``expert_feedforward_channels`` He) the compute per token stays the dense FFN's
    when Hs + k * He = H (e.g. Hs = He = H / 2 for k=1).

    Upcycling from a dense FFN of width H (:meth:`upcycled_state`) is exact at step 0:

    - no shared expert (He = H): every expert is a copy of the dense FFN; exact when the
      routing weights of a token sum to 1 (renormalised) and no token is dropped;
    - shared expert with Hs + He = H: the dense FFN's hidden units are split, the first Hs
      (and the output bias) go to the shared expert, the other He to every routed expert;
      shared + routed is the dense FFN under the same condition on the weights;
    - shared expert with Hs = H: the shared expert is the dense FFN and the routed experts'
      output layers start at zero, so the output is the dense FFN's whatever the routing.

    Capacity (``capacity_factor``, as tutel, which the DAMEX reference uses): each expert
    takes at most ``C = k * max(1, floor(capacity_factor * ceil(N / E)))`` assignments from
    each group of N real tokens; the rest are dropped (they add nothing; with
    ``add_identity`` the token passes through). ``capacity_scope`` sets the group:
    ``'image'`` (default) counts each leading-dim sample of x (an image) on its own, as the
    reference does with one image per GPU; ``'batch'`` counts all tokens of the forward
    together. Which assignments an expert keeps is batch-prioritised routing (V-MoE; tutel's
    ``batch_prioritized_routing``, on in the reference): all first choices before any second
    choice, and within one choice rank the tokens with the highest top-1 gate probability
    first (ties in token order). A second choice is therefore kept only where the expert
    has room after every first choice routed to it, whatever their scores.

    Padding (:meth:`ignore_padding`): batched images are padded to a common length (the
    encoder's padded feature positions, DINO's empty denoising slots). A padding token is
    not routed: it runs no expert, takes no capacity, is not counted in
    ``last_expert_counts`` nor ``last_dropped_counts``, and N above counts only the real
    tokens of its group, so a token's output does not depend on what it is batched with
    (the reference runs one unpadded image per GPU). Its output is that of a token whose
    routed experts all dropped it: the shared expert's output if there is one, else zero
    (plus ``identity``). Dispatching with a padding mask reads the number of real
    assignments back to the host once (the loop reads the group sizes anyway).

    Args:
        embed_dims: D, the token width.
        feedforward_channels: H, the hidden width of the dense FFN this layer replaces;
            also the experts' width unless ``expert_feedforward_channels`` is given.
        num_experts: E.
        top_k: k, experts per token (1 <= k <= E).
        act_cfg: activation config of the experts (mmcv ``build_activation_layer``).
        ffn_drop: dropout probability after the activation and after the second linear.
        add_identity: add the residual ``identity`` (default ``x``) to the output, as ``FFN``.
        gate_noise_std: std of the training-time routing noise; 0 disables it.
        capacity_factor: None for dropless dispatch; otherwise the capacity factor above.
        capacity_scope: ``'image'`` or ``'batch'``, see above.
        normalize_weights: see above.
        shared_expert: add a dense FFN that every token uses (see above).
        shared_feedforward_channels: Hs, its hidden width (default H).
        expert_feedforward_channels: He, the hidden width of each routed expert (default H).
        expert_backend: ``'auto'`` runs the experts as one grouped GEMM on an accelerator
            where this torch has the kernel for its dtype (and D, He keep 16-byte row
            alignment), else as a loop over experts. On CPU ``'auto'`` is the loop: reading
            the group sizes costs nothing there, and the loop measured as fast or faster
            (benchmarks/bench_moe_layer.py). ``'grouped_mm'`` or ``'loop'`` force one.
        num_fcs: accepted for ``FFN`` compatibility; only 2 is supported.
        dropout_layer: ``FFN``'s dropout on the output branch (e.g. DropPath), built with
            mmcv ``build_dropout``; None or empty means identity.

    Attributes set by every forward (x of shape (*S, D), T = prod(S)):
        last_gate_logits: (*S, E) clean gate logits (fp32 or wider), still attached to the
            autograd graph.
        last_expert_indices: (*S, k') long, chosen experts (k' = 1 under forced routing:
            the one forced expert, also with ``top_k > 1``). Padding tokens get the gate's
            choice too, though it never runs.
        last_kept: (*S, k') bool, whether each choice reached its expert: False where the
            capacity dropped it and for padding tokens.
        last_expert_counts: (E,) long, assignments of real tokens per expert before any
            capacity drop; sums to (real tokens) * k'.
        last_dropped_counts: (E,) long, assignments of real tokens each expert dropped for
            the capacity (zeros when dropless).
        last_num_dropped: int, their sum (reading it waits for the device).
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
                 capacity_scope: str = 'image',
                 normalize_weights: Optional[bool] = None,
                 shared_expert: bool = False,
                 shared_feedforward_channels: Optional[int] = None,
                 expert_feedforward_channels: Optional[int] = None,
                 expert_backend: str = 'auto',
                 num_fcs: int = 2,
                 dropout_layer: Optional[dict] = None) -> None:
        super().__init__()
        expert_channels = expert_feedforward_channels or feedforward_channels
        shared_channels = shared_feedforward_channels or feedforward_channels
        if min(embed_dims, feedforward_channels, expert_channels, shared_channels) < 1:
            raise ValueError('embed_dims and the feedforward channels must be >= 1, got '
                             f'embed_dims={embed_dims}, feedforward_channels='
                             f'{feedforward_channels}, expert_feedforward_channels='
                             f'{expert_feedforward_channels}, shared_feedforward_channels='
                             f'{shared_feedforward_channels}')
        if shared_feedforward_channels is not None and not shared_expert:
            raise ValueError('shared_feedforward_channels is set but shared_expert=False: '
                             'set shared_expert=True or drop shared_feedforward_channels')
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
        if capacity_scope not in ('image', 'batch'):
            raise ValueError(f"capacity_scope must be 'image' or 'batch', "
                             f'got {capacity_scope!r}')
        if normalize_weights not in (None, True, False):
            raise ValueError(f'normalize_weights must be None, True or False, '
                             f'got {normalize_weights!r}')
        if expert_backend not in ('auto', 'grouped_mm', 'loop'):
            raise ValueError(f"expert_backend must be 'auto', 'grouped_mm' or 'loop', "
                             f'got {expert_backend!r}')

        self.embed_dims = embed_dims
        self.feedforward_channels = feedforward_channels
        self.expert_feedforward_channels = expert_channels
        self.num_experts = num_experts
        self.top_k = top_k
        self.add_identity = add_identity
        self.gate_noise_std = float(gate_noise_std)
        self.capacity_factor = capacity_factor
        self.capacity_scope = capacity_scope
        self.normalize_weights = normalize_weights
        self.expert_backend = expert_backend
        self.act_cfg = dict(act_cfg)

        self.gate = nn.Linear(embed_dims, num_experts, bias=False)
        # The experts are stacked into four parameters rather than E modules: every parameter
        # takes part in every step, so DDP never sees unused parameters when some expert
        # receives no token, and each expert is still a plain nn.Linear-shaped slice.
        self.expert_w1 = nn.Parameter(torch.empty(num_experts, expert_channels, embed_dims))
        self.expert_b1 = nn.Parameter(torch.empty(num_experts, expert_channels))
        self.expert_w2 = nn.Parameter(torch.empty(num_experts, embed_dims, expert_channels))
        self.expert_b2 = nn.Parameter(torch.empty(num_experts, embed_dims))
        self.activate = build_activation_layer(act_cfg)
        self.drop = nn.Dropout(ffn_drop)
        # Initialised as the detector initialises its dense FFNs (DINO: xavier).
        self.shared = FFN(embed_dims=embed_dims, feedforward_channels=shared_channels,
                          act_cfg=act_cfg, ffn_drop=ffn_drop,
                          add_identity=False) if shared_expert else None
        self.dropout_layer = build_dropout(dropout_layer) if dropout_layer else nn.Identity()

        # Oracle routing: (B,) long, one expert per leading-dim sample; see force_experts().
        self.forced_experts: Optional[Tensor] = None
        # (*S,) bool, True at the tokens not to route; see ignore_padding().
        self.padding_mask: Optional[Tensor] = None
        self.last_gate_logits: Optional[Tensor] = None
        self.last_expert_indices: Optional[Tensor] = None
        self.last_kept: Optional[Tensor] = None
        self.last_expert_counts: Optional[Tensor] = None
        self.last_dropped_counts: Optional[Tensor] = None
        self.reset_parameters()

    @property
    def renormalises_weights(self) -> bool:
        """Whether the chosen experts' probabilities are renormalised to sum to 1."""
        if self.normalize_weights is None:
            return self.top_k > 1
        return self.normalize_weights

    @property
    def last_num_dropped(self) -> int:
        """Assignments the capacity dropped in the last forward (0 when dropless)."""
        if self.last_dropped_counts is None:
            return 0
        return int(self.last_dropped_counts.sum())

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

        The shared expert, a plain ``FFN``, keeps the initialisation the detector gives it.
        """
        nn.init.normal_(self.gate.weight, std=0.02)
        for expert in range(self.num_experts):
            nn.init.xavier_uniform_(self.expert_w1[expert])
            nn.init.xavier_uniform_(self.expert_w2[expert])
        for bias, fan_in in ((self.expert_b1, self.embed_dims),
                             (self.expert_b2, self.expert_feedforward_channels)):
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(bias, -bound, bound)

    @property
    def upcycles_with_silent_experts(self) -> bool:
        """Whether upcycling makes the shared expert the dense FFN and starts the routed
        experts' output at zero (shared width = H), which is exact whatever the routing."""
        return (self.shared is not None and
                self.shared.feedforward_channels == self.feedforward_channels)

    @torch.no_grad()
    def upcycled_state(self, dense_state: Mapping[str, Tensor]) -> Dict[str, Tensor]:
        """This layer's state, without the gate, started from a dense mmcv ``FFN``.

        See the class docstring for the three cases and when each is exact.

        Args:
            dense_state: the FFN's state dict without prefix (see
                :func:`dense_ffn_to_moe_state`); its width must be ``feedforward_channels``.

        Returns:
            Expert (and shared expert) tensors keyed as in ``self.state_dict()``.
        """
        dense = {name: value[0] for name, value in
                 dense_ffn_to_moe_state(dense_state, num_experts=1).items()}
        hidden, dims = dense['expert_w1'].shape
        if (hidden, dims) != (self.feedforward_channels, self.embed_dims):
            raise ValueError(f'the dense FFN has width {hidden} and {dims} dims; this MoEFFN '
                             f'replaces one of width {self.feedforward_channels} and '
                             f'{self.embed_dims} dims (feedforward_channels, embed_dims)')

        def every_expert(tensor: Tensor) -> Tensor:
            return tensor.unsqueeze(0).expand(self.num_experts, *tensor.shape).clone()

        expert_channels = self.expert_feedforward_channels
        if self.shared is None:
            if expert_channels != hidden:
                raise ValueError(f'routed experts of width {expert_channels} cannot copy a '
                                 f'dense FFN of width {hidden}: without a shared expert, '
                                 'expert_feedforward_channels must be feedforward_channels')
            return {name: every_expert(value) for name, value in dense.items()}
        shared_channels = self.shared.feedforward_channels
        if shared_channels == hidden:
            shared = dense
            routed = dict(expert_w1=self.expert_w1.clone(), expert_b1=self.expert_b1.clone(),
                          expert_w2=torch.zeros_like(self.expert_w2),
                          expert_b2=torch.zeros_like(self.expert_b2))
        elif shared_channels + expert_channels == hidden:
            w1, b1, w2 = dense['expert_w1'], dense['expert_b1'], dense['expert_w2']
            shared = dict(expert_w1=w1[:shared_channels], expert_b1=b1[:shared_channels],
                          expert_w2=w2[:, :shared_channels], expert_b2=dense['expert_b2'])
            routed = dict(expert_w1=every_expert(w1[shared_channels:]),
                          expert_b1=every_expert(b1[shared_channels:]),
                          expert_w2=every_expert(w2[:, shared_channels:]),
                          expert_b2=torch.zeros_like(self.expert_b2))
        else:
            raise ValueError(f'a shared expert of width {shared_channels} and routed experts '
                             f'of width {expert_channels} cannot reproduce a dense FFN of '
                             f'width {hidden}: use shared_feedforward_channels={hidden}, or '
                             'shared + expert widths that add up to it')
        state = {f'shared.{DENSE_FFN_KEYS[name]}': value.clone().contiguous()
                 for name, value in shared.items()}
        state.update(routed)
        return state

    @torch.no_grad()
    def upcycle_from_dense(self, state: Mapping[str, Tensor]) -> None:
        """Start the experts from a dense mmcv ``FFN`` (the gate is kept).

        Args:
            state: the FFN's state dict without prefix (see :meth:`upcycled_state`).
        """
        self.load_state_dict(dict(self.upcycled_state(state), **{'gate.weight': self.gate.weight}))

    @contextmanager
    def force_experts(self, experts: Tensor) -> Iterator['MoEFFN']:
        """Route every token of leading-dim sample b to ``experts[b]`` inside the block.

        Each token uses that one expert, also with ``top_k > 1`` (k' = 1), weighted as gate
        routing would weight it (see ``normalize_weights``): where a top-2 gate's first
        choice is the forced expert, the output still differs by the second expert's share.

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

    @contextmanager
    def ignore_padding(self, padding_mask: Optional[Tensor]) -> Iterator['MoEFFN']:
        """Leave the padding tokens unrouted in the forwards inside the block (see the class
        docstring, Padding).

        Args:
            padding_mask: (*S,) bool (or 0/1 integer) tensor, x's leading shape, True at the
                padding tokens, as mmdet's ``key_padding_mask``; None routes every token.
        """
        if padding_mask is not None and padding_mask.is_floating_point():
            raise ValueError(f'the padding mask must be bool (True at padding tokens), got '
                             f'{padding_mask.dtype}')
        previous = self.padding_mask
        self.padding_mask = None if padding_mask is None else padding_mask.bool()
        try:
            yield self
        finally:
            self.padding_mask = previous

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
        real = self._real_tokens(lead_shape, x.device)  # (T,) bool or None
        logits = self._gate_logits(tokens)  # (T, E)
        expert_idx, weights, priority = self._route(logits, lead_shape)  # (T, k'), (T, k'), (T,)
        num_samples = lead_shape[0] if len(lead_shape) > 1 else 1
        out = self._dispatch(tokens, expert_idx, weights.to(tokens.dtype), priority,
                             num_samples, real)
        if self.shared is not None:
            out = out + self.shared(tokens)
        out = out.reshape(x.shape)

        self.last_gate_logits = logits.reshape(*lead_shape, self.num_experts)
        self.last_expert_indices = expert_idx.reshape(*lead_shape, expert_idx.size(1))
        self.last_kept = self.last_kept.reshape(*lead_shape, expert_idx.size(1))
        out = self.dropout_layer(out)
        if not self.add_identity:
            return out
        return (x if identity is None else identity) + out

    def _real_tokens(self, lead_shape: torch.Size,
                     device: torch.device) -> Optional[Tensor]:
        """(T,) bool, False at the padding tokens; None where no padding mask is set."""
        if self.padding_mask is None:
            return None
        if self.padding_mask.shape != lead_shape:
            raise ValueError(f'the padding mask has shape {tuple(self.padding_mask.shape)}, '
                             f'expected {tuple(lead_shape)}: one entry per token of x '
                             f'(*{tuple(lead_shape)}, D)')
        return ~self.padding_mask.reshape(-1).to(device)

    def _gate_logits(self, tokens: Tensor) -> Tensor:
        """(T, D) -> (T, E) logits in fp32 (or wider), with autocast off: under fp16/bf16
        autocast the routing decisions stay those of fp32."""
        dtype = torch.promote_types(
            torch.promote_types(tokens.dtype, self.gate.weight.dtype), torch.float32)
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            return F.linear(tokens.to(dtype), self.gate.weight.to(dtype))

    def _route(self, logits: Tensor, lead_shape: torch.Size) -> Tuple[Tensor, Tensor, Tensor]:
        """Choose experts from (T, E) logits.

        Returns:
            expert indices (T, k') long, routing weights (T, k') and each token's capacity
            priority (T,), its top-1 probability (the forced expert's under forced routing).
        """
        if self.training and self.gate_noise_std > 0:
            logits = logits + torch.randn_like(logits) * self.gate_noise_std
        probs = logits.softmax(dim=-1)
        if self.forced_experts is not None:
            forced = self._forced_indices(lead_shape, logits.device)  # (T, 1)
            forced_probs = probs.gather(1, forced)
            # The weight gate routing would give this expert: renormalising a single chosen
            # probability gives 1.0, otherwise it is the probability itself.
            weights = torch.ones_like(forced_probs) if self.renormalises_weights else forced_probs
            return forced, weights, forced_probs[:, 0]
        top_probs, top_idx = probs.topk(self.top_k, dim=-1)
        priority = top_probs[:, 0]
        if self.renormalises_weights:
            top_probs = top_probs / top_probs.sum(dim=-1, keepdim=True)
        return top_idx, top_probs, priority

    def _forced_indices(self, lead_shape: torch.Size, device: torch.device) -> Tensor:
        """The forced expert of every token, (T, 1) long."""
        if self.forced_experts.is_floating_point():
            raise ValueError('forced experts must be an integer tensor')
        forced = self.forced_experts.to(device=device, dtype=torch.long)
        if len(lead_shape) == 0 or forced.shape != lead_shape[:1]:
            raise ValueError(f'forced experts have shape {tuple(forced.shape)}, expected '
                             f'({lead_shape[0] if len(lead_shape) else "?"},): one expert '
                             f'per sample along the first dim of x (*{tuple(lead_shape)}, D)')
        if forced.numel() and (forced.min() < 0 or forced.max() >= self.num_experts):
            raise ValueError(f'forced experts must be in [0, {self.num_experts}), '
                             f'got {forced.tolist()}')
        per_token = forced.view(-1, *[1] * (len(lead_shape) - 1)).expand(lead_shape)
        return per_token.reshape(-1, 1)

    def _dispatch(self, tokens: Tensor, expert_idx: Tensor, weights: Tensor,
                  priority: Tensor, num_samples: int, real: Optional[Tensor]) -> Tensor:
        """Run each expert on its tokens and combine; records ``last_expert_counts``,
        ``last_dropped_counts`` and ``last_kept`` (flat, (T, k)).

        Args:
            tokens: (T, D).
            expert_idx: (T, k) long.
            weights: (T, k) routing weights.
            priority: (T,) capacity priority of each token (higher is kept first).
            num_samples: B, the leading-dim samples the T tokens are made of (in order).
            real: (T,) bool, False at the padding tokens, which are not routed; None when
                every token is real.

        Returns:
            (T, D) weighted sum of the expert outputs of each token (zero for a padding
            token and for a token whose assignments were all dropped).
        """
        num_tokens, k = expert_idx.shape
        num_assignments = num_tokens * k
        # Assignment a = rank * T + token (rank-major: all first choices, then all second
        # choices).
        flat_expert = expert_idx.t().reshape(-1)  # (k*T,)
        flat_weight = weights.t().reshape(-1)  # (k*T,)
        flat_real = None if real is None else real.repeat(k)  # (k*T,)
        experts = torch.arange(self.num_experts, device=tokens.device)
        if self.capacity_factor is None:
            # Padding assignments sort after every expert's block, as if to expert E.
            sort_key = (flat_expert if flat_real is None else
                        flat_expert.masked_fill(~flat_real, self.num_experts))
            order = torch.argsort(sort_key, stable=True)  # sorted slot -> assignment
            sorted_key = sort_key.index_select(0, order)
            # Cumulative counts, found in the sorted experts: no scatter, no host sync.
            ends = torch.searchsorted(sorted_key, experts, right=True)  # (E,)
            self.last_expert_counts = torch.diff(ends, prepend=ends.new_zeros(1))
            self.last_dropped_counts = torch.zeros_like(self.last_expert_counts)
            # With padding, the one host sync: the number of rows the experts run on.
            num_kept = num_assignments if flat_real is None else int(ends[-1])
        else:
            order, ends = self._capacity_order(flat_expert, priority, k, num_samples,
                                               flat_real)
            # The one host sync of the capacity path: the number of rows the experts run on.
            num_kept = int(ends[-1]) if num_assignments else 0
        kept = torch.zeros(num_assignments, dtype=torch.bool, device=tokens.device)
        self.last_kept = kept.index_fill_(0, order[:num_kept], True).view(k, num_tokens).t()
        if num_kept == 0:
            # No row to run: a zero that still depends on the gate and every expert
            # parameter, so that DDP with find_unused_parameters=False finds them all used.
            anchors = [flat_weight.sum()] + [param.view(-1)[0] for param in (
                self.expert_w1, self.expert_b1, self.expert_w2, self.expert_b2)]
            return tokens.new_zeros(tokens.shape) + torch.stack(anchors).sum() * 0
        sorted_expert = flat_expert.index_select(0, order[:num_kept])
        inverse = torch.empty_like(order).scatter_(  # assignment -> sorted slot
            0, order, torch.arange(num_assignments, device=order.device))

        assigned = tokens if k == 1 else tokens.repeat(k, 1)  # (k*T, D)
        expert_inputs = _PermuteRows.apply(assigned, order, inverse)  # (k*T, D)
        if num_kept < num_assignments:
            expert_inputs = expert_inputs[:num_kept]
        if self._uses_grouped_mm(tokens):
            sorted_out = self._experts_grouped(expert_inputs, sorted_expert, ends)
        else:
            sorted_out = self._experts_loop(expert_inputs, ends)
        if num_kept < num_assignments:  # dropped and padding assignments contribute nothing
            sorted_out = torch.cat([sorted_out, sorted_out.new_zeros(
                num_assignments - num_kept, self.embed_dims)])
        out = _PermuteRows.apply(sorted_out, inverse, order) * flat_weight.unsqueeze(1)
        return out if k == 1 else out.view(k, num_tokens, self.embed_dims).sum(0)

    def _capacity_order(self, flat_expert: Tensor, priority: Tensor, k: int,
                        num_samples: int, flat_real: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Batch-prioritised capacity; records ``last_expert_counts``, ``last_dropped_counts``.

        Args:
            flat_expert: (k*T,) expert of each rank-major assignment.
            priority: (T,) top-1 probability of each token.
            k: choices per token.
            num_samples: B; with ``capacity_scope='image'`` each sample's T / B tokens form
                a group with its own capacity.
            flat_real: (k*T,) bool, False at the assignments of padding tokens, which take
                no capacity and are neither kept nor counted; None when every token is real.

        Returns:
            order (k*T,) long, sorted slot -> assignment: the kept assignments grouped by
            expert in priority order, then every dropped or padding one; and ends (E,)
            long, the cumulative number of kept assignments up to each expert.
        """
        num_assignments = flat_expert.numel()
        num_tokens = num_assignments // k
        device = flat_expert.device
        groups_per_expert = num_samples if self.capacity_scope == 'image' else 1
        if num_tokens % groups_per_expert:
            raise ValueError(f'{num_tokens} tokens do not split into {num_samples} samples '
                             'for capacity_scope="image"')
        group_tokens = num_tokens // groups_per_expert
        if flat_real is None:
            real_per_group = torch.full((groups_per_expert, ), group_tokens, device=device)
        else:
            real_per_group = flat_real[:num_tokens].view(groups_per_expert, -1).sum(1)
        # tutel's k * int(capacity_factor * ceil(N / E)), in float64 as Python computes it,
        # but at least one slot per expert and choice: tutel's own formula gives 0 for few
        # tokens and a small factor, which drops every assignment (DeepSpeed's gate has a
        # min_capacity for the same reason).
        per_expert = torch.div(real_per_group + self.num_experts - 1, self.num_experts,
                               rounding_mode='floor')
        capacity = k * torch.floor(per_expert.double() * self.capacity_factor).long().clamp(
            min=1)  # (G,)
        # Candidates in keeping order: rank-major, highest priority first within a rank.
        by_priority = torch.argsort(priority, descending=True, stable=True)  # (T,)
        candidates = (torch.arange(k, device=device)[:, None] * num_tokens +
                      by_priority[None]).reshape(-1)  # (k*T,)
        # Group = (expert, sample): expert-major, so each expert's kept rows stay contiguous;
        # padding goes to one last group without capacity.
        num_groups = self.num_experts * groups_per_expert
        sample = candidates % num_tokens // group_tokens
        group = flat_expert.index_select(0, candidates) * groups_per_expert + sample
        if flat_real is not None:
            group = group.masked_fill(~flat_real.index_select(0, candidates), num_groups)
        group_capacity = torch.cat([capacity.repeat(self.num_experts), capacity.new_zeros(1)])
        by_group = torch.argsort(group, stable=True)
        order = candidates.index_select(0, by_group)
        sorted_group = group.index_select(0, by_group)
        all_groups = torch.arange(num_groups + 1, device=device)
        starts = torch.searchsorted(sorted_group, all_groups)
        group_counts = torch.searchsorted(sorted_group, all_groups, right=True) - starts
        position = torch.arange(num_assignments, device=device) - starts[sorted_group]
        # Kept ones first, each expert's block still contiguous (stable), then the rest.
        order = order.index_select(0, torch.argsort(
            (position >= group_capacity[sorted_group]).to(torch.uint8), stable=True))
        counts = group_counts[:num_groups].view(self.num_experts, groups_per_expert)
        kept = torch.minimum(counts, capacity)
        self.last_expert_counts = counts.sum(1)
        self.last_dropped_counts = (counts - kept).sum(1)
        return order, kept.sum(1).cumsum(0)

    def _uses_grouped_mm(self, tokens: Tensor) -> bool:
        """Whether the experts run as a grouped GEMM for these tokens (see expert_backend)."""
        if self.expert_backend == 'loop' or (self.expert_backend == 'auto' and
                                             tokens.device.type == 'cpu'):
            return False
        dtype = self._expert_dtype(tokens)
        # The grouped GEMM needs 16-byte aligned rows in every operand.
        aligned = all(size * dtype.itemsize % 16 == 0
                      for size in (self.embed_dims, self.expert_feedforward_channels))
        supported = aligned and _grouped_mm_runs(tokens.device.type, dtype)
        if self.expert_backend == 'grouped_mm' and not supported:
            raise RuntimeError(
                f"expert_backend='grouped_mm' but this torch has no grouped GEMM for {dtype} "
                f'on {tokens.device.type} with D={self.embed_dims}, '
                f'H={self.expert_feedforward_channels} (rows must be multiples of 16 bytes); use '
                "expert_backend='auto'")
        return supported

    @staticmethod
    def _expert_dtype(tokens: Tensor) -> torch.dtype:
        """The dtype the expert matmuls run in: autocast's where it is on."""
        device_type = tokens.device.type
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return tokens.dtype

    def _experts_grouped(self, inputs: Tensor, row_expert: Tensor, ends: Tensor) -> Tensor:
        """All experts as two grouped GEMMs: (R, D) rows sorted by expert -> (R, D).

        ``row_expert`` (R,) is each row's expert, ``ends`` (E,) the cumulative group sizes,
        both on the device: nothing is read back to the host.
        """
        dtype = self._expert_dtype(inputs)
        offsets = ends.to(torch.int32)
        # Weights are (E, out, in); the grouped GEMM takes (E, in, out): a transposed view.
        hidden = torch._grouped_mm(inputs.to(dtype), self.expert_w1.to(dtype).transpose(1, 2),
                                   offs=offsets)
        hidden = _GroupedBias.apply(hidden, self.expert_b1.to(dtype), row_expert, offsets)
        hidden = self.drop(self.activate(hidden))
        out = torch._grouped_mm(hidden, self.expert_w2.to(dtype).transpose(1, 2), offs=offsets)
        return self.drop(_GroupedBias.apply(out, self.expert_b2.to(dtype), row_expert, offsets))

    def _experts_loop(self, inputs: Tensor, ends: Tensor) -> Tensor:
        """Each expert on its block of (R, D) rows sorted by expert -> (R, D).

        Reads the group sizes back to the host to drive the loop.
        """
        counts: List[int] = torch.diff(ends, prepend=ends.new_zeros(1)).tolist()
        # unbind, not indexing: its backward stacks the E gradients once instead of
        # materialising a zero (E, H, D) tensor per expert.
        params = zip(self.expert_w1.unbind(0), self.expert_b1.unbind(0),
                     self.expert_w2.unbind(0), self.expert_b2.unbind(0))
        outputs = [self._expert(rows, *expert_params)
                   for rows, expert_params in zip(inputs.split(counts), params)
                   if rows.size(0)]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _expert(self, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        """One expert, as mmcv FFN: (n, D) -> Linear, act, Dropout, Linear, Dropout -> (n, D)."""
        hidden = self.drop(self.activate(F.linear(x, w1, b1)))
        return self.drop(F.linear(hidden, w2, b2))

    def extra_repr(self) -> str:
        capacity = ('dropless' if self.capacity_factor is None else
                    f'capacity_factor={self.capacity_factor} per {self.capacity_scope}')
        shared = ('' if self.shared is None else
                  f'shared_feedforward_channels={self.shared.feedforward_channels}, ')
        return (f'embed_dims={self.embed_dims}, feedforward_channels='
                f'{self.feedforward_channels}, expert_feedforward_channels='
                f'{self.expert_feedforward_channels}, {shared}num_experts={self.num_experts}, '
                f'top_k={self.top_k}, {capacity}, gate_noise_std={self.gate_noise_std}, '
                f'normalize_weights={self.normalize_weights}, add_identity={self.add_identity}')
