"""The DAMEX detector: routing targets, losses, predict, upcycling, errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

from damex_mmdet.models import DAMEX, upcycle_dense_state_dict

from ..conftest import TINY_CONFIG

DATASETS = dict(photo=0, sketch=1, aerial=2, scan=3)


@pytest.fixture(scope='module')
def model_cfg():
    init_default_scope('mmdet')
    return Config.fromfile(str(TINY_CONFIG)).model


def build(model_cfg, **overrides):
    cfg = copy.deepcopy(model_cfg)
    cfg.update(overrides)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def make_batch(datasets, size=64, seed=0):
    """Images with one box each, tagged with the given dataset names."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(len(datasets), 3, size, size, generator=generator)
    samples = []
    for i, name in enumerate(datasets):
        sample = DetDataSample(metainfo=dict(
            img_shape=(size, size), ori_shape=(size, size),
            pad_shape=(size, size), batch_input_shape=(size, size),
            scale_factor=(1., 1.), img_path=f'{name}_{i}.png'))
        if name is not None:
            sample.set_metainfo(dict(dataset=name))
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[8. + i, 10., 40., 50. - i]]),
            labels=torch.tensor([i % 3]))
        samples.append(sample)
    return inputs, samples


def routing_accuracy(model, samples):
    experts = model.experts_of(samples, torch.device('cpu'))
    hits = [(moe.last_expert_indices[..., 0] == experts[:, None]).float()
            .mean() for _, moe in model.named_moe_layers()]
    return float(torch.stack(hits).mean())


def test_moe_layers_are_placed_and_initialised(model_cfg):
    model = build(model_cfg)
    names = [name for name, _ in model.named_moe_layers()]
    assert names == ['decoder.layers.0.ffn', 'decoder.layers.1.ffn']
    moe = model.decoder.layers[0].ffn
    hidden, dims = moe.expert_w1.shape[1:]
    # DINO's init_weights runs xavier on the whole 3-D tensor, whose fans
    # are far larger; the MoE re-initialises each expert like a dense FFN.
    xavier_2d = (6 / (hidden + dims)) ** 0.5
    assert 0.8 * xavier_2d < moe.expert_w1.abs().max() <= xavier_2d
    assert moe.gate.weight.abs().max() > 0


def test_routing_loss_uses_token_major_targets(model_cfg):
    """Every token's target is its own image's expert.

    The reference code laid the targets out in another order than the
    tokens, which only shows in batches mixing datasets; the loss here is
    compared with a per-image reference that cannot mix images up.
    """
    model = build(model_cfg)
    inputs, samples = make_batch(['photo', 'photo', 'sketch'])
    losses = model.loss(inputs, samples)
    experts = [DATASETS[s.metainfo['dataset']] for s in samples]
    per_layer = []
    for _, moe in model.named_moe_layers():
        logits = moe.last_gate_logits
        assert logits.shape[0] == 3
        per_image = [F.cross_entropy(logits[b], torch.full(
            (logits.shape[1], ), experts[b])) for b in range(3)]
        per_layer.append(torch.stack(per_image).mean())
    expected = 0.1 * torch.stack(per_layer).mean()
    torch.testing.assert_close(losses['loss_route'], expected)
    batch_major = [e for _ in range(logits.shape[1]) for e in experts]
    wrong = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                            torch.tensor(batch_major))
    assert not torch.isclose(0.1 * wrong, expected)


def test_loss_route_backpropagates_to_the_gates(model_cfg):
    model = build(model_cfg)
    inputs, samples = make_batch(['photo', 'scan'])
    model.loss(inputs, samples)['loss_route'].backward()
    for _, moe in model.named_moe_layers():
        assert moe.gate.weight.grad.abs().sum() > 0


def test_mixed_batch_trains_gates_to_mapped_experts(model_cfg):
    torch.manual_seed(0)
    # A full routing weight so that a few dozen steps suffice in a test.
    model = build(model_cfg,
                  routing_loss=dict(type='DAMEXLoss', loss_weight=1.0))
    inputs, samples = make_batch(['photo', 'aerial', 'photo'])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    route_losses, accuracy = [], 0.
    for _ in range(40):
        losses = model.loss(inputs, samples)
        total = sum(v for k, v in losses.items() if 'loss' in k)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        route_losses.append(losses['loss_route'].item())
        accuracy = routing_accuracy(model, samples)
        if accuracy == 1.0:
            break
    assert accuracy == 1.0
    assert route_losses[-1] < 0.5 * route_losses[0]


def test_predict_needs_no_dataset(model_cfg):
    model = build(model_cfg).eval()
    inputs, samples = make_batch([None, None])
    with torch.no_grad():
        results = model.predict(inputs, samples)
    for result in results:
        assert 'bboxes' in result.pred_instances
        assert result.routing_counts.shape == (2, 4)
        assert int(result.routing_counts[0].sum()) == model.num_queries


def test_oracle_routing_uses_the_dataset_expert(model_cfg):
    model = build(model_cfg, test_routing='dataset').eval()
    inputs, samples = make_batch(['aerial', 'scan'])
    with torch.no_grad():
        results = model.predict(inputs, samples)
    assert results[0].routing_counts[:, 2].sum() == 2 * model.num_queries
    assert results[1].routing_counts[:, 3].sum() == 2 * model.num_queries


def test_upcycled_model_predicts_like_the_dense_model(model_cfg):
    torch.manual_seed(0)
    dense_cfg = copy.deepcopy(model_cfg)
    dense_cfg.type = 'DINO'
    for key in ('num_experts', 'moe_layers', 'routing_loss',
                'dataset_to_expert'):
        dense_cfg.pop(key)
    dense = MODELS.build(dense_cfg)
    dense.init_weights()
    damex = build(model_cfg, moe_cfg=dict(normalize_weights=True))
    damex.load_state_dict(upcycle_dense_state_dict(damex, dense.state_dict()))
    for name, moe in damex.named_moe_layers():
        dense_ffn = dense.get_submodule(name)
        assert torch.equal(moe.expert_w1[-1], dense_ffn.layers[0][0].weight)
    inputs, samples = make_batch([None])
    dense.eval(), damex.eval()
    with torch.no_grad():
        expected = dense.predict(inputs, copy.deepcopy(samples))[0]
        result = damex.predict(inputs, copy.deepcopy(samples))[0]
    torch.testing.assert_close(result.pred_instances.bboxes,
                               expected.pred_instances.bboxes)
    torch.testing.assert_close(result.pred_instances.scores,
                               expected.pred_instances.scores)


@pytest.mark.parametrize('bad', [4, -1])
def test_expert_index_out_of_range_fails_at_build(model_cfg, bad):
    with pytest.raises(ValueError, match='out of range for num_experts=4'):
        build(model_cfg, dataset_to_expert=dict(photo=0, sketch=bad))


@pytest.mark.parametrize('bad, kind', [(True, 'bool'), (1.0, 'float'),
                                       ('1', 'str')])
def test_expert_index_that_is_not_an_int_fails_at_build(model_cfg, bad, kind):
    # A YAML/JSON-minded `true`, `1.0` or "1" must not pass as expert 1.
    with pytest.raises(ValueError, match=rf"'sketch' to .* \({kind}\), not "
                       r'an expert index: write an int in 0\.\.3'):
        build(model_cfg, dataset_to_expert=dict(photo=0, sketch=bad))


@pytest.mark.parametrize('overrides, message', [
    (dict(spare_experts=[3]), r"lists expert 3, but model\.dataset_to_expert "
     r"maps 'scan' to it"),
    (dict(spare_experts=[4]), r'holds 4, not an expert index in 0\.\.3'),
    (dict(spare_experts=[1], dataset_to_expert=None,
          routing_loss=dict(type='LoadBalancingLoss')),
     r'model\.dataset_to_expert is empty: without a map the gate routes to '
     r'every expert; drop spare_experts'),
])
def test_spare_experts_that_are_not_spare_fail_at_build(model_cfg, overrides,
                                                        message):
    with pytest.raises(ValueError, match=message):
        build(model_cfg, **overrides)


def test_predictions_carry_their_datasets_expert(model_cfg):
    """RoutingMetric reads the model's map from them (no second copy)."""
    model = build(model_cfg, dataset_to_expert=dict(
        photo=2, sketch=0, aerial=1, scan=3)).eval()
    inputs, samples = make_batch(['sketch', 'photo', None])
    with torch.no_grad():
        results = model.predict(inputs, samples)
    assert [r.metainfo.get('dataset_expert') for r in results] == [0, 2, None]


def test_damex_loss_without_map_fails_at_build(model_cfg):
    with pytest.raises(ValueError, match='dataset_to_expert'):
        build(model_cfg, dataset_to_expert=None)


def test_unmapped_dataset_names_the_fix(model_cfg):
    model = build(model_cfg)
    inputs, samples = make_batch(['photo', 'kitti'])
    with pytest.raises(KeyError, match="kitti.*dataset_to_expert"):
        model.loss(inputs, samples)


def test_untagged_training_image_names_the_fix(model_cfg):
    model = build(model_cfg)
    inputs, samples = make_batch(['photo', None])
    with pytest.raises(KeyError, match='DatasetMixture'):
        model.loss(inputs, samples)


def test_vanilla_moe_reports_loss_balance(model_cfg):
    model = build(model_cfg, dataset_to_expert=None,
                  routing_loss=dict(type='LoadBalancingLoss'))
    inputs, samples = make_batch([None, None])
    losses = model.loss(inputs, samples)
    assert 'loss_balance' in losses and 'loss_route' not in losses
    assert isinstance(model, DAMEX)


def test_padded_denoising_queries_do_not_count(model_cfg):
    model = build(model_cfg)
    inputs, samples = make_batch(['photo', 'sketch'])
    samples[1].gt_instances = InstanceData(
        bboxes=torch.tensor([[4., 4., 20., 20.], [30., 30., 60., 60.],
                             [10., 40., 30., 60.]]),
        labels=torch.tensor([0, 1, 2]))
    losses = model.loss(inputs, samples)
    name, moe = next(model.named_moe_layers())
    counted = model.counted_tokens(name, moe, samples)
    num_denoising = counted.shape[1] - model.num_queries
    # Groups of 3 slots: image 0 fills 1 of each, image 1 all 3.
    assert counted[1].all()
    assert counted[0, :num_denoising].sum() == num_denoising // 3
    assert counted[0, :3].tolist() == [True, False, False]
    experts = torch.tensor([0, 1])
    # DAMEXLoss averages over the counted tokens of the batch.
    weights = counted.sum(dim=1).float()
    expected = []
    for _, layer in model.named_moe_layers():
        logits = layer.last_gate_logits
        per_image = torch.stack([F.cross_entropy(
            logits[b][counted[b]], experts[b].expand(int(counted[b].sum())),
            reduction='sum') for b in range(2)])
        expected.append(per_image.sum() / weights.sum())
    torch.testing.assert_close(losses['loss_route'],
                               0.1 * torch.stack(expected).mean())


def test_encoder_moe_counts_every_token_of_unpadded_batches(model_cfg):
    # mmdet gives the encoder no padding mask when all images share a shape.
    model = build(model_cfg, moe_layers=dict(encoder=[0], decoder=[1]))
    inputs, samples = make_batch(['photo', 'scan'])
    losses = model.loss(inputs, samples)
    assert torch.isfinite(losses['loss_route'])
    name, moe = next(model.named_moe_layers())
    assert name == 'encoder.layers.0.ffn'
    assert model.counted_tokens(name, moe, samples).all()

    model.eval()
    with torch.no_grad():
        results = model.predict(inputs, samples)
    num_encoder_tokens = moe.last_gate_logits.shape[1]
    assert results[0].metainfo['moe_layers'][0] == name
    assert int(results[0].routing_counts[0].sum()) == num_encoder_tokens


def test_encoder_moe_skips_padded_feature_positions(model_cfg):
    model = build(model_cfg, moe_layers=dict(encoder=[0], decoder=[1]))
    inputs, samples = make_batch(['photo', 'scan'])
    samples[1].set_metainfo(dict(img_shape=(32, 64)))
    losses = model.loss(inputs, samples)
    assert torch.isfinite(losses['loss_route'])
    name, moe = next(model.named_moe_layers())
    counted = model.counted_tokens(name, moe, samples)
    assert counted[0].all()
    # The second image fills the top half of the batch shape.
    assert 0.4 < counted[1].float().mean() < 0.6


def test_matched_queries_are_the_last_layer_hungarian_matches(model_cfg):
    from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
    model = build(model_cfg, routing_loss_queries='matched')
    inputs, samples = make_batch(['photo', 'sketch'])
    samples[1].gt_instances = InstanceData(
        bboxes=torch.tensor([[4., 4., 20., 20.], [30., 30., 60., 60.],
                             [10., 40., 30., 60.]]),
        labels=torch.tensor([0, 1, 2]))
    head_outputs, loss_inputs = [], []
    model.bbox_head.register_forward_hook(
        lambda module, args, out: head_outputs.append(out))
    model.routing_loss.register_forward_hook(
        lambda module, args, out: loss_inputs.append(args))
    losses = model.loss(inputs, samples)
    cls_scores, bbox_preds = head_outputs[0]  # the head's own loss pass
    logits, targets, masks = loss_inputs[0]
    num_denoising = cls_scores.shape[2] - model.num_queries
    for b, sample in enumerate(samples):
        # mmdet's Hungarian assigner on the last layer's matching queries.
        height, width = sample.img_shape
        scale = torch.tensor([width, height, width, height])
        predictions = InstanceData(
            scores=cls_scores[-1, b, num_denoising:],
            bboxes=bbox_cxcywh_to_xyxy(bbox_preds[-1, b, num_denoising:]) * scale)
        assigned = model.bbox_head.assigner.assign(
            predictions, sample.gt_instances, sample.metainfo)
        expected = torch.zeros(masks[0].shape[1], dtype=torch.bool)
        expected[num_denoising:] = assigned.gt_inds > 0
        assert int(expected.sum()) == len(sample.gt_instances)
        for mask in masks:  # every MoE layer, in the tokens' (batch, query) layout
            assert torch.equal(mask[b], expected)
    expected_loss = torch.stack([
        F.cross_entropy(layer[mask], target[mask])
        for layer, target, mask in zip(logits, targets, masks)]).mean()
    torch.testing.assert_close(losses['loss_route'], 0.1 * expected_loss)


def test_reference_vanilla_moe_loss_on_matched_queries(model_cfg):
    model = build(model_cfg, dataset_to_expert=None,
                  routing_loss=dict(type='LoadImportanceLoss'),
                  routing_loss_queries='matched',
                  moe_cfg=dict(gate_noise_std=0.25))
    inputs, samples = make_batch([None, None])
    losses = model.loss(inputs, samples)
    assert torch.isfinite(losses['loss_balance']) and 'loss_route' not in losses
    losses['loss_balance'].backward()
    for _, moe in model.named_moe_layers():
        assert moe.gate.weight.grad.abs().sum() > 0

    without_noise = build(model_cfg, dataset_to_expert=None,
                          routing_loss=dict(type='LoadImportanceLoss'))
    with pytest.raises(ValueError, match='gate_noise_std > 0'):
        without_noise.loss(inputs, samples)
    with pytest.raises(ValueError, match="'all', 'matched'"):
        build(model_cfg, routing_loss_queries='foreground')


def test_an_image_routes_in_the_encoder_as_if_alone(model_cfg):
    """With a capacity, the encoder MoE keeps the same tokens of a small image
    and gives them the same output whether it is alone or padded into a batch
    with a larger one: N counts its real feature positions only."""
    model = build(model_cfg, moe_layers=dict(encoder=[0], decoder=[1]),
                  moe_cfg=dict(capacity_factor=0.5)).eval()
    moe = model.encoder.layers[0].ffn
    torch.nn.init.normal_(moe.gate.weight, std=1.)  # priorities far from ties
    generator = torch.Generator().manual_seed(0)
    # Strides 8, 16, 32, 64: a 32 px image has 4x4, 2x2, 1x1 and 1x1 maps, a
    # 64 px one 8x8, 4x4, 2x2, 1x1 (mmdet's mask keeps the 1x1 level real).
    small = [torch.rand(1, 256, s, s, generator=generator) for s in (4, 2, 1, 1)]
    large = [torch.rand(2, 256, s, s, generator=generator) for s in (8, 4, 2, 1)]
    for level, feat in zip(large, small):
        level[:1, :, :feat.shape[2], :feat.shape[3]] = feat  # the rest: padding

    def encode(feats, img_shapes):
        samples = [DetDataSample(metainfo=dict(
            img_shape=shape, batch_input_shape=img_shapes[-1]))
            for shape in img_shapes]
        encoder_inputs = model.pre_transformer(tuple(feats), samples)[0]
        with torch.no_grad():
            memory = model.forward_encoder(**encoder_inputs)['memory']
        return memory, moe.last_kept, encoder_inputs['feat_mask']

    memory_alone, kept_alone, no_mask = encode(small, [(32, 32)])
    assert no_mask is None
    assert not kept_alone.all()  # the capacity drops tokens
    memory, kept, mask = encode(large, [(32, 32), (64, 64)])
    real = ~mask[0]
    assert int(real.sum()) == kept_alone.shape[1] == 22
    assert torch.equal(kept[0][real], kept_alone[0])
    assert not kept[0][~real].any()
    torch.testing.assert_close(memory[0][real], memory_alone[0])


def test_padded_denoising_queries_are_not_routed(model_cfg):
    model = build(model_cfg, moe_cfg=dict(capacity_factor=0.5))
    name, moe = next(model.named_moe_layers())
    assert name == 'decoder.layers.0.ffn'
    torch.nn.init.normal_(moe.gate.weight, std=1.)
    calls = []
    moe.register_forward_hook(lambda module, args, out: calls.append(
        (args[0].detach(), module.padding_mask, out.detach(),
         module.last_kept)))
    inputs, samples = make_batch(['photo', 'sketch'])
    model.loss(inputs, samples)
    assert calls[-1][1] is None  # one box each: no denoising slot is empty

    samples[1].gt_instances = InstanceData(
        bboxes=torch.tensor([[4., 4., 20., 20.], [30., 30., 60., 60.],
                             [10., 40., 30., 60.]]),
        labels=torch.tensor([0, 1, 2]))
    model.loss(inputs, samples)
    x, padding, out, kept = calls[-1]
    # The MoE skips exactly the padding that routing losses leave out.
    assert torch.equal(~padding, model.counted_tokens(name, moe, samples))
    assert padding[0].any() and not kept[padding].any()
    # Image 0's real queries routed alone: the same kept set and output.
    real = ~padding[0]
    alone = moe(x[0][real][None])
    assert not moe.last_kept.all()  # the capacity drops queries
    assert torch.equal(moe.last_kept[0], kept[0][real])
    torch.testing.assert_close(alone[0], out[0][real])
