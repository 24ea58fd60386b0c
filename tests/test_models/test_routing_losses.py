"""The routing losses against values worked out by hand."""
import math

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.logging import MessageHub

from damex_mmdet.models.losses import DAMEXLoss, LoadBalancingLoss, LoadImportanceLoss

LOG2, LOG3 = math.log(2), math.log(3)


def logits(rows):
    """(1, N, E) logits from a list of N rows, requiring grad."""
    return torch.tensor([rows], dtype=torch.double, requires_grad=True)


def test_registered():
    assert isinstance(MODELS.build(dict(type='DAMEXLoss')), DAMEXLoss)
    assert MODELS.build(dict(type='LoadBalancingLoss', loss_weight=0.5)).loss_weight == 0.5
    loss = MODELS.build(dict(type='LoadImportanceLoss'))
    assert isinstance(loss, LoadImportanceLoss) and loss.loss_weight == 0.1 and loss.per_image


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


def test_damex_loss_expert_weight_is_a_weighted_mean_over_tokens():
    # Token 1 (target 0): CE = log 2; token 2 (target 1): p(1) = 1/4, CE = log 4.
    # Weights 3 (expert 0) and 1 (expert 1): (3 log 2 + log 4) / 4.
    layer = logits([[0., 0.], [LOG3, 0.]])
    targets = torch.tensor([[0, 1]])
    loss = DAMEXLoss(loss_weight=1., expert_weight=[3., 1.])([layer], targets)
    assert loss.item() == pytest.approx((3 * LOG2 + math.log(4)) / 4, rel=1e-12)
    # Equal weights leave the plain mean; tokens of a zero-weight expert do not count.
    plain = DAMEXLoss(loss_weight=1.)([layer], targets).item()
    assert DAMEXLoss(loss_weight=1., expert_weight=[2., 2.])([layer], targets).item() == \
        pytest.approx(plain, rel=1e-12)
    assert DAMEXLoss(loss_weight=1., expert_weight=[1., 0.])([layer], targets).item() == \
        pytest.approx(LOG2, rel=1e-12)
    # A layer whose counted tokens all weigh 0 is left out like one without tokens.
    only_b = logits([[LOG3, 0.]])
    loss = DAMEXLoss(loss_weight=1., expert_weight=[1., 0.])(
        [layer, only_b], [targets, torch.tensor([[1]])])
    assert loss.item() == pytest.approx(LOG2, rel=1e-12)


@pytest.mark.parametrize('weights, message', [
    ([1., -1.], 'finite weights >= 0'), ([0., 0.], 'at least one positive'),
    ([1., float('nan')], 'finite'), (dict(a=1.), 'one weight per expert'), ([], 'at least')])
def test_damex_loss_expert_weight_checks(weights, message):
    with pytest.raises(ValueError, match=message):
        DAMEXLoss(expert_weight=weights)


def test_damex_loss_expert_weight_must_match_the_experts():
    with pytest.raises(ValueError, match='3 weights for 2 experts'):
        DAMEXLoss(expert_weight=[1., 1., 1.])([logits([[0., 0.]])], torch.tensor([[0]]))


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


def cv_squared(values):
    """Unbiased variance over squared mean, as tutel."""
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1) / mean ** 2


def phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_load_importance_loss_hand_computed():
    # One image, two tokens, E = 2. Token a: logits (0, 0), p = (1/2, 1/2), sent to expert 0,
    # whose clean logit 0 is the threshold. Token b: logits (log 3, 0), p = (3/4, 1/4),
    # sent to expert 0, threshold log 3.
    layer = logits([[0., 0.], [LOG3, 0.]])
    indices = torch.tensor([[[0], [0]]])
    sigma = 0.5
    importance = [1 / 2 + 3 / 4, 1 / 2 + 1 / 4]
    load = [phi((1 / 2 - 0) / sigma) + phi((3 / 4 - LOG3) / sigma),
            phi((1 / 2 - 0) / sigma) + phi((1 / 4 - LOG3) / sigma)]
    expected = 0.1 * (cv_squared(importance) + cv_squared(load)) / 2
    loss = LoadImportanceLoss(loss_weight=0.1)([layer], indices, sigma)
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert layer.grad.abs().sum() > 0


def test_load_importance_loss_top_k_threshold_is_the_kth_choice():
    # E = 3, k = 2: the threshold is the clean logit of the second chosen expert (2 -> 0.).
    layer = logits([[1., -1., 0.]])
    probs = torch.tensor([1., -1., 0.], dtype=torch.double).softmax(-1).tolist()
    loss = LoadImportanceLoss(loss_weight=1.)([layer], torch.tensor([[[0, 2]]]), 1.)
    load = [phi(p - 0.) for p in probs]
    assert loss.item() == pytest.approx((cv_squared(probs) + cv_squared(load)) / 2, rel=1e-9)


def test_load_importance_loss_counts_masked_tokens_per_image():
    # Image 0 counts tokens 0 and 1 only, image 1 token 1 only; each image is its own group
    # and the layer's loss is the mean over the two images (per_image, the reference).
    rows = [[[0., 0.], [LOG3, 0.], [9., -9.]], [[5., 5.], [0., LOG2], [0., 0.]]]
    layer = torch.tensor(rows, dtype=torch.double, requires_grad=True)
    indices = torch.tensor([[[0], [0], [0]], [[0], [1], [0]]])
    mask = torch.tensor([[True, True, False], [False, True, False]])
    single = LoadImportanceLoss(loss_weight=1.)

    def alone(image, tokens):
        return single([layer[image, tokens][None]], indices[image, tokens][None], 0.3).item()

    per_image = single([layer], indices, 0.3, [mask]).item()
    assert per_image == pytest.approx((alone(0, [0, 1]) + alone(1, [1])) / 2, rel=1e-12)
    # per_image=False pools the three counted tokens of both images into one group.
    pooled = LoadImportanceLoss(loss_weight=1., per_image=False)([layer], indices, 0.3, [mask])
    flat = layer[mask][None]
    assert pooled.item() == pytest.approx(
        single([flat], indices[mask][None], 0.3).item(), rel=1e-12)
    assert pooled.item() != pytest.approx(per_image)
    # Uncounted tokens get no gradient.
    LoadImportanceLoss()([layer], indices, 0.3, [mask]).backward()
    assert torch.equal(layer.grad[0, 2], torch.zeros(2, dtype=torch.double))
    assert torch.equal(layer.grad[1, 0], torch.zeros(2, dtype=torch.double))


def test_load_importance_loss_needs_gate_noise_and_matching_layers():
    layer = logits([[0., 0.]])
    with pytest.raises(ValueError, match='gate_noise_std > 0'):
        LoadImportanceLoss()([layer], torch.tensor([[[0]]]), 0.)
    with pytest.raises(ValueError, match='2 entries for 1 MoE layers'):
        LoadImportanceLoss()([layer], torch.tensor([[[0]]]), [0.1, 0.1])
    loss = LoadImportanceLoss()([layer], torch.tensor([[[0]]]), 0.1, [torch.tensor([[False]])])
    assert loss.item() == 0
    loss.backward()


@pytest.fixture
def training_iteration():
    hub = MessageHub.get_current_instance()
    saved = {key: hub.get_info(key) for key in ('iter', 'max_iters')}

    def at(step, max_iters=100):
        hub.update_info('iter', step)
        hub.update_info('max_iters', max_iters)

    yield at
    for key, value in saved.items():
        hub.update_info(key, value)


@pytest.mark.parametrize('decay, factors', [
    ('cosine', {0: 1., 50: 0.2 + 0.8 * 0.5, 100: 0.2, 150: 0.2}),
    ('linear', {0: 1., 25: 0.2 + 0.8 * 0.75, 100: 0.2, 150: 0.2}),
])
def test_weight_schedule_decays_to_its_floor(training_iteration, decay, factors):
    layer = logits([[0., 0.], [LOG3, 0.]])
    targets = torch.tensor([[0, 0]])
    constant = DAMEXLoss(loss_weight=1.)([layer], targets).item()
    loss = DAMEXLoss(loss_weight=0.5, weight_schedule=dict(decay=decay, min_factor=0.2))
    for step, factor in factors.items():
        training_iteration(step)
        assert loss([layer], targets).item() == pytest.approx(0.5 * factor * constant,
                                                              rel=1e-12)
    # `end` overrides the run's max_iters.
    short = DAMEXLoss(loss_weight=0.5,
                      weight_schedule=dict(decay=decay, min_factor=0.2, end=50))
    training_iteration(50)
    assert short.current_weight() == pytest.approx(0.1)
    balance = LoadImportanceLoss(loss_weight=0.1, weight_schedule=dict(decay=decay))
    training_iteration(100)
    assert balance.current_weight() == pytest.approx(0.01)


def test_weight_schedule_checks(training_iteration):
    with pytest.raises(ValueError, match="'cosine', 'linear'"):
        DAMEXLoss(weight_schedule=dict(decay='step'))
    with pytest.raises(ValueError, match='unknown keys'):
        LoadBalancingLoss(weight_schedule=dict(decay='linear', floor=0.1))
    with pytest.raises(ValueError, match='min_factor'):
        DAMEXLoss(weight_schedule=dict(decay='linear', min_factor=2))
    loss = DAMEXLoss(weight_schedule=dict(decay='linear'))
    hub = MessageHub.get_current_instance()
    training_iteration(3)
    hub.update_info('max_iters', None)
    with pytest.raises(RuntimeError, match="MessageHub"):
        loss.current_weight()
