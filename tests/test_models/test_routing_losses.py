"""DAMEXLoss and LoadBalancingLoss against values worked out by hand."""
import math

import pytest
import torch
from mmdet.registry import MODELS

from damex_mmdet.models.losses import DAMEXLoss, LoadBalancingLoss

LOG2, LOG3 = math.log(2), math.log(3)


def logits(rows):
    """(1, N, E) logits from a list of N rows, requiring grad."""
    return torch.tensor([rows], dtype=torch.double, requires_grad=True)


def test_registered():
    assert isinstance(MODELS.build(dict(type='DAMEXLoss')), DAMEXLoss)
    assert MODELS.build(dict(type='LoadBalancingLoss', loss_weight=0.5)).loss_weight == 0.5


def test_damex_loss_hand_computed():
    # Layer A: token [0, 0] -> p(0) = 1/2, CE = log 2; token [log 3, 0] -> p(0) = 3/4,
    # CE = log(4/3). Layer mean: (log 2 + log 4/3) / 2.
    layer_a = logits([[0., 0.], [LOG3, 0.]])
    # Layer B: token [0, log 2] -> p(1) = 2/3, CE = log(3/2); the second token is masked out.
    layer_b = logits([[0., LOG2], [5., -5.]])
    # Layer C: no token counts, so it is left out of the mean over layers.
    layer_c = logits([[1., 2.], [3., 4.]])
    targets = [torch.tensor([[0, 0]]), torch.tensor([[1, 1]]), torch.tensor([[0, 1]])]
    masks = [None, torch.tensor([[True, False]]), torch.tensor([[False, False]])]

    loss = DAMEXLoss(loss_weight=0.1)([layer_a, layer_b, layer_c], targets, masks)
    expected = 0.1 * ((LOG2 + math.log(4 / 3)) / 2 + math.log(3 / 2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    assert torch.equal(layer_b.grad[0, 1], torch.zeros(2, dtype=torch.double))
    assert layer_c.grad is None  # skipped layer: not part of the graph


def test_damex_loss_single_target_tensor_is_shared_by_layers():
    layers = [logits([[0., 0.], [LOG3, 0.]]), logits([[LOG3, 0.], [0., 0.]])]
    loss = DAMEXLoss(loss_weight=1.)(layers, torch.tensor([[0, 0]]))
    assert loss.item() == pytest.approx((LOG2 + math.log(4 / 3)) / 2, rel=1e-12)


def test_damex_loss_without_counted_tokens_is_a_differentiable_zero():
    layer = logits([[1., 2.]])
    loss = DAMEXLoss()([layer], torch.tensor([[1]]), [torch.tensor([[False]])])
    assert loss.item() == 0
    loss.backward()
    assert torch.equal(layer.grad, torch.zeros_like(layer))


def test_damex_loss_rejects_layout_mismatch_and_bad_targets():
    layer = torch.zeros(2, 3, 4)  # (B=2 images, N=3 queries, E=4)
    with pytest.raises(ValueError, match='leading shape \\(2, 3\\)'):
        DAMEXLoss()([layer], torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match='\\[0, 4\\)'):
        DAMEXLoss()([layer], torch.full((2, 3), 4))
    with pytest.raises(ValueError, match='2 entries for 1 MoE layers'):
        DAMEXLoss()([layer], [torch.zeros(2, 3, dtype=torch.long)] * 2)
    # Out-of-range targets of tokens that do not count are ignored.
    mask = torch.tensor([[True, True, False], [True, True, True]])
    targets = torch.tensor([[0, 1, -1], [2, 3, 0]])
    loss = DAMEXLoss(loss_weight=1.)([layer], targets, [mask])
    assert loss.item() == pytest.approx(math.log(4))


def test_load_balancing_loss_hand_computed():
    # Layer A: P = (1/2, 1/2), both tokens to expert 0: f = (1, 0) -> 2 * 1/2 = 1.
    layer_a = logits([[0., 0.], [0., 0.]])
    # Layer B: counted tokens have P = (3/4, 1/4) and go to expert 0: f = (1, 0) -> 2 * 3/4.
    layer_b = logits([[LOG3, 0.], [LOG3, 0.], [0., 9.]])
    indices = [torch.tensor([[[0], [0]]]), torch.tensor([[[0], [0], [1]]])]
    masks = [None, torch.tensor([[True, True, False]])]
    loss = LoadBalancingLoss(loss_weight=0.01)([layer_a, layer_b], indices, masks)
    assert loss.item() == pytest.approx(0.01 * (1. + 1.5) / 2, rel=1e-12)
    loss.backward()
    assert torch.equal(layer_b.grad[0, 2], torch.zeros(2, dtype=torch.double))


def test_load_balancing_loss_is_one_when_balanced_and_counts_top_k():
    balanced = LoadBalancingLoss(loss_weight=1.)(
        [logits([[0., 0.], [0., 0.]])], [torch.tensor([[[0], [1]]])])
    assert balanced.item() == pytest.approx(1.)
    # E = 4, one token with probabilities (4, 2, 1, 1) / 8 sent to experts 0 and 1 (top-2):
    # f = (1/2, 1/2, 0, 0) -> 4 * (1/2 * 1/2 + 1/2 * 1/4) = 1.5.
    layer = logits([[math.log(4), LOG2, 0., 0.]])
    loss = LoadBalancingLoss(loss_weight=1.)([layer], torch.tensor([[[0, 1]]]))
    assert loss.item() == pytest.approx(1.5, rel=1e-12)


def test_load_balancing_loss_checks_and_empty_mask():
    layer = logits([[0., 0.]])
    with pytest.raises(ValueError, match='plus \\(k,\\)'):
        LoadBalancingLoss()([layer], torch.tensor([[0]]))
    with pytest.raises(ValueError, match='\\[0, 2\\)'):
        LoadBalancingLoss()([layer], torch.tensor([[[2]]]))
    loss = LoadBalancingLoss()([layer], torch.tensor([[[0]]]), [torch.tensor([[False]])])
    assert loss.item() == 0
    loss.backward()
