"""MoEFFN against a naive per-token reference, mmcv's dense FFN, and its documented routing."""
import math

import pytest
import torch
from mmcv.cnn.bricks.transformer import FFN

from damex_mmdet.models.layers.moe import DENSE_FFN_KEYS, MoEFFN, dense_ffn_to_moe_state
from damex_mmdet.models.losses import DAMEXLoss

D, H = 8, 16


def make_moe(**kwargs):
    torch.manual_seed(0)
    moe = MoEFFN(embed_dims=D, feedforward_channels=H, **kwargs).double()
    # A wider gate than the default init so that top-k choices are far from ties.
    torch.nn.init.normal_(moe.gate.weight, std=1.)
    return moe


def expert_ref(moe, e, token):
    """Expert e on one (D,) token, written with matmuls (not F.linear)."""
    hidden = torch.relu(moe.expert_w1[e] @ token + moe.expert_b1[e])
    return moe.expert_w2[e] @ hidden + moe.expert_b2[e]


def naive_moe(moe, x, renormalise, max_rank=None, kept=None):
    """Per-token loop: x + sum over the chosen experts of weight * expert(token).

    ``kept`` (T, k) bool, if given, leaves out the assignments a capacity dropped."""
    outputs = []
    for t, token in enumerate(x.reshape(-1, D)):
        probs = torch.softmax(moe.gate.weight @ token, dim=0)
        top_p, top_i = probs.topk(moe.top_k)
        weights = top_p / top_p.sum() if renormalise else top_p
        out = token
        for rank in range(moe.top_k if max_rank is None else max_rank):
            if kept is None or kept[t, rank]:
                out = out + weights[rank] * expert_ref(moe, int(top_i[rank]), token)
        outputs.append(out)
    return torch.stack(outputs).reshape(x.shape)


def params_of(moe):
    return [moe.gate.weight, moe.expert_w1, moe.expert_b1, moe.expert_w2, moe.expert_b2]


@pytest.mark.parametrize('top_k', [1, 2])
@pytest.mark.parametrize('normalize_weights', [None, True, False])
def test_matches_naive_reference_forward_and_backward(top_k, normalize_weights):
    moe = make_moe(num_experts=4, top_k=top_k, normalize_weights=normalize_weights)
    x = torch.randn(3, 5, D, dtype=torch.double, requires_grad=True)
    probe = torch.randn(3, 5, D, dtype=torch.double)
    renormalise = top_k > 1 if normalize_weights is None else normalize_weights

    out = moe(x)
    ref = naive_moe(moe, x, renormalise)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)

    inputs = [x] + params_of(moe)
    grads = torch.autograd.grad((out * probe).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * probe).sum(), inputs)
    for name, grad, ref_grad in zip(['x', 'gate', 'w1', 'b1', 'w2', 'b2'], grads, ref_grads):
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12, msg=name)


def test_identity_argument_and_no_identity():
    moe = make_moe(num_experts=3)
    x = torch.randn(2, 4, D, dtype=torch.double)
    identity = torch.randn(2, 4, D, dtype=torch.double)
    branch = naive_moe(moe, x, renormalise=False) - x
    torch.testing.assert_close(moe(x, identity), identity + branch)
    moe.add_identity = False
    torch.testing.assert_close(moe(x), branch)


@pytest.mark.parametrize('num_experts', [1, 4])
def test_upcycled_equals_dense_ffn(num_experts):
    torch.manual_seed(1)
    dense = FFN(embed_dims=D, feedforward_channels=H).double()
    assert set(DENSE_FFN_KEYS.values()) == set(dense.state_dict())
    moe = MoEFFN(embed_dims=D, feedforward_channels=H, num_experts=num_experts,
                 normalize_weights=True).double()
    moe.upcycle_from_dense(dense.state_dict())

    x = torch.randn(2, 6, D, dtype=torch.double, requires_grad=True)
    x_dense = x.detach().clone().requires_grad_()
    probe = torch.randn(2, 6, D, dtype=torch.double)
    out, out_dense = moe(x), dense(x_dense)
    torch.testing.assert_close(out, out_dense, rtol=0, atol=1e-12)

    (out * probe).sum().backward()
    (out_dense * probe).sum().backward()
    torch.testing.assert_close(x.grad, x_dense.grad, rtol=0, atol=1e-12)
    # Expert grads summed over experts = the dense grads (each token used one copy).
    for name, key in DENSE_FFN_KEYS.items():
        dense_grad = dense.get_parameter(key).grad
        torch.testing.assert_close(getattr(moe, name).grad.sum(0), dense_grad,
                                   rtol=0, atol=1e-12, msg=name)


def test_dense_ffn_to_moe_state_and_upcycle_errors():
    dense_state = FFN(embed_dims=D, feedforward_channels=H).state_dict()
    state = dense_ffn_to_moe_state(dense_state, num_experts=3)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        'expert_w1': (3, H, D), 'expert_b1': (3, H), 'expert_w2': (3, D, H), 'expert_b2': (3, D)}
    torch.testing.assert_close(state['expert_w2'][2], dense_state['layers.1.weight'])

    moe = MoEFFN(embed_dims=D, feedforward_channels=H, num_experts=3)
    with pytest.raises(KeyError, match='layers.1.bias'):
        moe.upcycle_from_dense({k: v for k, v in dense_state.items() if k != 'layers.1.bias'})
    bad = dict(dense_state, **{'layers.1.bias': torch.zeros(D + 1)})
    with pytest.raises(ValueError, match='inconsistent dense FFN shapes'):
        moe.upcycle_from_dense(bad)
    wider = FFN(embed_dims=D, feedforward_channels=2 * H).state_dict()
    with pytest.raises(ValueError, match='dense FFN has width 32'):
        moe.upcycle_from_dense(wider)


def routed_tokens(signs):
    """Tokens whose first feature is +1 or -1 (the rest random), one per sign."""
    x = torch.randn(1, len(signs), D, dtype=torch.double)
    x[0, :, 0] = torch.tensor(signs, dtype=torch.double)
    return x


def test_capacity_drops_exactly_the_overflow():
    # Gate: feature 0 = +1 -> expert 0, -1 -> expert 1; expert 2 gets nothing.
    moe = make_moe(num_experts=3, capacity_factor=1.0)
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[0, 0], moe.gate.weight[1, 0] = 20., -20.
    signs = [1, -1, 1, 1, 1, -1, 1, 1, 1, 1, 1, 1]  # 10 tokens to expert 0, 2 to expert 1
    x = routed_tokens(signs).requires_grad_()
    out = moe(x)
    # capacity = ceil(1.0 * 12 tokens * 1 / 3 experts) = 4
    to_expert0 = [t for t, s in enumerate(signs) if s == 1]
    processed = to_expert0[:4] + [t for t, s in enumerate(signs) if s == -1]
    dropped = to_expert0[4:]
    assert len(dropped) == 6
    assert torch.equal(out[0, dropped], x[0, dropped])
    is_processed = torch.zeros(1, 12, 1, dtype=torch.bool)
    is_processed[0, processed] = True
    ref = torch.where(is_processed, naive_moe(moe, x, renormalise=False), x)
    torch.testing.assert_close(out, ref)
    inputs = [x] + params_of(moe)
    for grad, ref_grad in zip(torch.autograd.grad(out.pow(2).sum(), inputs),
                              torch.autograd.grad(ref.pow(2).sum(), inputs)):
        torch.testing.assert_close(grad, ref_grad)
    assert moe.last_expert_counts.tolist() == [10, 2, 0]
    assert moe.last_num_dropped == 6


def test_capacity_keeps_first_choices_then_the_highest_priority_second_choices():
    moe = make_moe(num_experts=2, top_k=2, capacity_factor=2 / 3)
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[0, 0], moe.gate.weight[1, 0] = 1., -1.
    # Tokens 0-2 prefer expert 1, 3-5 expert 0, more surely the larger |feature 0|;
    # capacity = 2 * int(2/3 * ceil(6 / 2)) = 4: each expert keeps its three first choices
    # and one second choice, that of the token with the highest top-1 probability (2 and 5),
    # although in token order the second choices of tokens 0 and 3 would come first.
    x = routed_tokens([-1, -2, -3, 1, 2, 3]).requires_grad_()
    out = moe(x)
    kept = torch.tensor([[True, False]] * 6)
    kept[2, 1] = kept[5, 1] = True
    ref = naive_moe(moe, x, renormalise=True, kept=kept)
    torch.testing.assert_close(out, ref)
    inputs = [x] + params_of(moe)
    for grad, ref_grad in zip(torch.autograd.grad(out.pow(2).sum(), inputs),
                              torch.autograd.grad(ref.pow(2).sum(), inputs)):
        torch.testing.assert_close(grad, ref_grad)
    assert moe.last_num_dropped == 4
    assert moe.last_dropped_counts.tolist() == [2, 2]


def test_dropless_by_default():
    moe = make_moe(num_experts=3)
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[0, 0] = 20.
    x = routed_tokens([1] * 12)
    torch.testing.assert_close(moe(x), naive_moe(moe, x, renormalise=False))
    assert moe.last_num_dropped == 0
    assert moe.last_expert_counts.tolist() == [12, 0, 0]


def test_gradients_reach_the_gate():
    moe = make_moe(num_experts=4)
    x = torch.randn(2, 5, D, dtype=torch.double)
    moe(x).sum().backward()
    assert moe.gate.weight.grad.abs().sum() > 0  # k=1 output scaled by its probability

    moe.gate.weight.grad = None
    moe(x)
    target = torch.tensor([[1] * 5, [3] * 5])
    DAMEXLoss()([moe.last_gate_logits], target).backward()
    assert moe.gate.weight.grad.abs().sum() > 0


def test_forced_experts_route_each_sample_to_its_expert():
    moe = make_moe(num_experts=3, top_k=2)
    x = torch.randn(3, 4, D, dtype=torch.double)
    forced = torch.tensor([2, 0, 2])
    with moe.force_experts(forced):
        out = moe(x)
    assert moe.forced_experts is None
    for b, e in enumerate(forced.tolist()):
        for n in range(4):
            torch.testing.assert_close(out[b, n], x[b, n] + expert_ref(moe, e, x[b, n]))
    assert moe.last_expert_indices.shape == (3, 4, 1)
    assert torch.equal(moe.last_expert_indices[..., 0], forced[:, None].expand(3, 4))
    assert moe.last_expert_counts.tolist() == [4, 0, 8]
    torch.testing.assert_close(moe.last_gate_logits, x @ moe.gate.weight.t())

    with pytest.raises(ValueError, match='expected \\(3,\\)'):
        with moe.force_experts(torch.tensor([0, 1])):
            moe(x)
    with pytest.raises(ValueError, match='in \\[0, 3\\)'):
        with moe.force_experts(torch.tensor([0, 1, 3])):
            moe(x)


@pytest.mark.parametrize('top_k,capacity_factor', [(1, None), (2, None), (2, 0.5), (1, 1.)])
def test_exposed_attributes(top_k, capacity_factor):
    moe = make_moe(num_experts=4, top_k=top_k, capacity_factor=capacity_factor)
    x = torch.randn(2, 7, D, dtype=torch.double, requires_grad=True)
    moe(x)
    assert moe.last_gate_logits.shape == (2, 7, 4)
    assert moe.last_gate_logits.requires_grad
    assert moe.last_expert_indices.shape == (2, 7, top_k)
    assert moe.last_expert_indices.dtype == torch.long
    counts = moe.last_expert_counts
    assert counts.shape == (4, ) and counts.dtype == torch.long
    assert int(counts.sum()) == 2 * 7 * top_k
    assert torch.equal(counts, torch.bincount(moe.last_expert_indices.flatten(), minlength=4))
    if capacity_factor is None:
        assert moe.last_num_dropped == 0
        assert moe.last_dropped_counts.tolist() == [0] * 4
    else:  # per image (default scope): tutel's k * int(factor * ceil(N / E)), N = 7
        capacity = top_k * int(capacity_factor * math.ceil(7 / 4))
        per_image = torch.stack([torch.bincount(indices.flatten(), minlength=4)
                                 for indices in moe.last_expert_indices])
        dropped = (per_image - capacity).clamp(min=0).sum(0)
        assert moe.last_dropped_counts.tolist() == dropped.tolist()
        assert moe.last_num_dropped == int(dropped.sum())


def test_gate_noise_only_in_training_and_logits_stay_clean():
    moe = make_moe(num_experts=4, gate_noise_std=5.)
    x = torch.randn(4, 8, D, dtype=torch.double)
    clean = x @ moe.gate.weight.t()
    torch.manual_seed(0)
    moe.train()
    moe(x)
    torch.testing.assert_close(moe.last_gate_logits, clean)
    assert not torch.equal(moe.last_expert_indices[..., 0], clean.argmax(-1))
    moe.eval()
    torch.testing.assert_close(moe(x), naive_moe(moe, x, renormalise=False))


def test_empty_input():
    moe = make_moe(num_experts=2)
    x = torch.randn(0, 3, D, dtype=torch.double)
    assert moe(x).shape == (0, 3, D)
    assert moe.last_expert_counts.tolist() == [0, 0]


def test_reset_parameters_initialises_each_expert_matrix():
    moe = MoEFFN(embed_dims=D, feedforward_channels=H, num_experts=4)
    # What DINO.init_weights does to every >1-dim parameter: xavier on the 3-D tensor,
    # whose bound sqrt(6 / (H*D + E*D)) is far below a 2-D expert matrix's.
    torch.nn.init.xavier_uniform_(moe.expert_w1)
    moe.reset_parameters()
    bound_2d = math.sqrt(6 / (H + D))
    bound_3d = math.sqrt(6 / (H * D + 4 * D))
    for expert_w1 in moe.expert_w1:
        assert bound_3d < expert_w1.abs().max() <= bound_2d
    assert moe.expert_b2.abs().max() <= 1 / math.sqrt(H)


def test_ffn_kwargs_and_validation():
    ffn_cfg = dict(embed_dims=D, feedforward_channels=H, num_fcs=2, ffn_drop=0.1,
                   act_cfg=dict(type='GELU'), dropout_layer=dict(type='DropPath', drop_prob=0.2))
    moe = MoEFFN(num_experts=2, **ffn_cfg)
    assert type(moe.dropout_layer).__name__ == 'DropPath'
    assert 'num_experts=2, top_k=1, dropless' in repr(moe)
    assert 'capacity_factor=1.25' in repr(MoEFFN(embed_dims=D, capacity_factor=1.25))
    for bad, match in [(dict(num_fcs=3), 'num_fcs'), (dict(num_experts=0), 'num_experts'),
                       (dict(num_experts=2, top_k=3), 'top_k'), (dict(top_k=0), 'top_k'),
                       (dict(capacity_factor=0.), 'capacity_factor'),
                       (dict(gate_noise_std=-1.), 'gate_noise_std'),
                       (dict(normalize_weights='yes'), 'normalize_weights')]:
        with pytest.raises(ValueError, match=match):
            MoEFFN(embed_dims=D, feedforward_channels=H, **bad)


@pytest.mark.parametrize('top_k,capacity_factor', [(1, None), (2, 0.75)])
def test_gradcheck(top_k, capacity_factor):
    # Routing is piecewise constant, so finite differences see the dispatch's own gradients,
    # including the custom permutation backward, twice differentiated.
    moe = make_moe(num_experts=3, top_k=top_k, capacity_factor=capacity_factor)
    x = torch.randn(2, 3, D, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(moe, (x, ))
    assert torch.autograd.gradgradcheck(moe, (x, ))


@pytest.mark.parametrize('normalize_weights,top_k', [(None, 1), (False, 1), (True, 1),
                                                     (None, 2), (False, 2)])
def test_forced_route_weights_the_expert_as_gate_routing_would(normalize_weights, top_k):
    moe = make_moe(num_experts=3, top_k=top_k, normalize_weights=normalize_weights).eval()
    x = torch.randn(4, 6, D, dtype=torch.double)
    probs = torch.softmax(x @ moe.gate.weight.t(), dim=-1)
    forced = torch.tensor([0, 1, 2, 1])
    with moe.force_experts(forced):
        oracle = moe(x)
    renormalise = top_k > 1 if normalize_weights is None else normalize_weights
    for b, e in enumerate(forced.tolist()):
        for n in range(6):
            # A single chosen expert renormalised has weight 1.0, else its probability.
            weight = 1. if renormalise else probs[b, n, e]
            torch.testing.assert_close(oracle[b, n],
                                       x[b, n] + weight * expert_ref(moe, e, x[b, n]))
    if top_k == 1:  # where the gate picks the forced expert, both are the same function
        gate = moe(x)
        agrees = probs.argmax(-1) == forced[:, None]
        assert 0 < agrees.sum() < agrees.numel()
        # Up to rounding: the experts see their rows in other blocks in the two forwards.
        torch.testing.assert_close(oracle[agrees], gate[agrees], rtol=0, atol=1e-12)


def test_capacity_per_image_vs_per_batch():
    """Two images whose tokens all go to expert 0: the reference's per-image capacity keeps
    the best tokens of each image; a batch-wide capacity keeps the best of the batch."""
    moe = make_moe(num_experts=4, capacity_factor=1.0)
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[0, 0] = 1.
    # Feature 0 in (0.5, 2): every token prefers expert 0; higher feature, higher priority.
    x = torch.randn(2, 8, D, dtype=torch.double)
    x[..., 0] = torch.rand(2, 8, dtype=torch.double) * 1.5 + 0.5
    x[1, :, 0] += 2.  # image 1 scores higher than image 0 everywhere
    capacity = 1 * int(1.0 * math.ceil(8 / 4))  # = 2 per image, tutel's formula

    out = moe(x)
    is_kept = torch.zeros(2, 8, dtype=torch.bool)
    for b in range(2):
        is_kept[b, x[b, :, 0].topk(capacity).indices] = True
    ref = naive_moe(moe, x, renormalise=False, kept=is_kept.reshape(-1, 1))
    torch.testing.assert_close(out, ref)
    assert moe.last_dropped_counts.tolist() == [16 - 2 * capacity, 0, 0, 0]

    moe.capacity_scope = 'batch'
    out = moe(x)
    batch_capacity = 1 * int(1.0 * math.ceil(16 / 4))  # = 4 for the batch
    is_kept = torch.zeros(16, dtype=torch.bool)
    is_kept[x[..., 0].flatten().topk(batch_capacity).indices] = True
    assert is_kept[8:].sum() == batch_capacity  # all from the higher-scoring image
    torch.testing.assert_close(out, naive_moe(moe, x, renormalise=False,
                                              kept=is_kept.reshape(-1, 1)))
    assert moe.last_num_dropped == 16 - batch_capacity


def test_capacity_scope_is_validated():
    with pytest.raises(ValueError, match='capacity_scope'):
        MoEFFN(embed_dims=D, feedforward_channels=H, capacity_scope='device')
    moe = make_moe(num_experts=2, capacity_factor=1.)
    assert 'capacity_factor=1.0 per image' in repr(moe)


def float_moe(seed=0, **kwargs):
    """A float32 MoE wide enough for the grouped GEMM (rows of 16-byte multiples)."""
    torch.manual_seed(seed)
    moe = MoEFFN(embed_dims=16, feedforward_channels=32, **kwargs)
    torch.nn.init.normal_(moe.gate.weight, std=1.)
    return moe


@pytest.mark.parametrize('top_k,capacity_factor,scope,padded', [
    (1, None, 'image', False), (2, None, 'image', False), (1, 0.5, 'image', False),
    (2, 0.5, 'batch', False), (1, None, 'image', True), (2, 0.5, 'image', True)])
def test_grouped_gemm_equals_the_loop(top_k, capacity_factor, scope, padded):
    """Forward and every gradient, with one expert that receives no token (and padding)."""
    if not hasattr(torch, '_grouped_mm'):
        pytest.skip('this torch has no grouped GEMM')
    grouped = float_moe(num_experts=4, top_k=top_k, capacity_factor=capacity_factor,
                        capacity_scope=scope, expert_backend='grouped_mm')
    with torch.no_grad():  # feature 0 is 5 and drives expert 3's logit to -250: never chosen
        grouped.gate.weight[3] = 0.
        grouped.gate.weight[3, 0] = -50.
    loop = float_moe(num_experts=4, top_k=top_k, capacity_factor=capacity_factor,
                     capacity_scope=scope, expert_backend='loop')
    loop.load_state_dict(grouped.state_dict())
    x = torch.randn(3, 20, 16)
    x[..., 0] = 5.
    probe = torch.randn(3, 20, 16)
    padding = torch.arange(20)[None] >= torch.tensor([20, 12, 5])[:, None] if padded else None
    outputs, grads = [], []
    for moe in (grouped, loop):
        x_in = x.clone().requires_grad_()
        with moe.ignore_padding(padding):
            out = moe(x_in)
        inputs = [x_in] + params_of(moe)
        grads.append(torch.autograd.grad((out * probe).sum(), inputs))
        outputs.append(out)
    assert grouped.last_expert_counts[3] == 0
    assert torch.equal(grouped.last_expert_counts, loop.last_expert_counts)
    assert torch.equal(grouped.last_dropped_counts, loop.last_dropped_counts)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)
    for name, grad, ref in zip(['x', 'gate', 'w1', 'b1', 'w2', 'b2'], *grads):
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-5, msg=name)
    for name in ('expert_w1', 'expert_b1', 'expert_w2', 'expert_b2'):
        param = getattr(grouped, name)
        with grouped.ignore_padding(padding):
            grad, = torch.autograd.grad((grouped(x) * probe).sum(), param)
        assert torch.equal(grad[3], torch.zeros_like(grad[3])), name


def test_grouped_gemm_dispatch_is_deterministic():
    if not hasattr(torch, '_grouped_mm'):
        pytest.skip('this torch has no grouped GEMM')
    moe = float_moe(num_experts=8, expert_backend='grouped_mm')
    x = torch.randn(4, 50, 16, requires_grad=True)
    results = []
    for _ in range(2):
        out = moe(x)
        results.append([out] + list(torch.autograd.grad(out.pow(2).sum(),
                                                        [x] + params_of(moe))))
    for first, second in zip(*results):
        assert torch.equal(first, second)


def test_auto_backend_falls_back_to_the_loop_where_grouped_gemm_cannot_run():
    moe = make_moe(num_experts=2)  # float64 and D=8: no grouped GEMM
    assert not moe._uses_grouped_mm(torch.randn(3, D, dtype=torch.double))
    # On CPU 'auto' is the loop (no host sync to save, and measured as fast).
    assert not float_moe(num_experts=2)._uses_grouped_mm(torch.randn(3, 16))
    moe.expert_backend = 'grouped_mm'
    with pytest.raises(RuntimeError, match="expert_backend='auto'"):
        moe(torch.randn(2, 3, D, dtype=torch.double))
    with pytest.raises(ValueError, match='expert_backend'):
        MoEFFN(embed_dims=D, feedforward_channels=H, expert_backend='cuda')


@pytest.mark.parametrize('expert_backend', ['loop', 'grouped_mm'])
def test_bf16_autocast_routes_as_fp32(expert_backend):
    if expert_backend == 'grouped_mm' and not hasattr(torch, '_grouped_mm'):
        pytest.skip('this torch has no grouped GEMM')
    moe = float_moe(num_experts=8, top_k=2, expert_backend=expert_backend)
    torch.nn.init.normal_(moe.gate.weight, std=0.05)  # close scores: bf16 would flip some
    x = torch.randn(4, 64, 16)
    with torch.no_grad():
        reference = moe(x)
    fp32_indices = moe.last_expert_indices.clone()
    fp32_logits = moe.last_gate_logits.clone()
    # Gate computed in bf16 would route differently on this input: the test can fail.
    bf16_logits = (x.bfloat16() @ moe.gate.weight.bfloat16().t()).float()
    assert not torch.equal(bf16_logits.topk(2).indices, fp32_indices)

    x_in = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = moe(x_in)
    assert torch.equal(moe.last_expert_indices, fp32_indices)
    assert moe.last_gate_logits.dtype == torch.float32
    assert torch.equal(moe.last_gate_logits, fp32_logits)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)
    out.float().pow(2).sum().backward()
    for param in [x_in] + params_of(moe):
        assert param.grad is not None and torch.isfinite(param.grad).all()
        assert param.grad.dtype == torch.float32


def test_checkpointed_encoder_layers_stay_checkpointed(monkeypatch):
    """num_cp > 0: mmdet wraps the first encoder layers for activation checkpointing; the
    MoE layer that replaces one must be wrapped too (its FFN runs again in backward)."""
    from mmdet.models.layers.transformer import deformable_detr_layers
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        checkpoint_wrapper)

    from damex_mmdet.models.layers import MoEDeformableDetrTransformerEncoder
    if deformable_detr_layers.checkpoint_wrapper is None:
        # fairscale, mmdet's optional wrapper, is not installed: torch's own wrapper has
        # the same contract (module in, checkpointed module out).
        monkeypatch.setattr(deformable_detr_layers, 'checkpoint_wrapper', checkpoint_wrapper)
    dims = 16
    layer_cfg = dict(self_attn_cfg=dict(embed_dims=dims, num_levels=1, num_heads=2),
                     ffn_cfg=dict(embed_dims=dims, feedforward_channels=32))
    torch.manual_seed(0)
    encoder = MoEDeformableDetrTransformerEncoder(
        num_layers=3, num_cp=2, layer_cfg=layer_cfg, moe_layers=[0, 2],
        moe_cfg=dict(num_experts=2))
    dense_wrapped_type = type(encoder.layers[1])
    assert type(encoder.layers[0]) is dense_wrapped_type  # wrapped like its dense sibling
    moe_ffns = [m for m in encoder.modules() if isinstance(m, MoEFFN)]
    assert len(moe_ffns) == 2
    calls = [0, 0]
    for i, moe in enumerate(moe_ffns):
        moe.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))

    query = torch.randn(2, 16, dims, requires_grad=True)
    out = encoder(query=query, query_pos=torch.zeros_like(query),
                  key_padding_mask=torch.zeros(2, 16, dtype=torch.bool),
                  spatial_shapes=torch.tensor([[4, 4]]),
                  level_start_index=torch.tensor([0]), valid_ratios=torch.ones(2, 1, 2))
    assert calls == [1, 1]
    out.sum().backward()
    assert calls == [2, 1]  # layer 0 recomputed in backward, layer 2 (not checkpointed) not
    assert moe_ffns[0].expert_w1.grad is not None


def test_shared_expert_adds_a_dense_ffn_every_token_uses():
    moe = make_moe(num_experts=3, shared_expert=True, shared_feedforward_channels=8,
                   expert_feedforward_channels=8)
    assert moe.expert_w1.shape == (3, 8, D) and moe.shared.feedforward_channels == 8
    x = torch.randn(2, 5, D, dtype=torch.double, requires_grad=True)
    out = moe(x)
    # naive_moe's experts read their width from the parameters: routed part + x.
    ref = naive_moe(moe, x, renormalise=False) + moe.shared(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    out.pow(2).sum().backward()
    assert moe.shared.layers[0][0].weight.grad.abs().sum() > 0
    assert 'shared_feedforward_channels=8' in repr(moe)
    with pytest.raises(ValueError, match='shared_expert=True'):
        MoEFFN(embed_dims=D, feedforward_channels=H, shared_feedforward_channels=8)


def test_shared_and_narrow_experts_keep_the_dense_flops():
    from torch.utils.flop_counter import FlopCounterMode
    dims, hidden, tokens = 256, 2048, 64

    def flops(module):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(torch.randn(1, tokens, dims))
        return counter.get_total_flops()

    dense = FFN(embed_dims=dims, feedforward_channels=hidden)
    moe = MoEFFN(embed_dims=dims, feedforward_channels=hidden, num_experts=8,
                 shared_expert=True, shared_feedforward_channels=hidden // 2,
                 expert_feedforward_channels=hidden // 2, expert_backend='loop')
    wide = MoEFFN(embed_dims=dims, feedforward_channels=hidden, num_experts=8,
                  shared_expert=True, expert_backend='loop')
    assert flops(dense) < flops(moe) <= 1.05 * flops(dense)
    assert flops(wide) > 1.9 * flops(dense)  # a full-width shared expert doubles them


@pytest.mark.parametrize('shared_channels,expert_channels,moe_kwargs', [
    (H // 4, 3 * H // 4, dict(normalize_weights=True)),  # split: exact with unit weights
    (H, H // 2, dict(capacity_factor=0.5)),  # silent experts: exact whatever the routing
])
def test_upcycling_with_a_shared_expert_reproduces_the_dense_ffn(
        shared_channels, expert_channels, moe_kwargs):
    torch.manual_seed(1)
    dense = FFN(embed_dims=D, feedforward_channels=H).double()
    moe = make_moe(num_experts=3, shared_expert=True, shared_feedforward_channels=shared_channels,
                   expert_feedforward_channels=expert_channels, **moe_kwargs)
    gate = moe.gate.weight.clone()
    moe.upcycle_from_dense(dense.state_dict())
    assert torch.equal(moe.gate.weight, gate)
    x = torch.randn(2, 6, D, dtype=torch.double)
    torch.testing.assert_close(moe(x), dense(x), rtol=0, atol=1e-12)


def test_upcycling_with_widths_that_cannot_add_up_names_the_fix():
    moe = make_moe(num_experts=2, shared_expert=True, shared_feedforward_channels=4,
                   expert_feedforward_channels=4)
    with pytest.raises(ValueError, match=f'shared_feedforward_channels={H}'):
        moe.upcycle_from_dense(FFN(embed_dims=D, feedforward_channels=H).double().state_dict())
    narrow = make_moe(num_experts=2, expert_feedforward_channels=4)
    with pytest.raises(ValueError, match='without a shared expert'):
        narrow.upcycle_from_dense(FFN(embed_dims=D, feedforward_channels=H).state_dict())


def padded_pair():
    """Image A (5 tokens) padded to the length of image B (12 tokens): (2, 12, D) tokens whose
    padding is large random values, which would win the capacity if they were routed, and
    the (2, 12) padding mask."""
    generator = torch.Generator().manual_seed(3)
    image_a = torch.randn(1, 5, D, dtype=torch.double, generator=generator)
    image_b = torch.randn(1, 12, D, dtype=torch.double, generator=generator)
    padding = 10 * torch.randn(1, 7, D, dtype=torch.double, generator=generator)
    x = torch.cat([torch.cat([image_a, padding], dim=1), image_b])
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 5:] = True
    return image_a, image_b, x, mask


def routed_flops(moe, x):
    """FLOPs of one forward of ``moe`` on ``x``, less those of the gate and the shared expert
    (dense: they run on every token)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        moe(x)
    dense_width = moe.num_experts + (2 * H if moe.shared is not None else 0)
    return counter.get_total_flops() - 2 * x[..., 0].numel() * D * dense_width


@pytest.mark.parametrize('top_k,capacity_factor,shared_expert',
                         [(1, 1.0, False), (2, 0.75, True), (2, None, False)])
def test_padding_is_not_routed_and_an_image_routes_as_if_alone(top_k, capacity_factor,
                                                               shared_expert):
    moe = make_moe(num_experts=4, top_k=top_k, capacity_factor=capacity_factor,
                   shared_expert=shared_expert)
    image_a, image_b, x, mask = padded_pair()
    alone = []
    for image in (image_a, image_b):
        out = moe(image)
        alone.append(dict(out=out[0], kept=moe.last_kept[0], counts=moe.last_expert_counts,
                          dropped=moe.last_dropped_counts, flops=routed_flops(moe, image)))
    if capacity_factor is not None:
        # The capacity bites, and counting the padding would change what A keeps.
        assert int(alone[0]['dropped'].sum()) > 0
        moe(x)
        assert not torch.equal(moe.last_kept[0, :5], alone[0]['kept'])

    with moe.ignore_padding(mask):
        out = moe(x)
        flops = routed_flops(moe, x)
    assert moe.padding_mask is None
    for real, (image, result) in zip([slice(0, 5), slice(0, 12)], zip((0, 1), alone)):
        assert torch.equal(moe.last_kept[image, real], result['kept'])
        torch.testing.assert_close(out[image, real], result['out'], rtol=0, atol=1e-12)
    assert not moe.last_kept[0, 5:].any()
    assert torch.equal(moe.last_expert_counts, alone[0]['counts'] + alone[1]['counts'])
    assert torch.equal(moe.last_dropped_counts, alone[0]['dropped'] + alone[1]['dropped'])
    # No expert runs on the padding: its output is the shared expert's, or the identity.
    assert flops == alone[0]['flops'] + alone[1]['flops']
    shared = moe.shared(x[0, 5:]) if shared_expert else 0
    torch.testing.assert_close(out[0, 5:], x[0, 5:] + shared, rtol=0, atol=1e-12)


def test_batch_capacity_counts_only_the_real_tokens():
    moe = make_moe(num_experts=4, capacity_factor=1.0, capacity_scope='batch')
    image_a, image_b, x, mask = padded_pair()
    real = torch.cat([image_a, image_b], dim=1)  # the 17 real tokens, unpadded
    expected = moe(real)[0]
    kept = moe.last_kept[0]
    assert moe.last_num_dropped > 0
    with moe.ignore_padding(mask):
        out = moe(x)
    torch.testing.assert_close(out[~mask], expected, rtol=0, atol=1e-12)
    assert torch.equal(moe.last_kept[~mask], kept)


def test_padding_mask_is_validated():
    moe = make_moe(num_experts=2)
    x = torch.randn(2, 3, D, dtype=torch.double)
    with pytest.raises(ValueError, match='expected \\(2, 3\\)'):
        with moe.ignore_padding(torch.zeros(2, 4, dtype=torch.bool)):
            moe(x)
    with pytest.raises(ValueError, match='must be bool'):
        with moe.ignore_padding(torch.zeros(2, 3)):
            moe(x)


def test_capacity_keeps_at_least_one_slot_per_expert():
    # tutel's k * int(0.5 * ceil(3 / 4)) = 0 would drop all three tokens.
    moe = make_moe(num_experts=4, capacity_factor=0.5)
    with torch.no_grad():
        moe.gate.weight.zero_()
        moe.gate.weight[0, 0] = 20.
    x = routed_tokens([1, 1, 1]).requires_grad_()
    out = moe(x)
    assert moe.last_kept[0, :, 0].tolist() == [True, False, False]
    assert moe.last_dropped_counts.tolist() == [2, 0, 0, 0]
    kept = moe.last_kept.reshape(-1, 1)
    torch.testing.assert_close(out, naive_moe(moe, x, renormalise=False, kept=kept))
    out.sum().backward()
    assert moe.expert_w1.grad[0].abs().sum() > 0


@pytest.mark.parametrize('expert_backend', ['loop', 'grouped_mm'])
def test_every_parameter_is_in_the_graph_whatever_the_routing(expert_backend):
    if expert_backend == 'grouped_mm' and not hasattr(torch, '_grouped_mm'):
        pytest.skip('this torch has no grouped GEMM')
    moe = float_moe(num_experts=4, capacity_factor=0.5, expert_backend=expert_backend)
    x = torch.randn(2, 3, 16)
    for padding in (torch.zeros(2, 3, dtype=torch.bool),  # 1 slot per expert and image
                    torch.ones(2, 3, dtype=torch.bool)):  # nothing to route
        moe.zero_grad(set_to_none=True)
        with moe.ignore_padding(padding):
            moe(x).sum().backward()
        for name, param in moe.named_parameters():
            assert param.grad is not None, name


def test_checkpointed_encoder_layer_recomputes_with_its_padding_mask(monkeypatch):
    """The encoder layer hands its key_padding_mask to its MoE inside its own forward, so
    the recomputation in backward routes the same tokens (else the shapes differ)."""
    from mmdet.models.layers.transformer import deformable_detr_layers
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        checkpoint_wrapper)

    from damex_mmdet.models.layers import MoEDeformableDetrTransformerEncoder
    if deformable_detr_layers.checkpoint_wrapper is None:
        monkeypatch.setattr(deformable_detr_layers, 'checkpoint_wrapper', checkpoint_wrapper)
    dims = 16
    layer_cfg = dict(self_attn_cfg=dict(embed_dims=dims, num_levels=1, num_heads=2),
                     ffn_cfg=dict(embed_dims=dims, feedforward_channels=32))
    torch.manual_seed(0)
    encoder = MoEDeformableDetrTransformerEncoder(
        num_layers=1, num_cp=1, layer_cfg=layer_cfg, moe_layers=[0],
        moe_cfg=dict(num_experts=2, capacity_factor=0.5))
    moe = next(m for m in encoder.modules() if isinstance(m, MoEFFN))
    padding = torch.zeros(2, 16, dtype=torch.bool)
    padding[0, 6:] = True
    query = torch.randn(2, 16, dims, requires_grad=True)
    out = encoder(query=query, query_pos=torch.zeros_like(query), key_padding_mask=padding,
                  spatial_shapes=torch.tensor([[4, 4]]), level_start_index=torch.tensor([0]),
                  valid_ratios=torch.ones(2, 1, 2))
    assert not moe.last_kept[padding].any()
    out.sum().backward()
    assert not moe.last_kept[padding].any()  # the recomputation skipped them too
    assert moe.expert_w1.grad is not None
