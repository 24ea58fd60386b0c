"""Per-layer FFN widths (LayerwiseDINO, DAMEX) and the random-target control."""
import copy

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

from ..conftest import REPO_ROOT, TINY_CONFIG
from .test_damex import build, make_batch, routing_accuracy


@pytest.fixture(scope='module')
def model_cfg():
    init_default_scope('mmdet')
    return Config.fromfile(str(TINY_CONFIG)).model


def dense_cfg(model_cfg, **overrides):
    cfg = copy.deepcopy(model_cfg)
    for key in ('num_experts', 'moe_layers', 'routing_loss', 'dataset_to_expert'):
        cfg.pop(key, None)
    cfg.update(type='LayerwiseDINO', **overrides)
    return cfg


def dense_model(model_cfg, **overrides):
    model = MODELS.build(dense_cfg(model_cfg, **overrides))
    model.init_weights()
    return model


def ffn_widths(coder):
    return [layer.ffn.feedforward_channels for layer in coder.layers]


def test_named_layers_get_their_width_and_the_others_keep_theirs(model_cfg):
    model = MODELS.build(dense_cfg(model_cfg, ffn_channels=dict(
        encoder={0: 96}, decoder={1: 128})))
    assert ffn_widths(model.encoder) == [96]
    assert ffn_widths(model.decoder) == [64, 128]
    assert model.decoder.layers[1].ffn.layers[0][0].out_features == 128


def test_without_widths_it_is_dino(model_cfg):
    plain = dense_cfg(model_cfg)
    dino = copy.deepcopy(plain)
    dino.type = 'DINO'
    layerwise, reference = MODELS.build(plain), MODELS.build(dino)
    assert {k: v.shape for k, v in layerwise.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()}


def test_the_width_control_adds_exactly_the_wider_ffns():
    init_default_scope('mmdet')
    configs = REPO_ROOT / 'configs' / 'demo'

    def parameters(name):
        model = MODELS.build(Config.fromfile(str(configs / name)).model)
        return sum(p.numel() for p in model.parameters())
    dense, wide = parameters('dino_demo.py'), parameters('dino_wide_demo.py')
    # Two decoder layers go from 512 to 1024 hidden units of a 256-d FFN.
    assert wide - dense == 2 * (2 * 256 * 512 + 512)
    # The parameter-matched control matches DAMEX but for each MoE layer's gate
    # (256 x 4) and the output biases of four experts against one FFN's.
    damex = parameters('damex_demo.py')
    assert damex - parameters('dino_params_demo.py') == 2 * (256 * 4 + 4 * 256)


def test_damex_moe_and_dense_layers_take_widths_together(model_cfg):
    model = build(model_cfg, moe_layers=dict(decoder=[0]),
                  ffn_channels=dict(decoder={0: 32, 1: 80}))
    moe, dense = (layer.ffn for layer in model.decoder.layers)
    assert moe.expert_feedforward_channels == 32
    assert dense.feedforward_channels == 80


@pytest.mark.parametrize('ffn_channels, message', [
    (dict(decoder={2: 64}), 'layer index 2 in model.ffn_channels does not exist'),
    (dict(decoder={0: 0}), 'FFN width 0'),
    (dict(neck={0: 64}), "model.ffn_channels has keys \\['neck'\\]"),
])
def test_bad_widths_name_the_option(model_cfg, ffn_channels, message):
    with pytest.raises(ValueError, match=message):
        MODELS.build(dense_cfg(model_cfg, ffn_channels=ffn_channels))


def test_random_targets_are_fixed_per_image_and_ignore_the_dataset(model_cfg):
    model = build(model_cfg, routing_targets='random_per_image')
    _, samples = make_batch(['photo'] * 40)
    experts = model.random_experts_of(samples, torch.device('cpu'))
    assert torch.equal(experts, model.random_experts_of(samples, torch.device('cpu')))
    # Every expert gets images of the one dataset: the map plays no part.
    assert set(experts.tolist()) == set(range(model.num_experts))


def test_random_targets_train_the_gates_towards_them(model_cfg):
    torch.manual_seed(0)
    model = build(model_cfg, routing_targets='random_per_image',
                  routing_loss=dict(type='DAMEXLoss', loss_weight=1.0))
    inputs, samples = make_batch(['photo', 'photo', 'photo'], seed=1)
    targets = model.random_experts_of(samples, torch.device('cpu'))
    assert len(set(targets.tolist())) > 1, 'pick images with different targets'
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(40):
        losses = model.loss(inputs, samples)
        optimizer.zero_grad()
        sum(v for k, v in losses.items() if 'loss' in k).backward()
        optimizer.step()
        hits = [(moe.last_expert_indices[..., 0] == targets[:, None]).float().mean()
                for _, moe in model.named_moe_layers()]
        if float(torch.stack(hits).mean()) == 1.0:
            break
    assert float(torch.stack(hits).mean()) == 1.0
    # ... and so away from the dataset's expert for the images drawn elsewhere.
    assert routing_accuracy(model, samples) < 1.0


def test_unknown_routing_targets_fail_at_build(model_cfg):
    with pytest.raises(ValueError, match='model.routing_targets must be one of'):
        build(model_cfg, routing_targets='shuffled')


PROBE = dict(datasets=['photo', 'sketch', 'aerial', 'scan'], layers=dict(decoder=[0, 1]),
             loss_weight=0.1)


def test_dataset_probe_trains_on_the_layers_tokens_and_leaves_predictions_alone(model_cfg):
    torch.manual_seed(0)
    probed = dense_model(model_cfg, dataset_probe=PROBE)
    torch.manual_seed(0)
    plain = dense_model(model_cfg)
    plain.load_state_dict({k: v for k, v in probed.state_dict().items()
                           if not k.startswith('dataset_probes.')})
    inputs, samples = make_batch(['photo', 'scan'])
    torch.manual_seed(1)
    losses = probed.loss(inputs, samples)
    torch.manual_seed(1)
    plain_losses = plain.loss(inputs, samples)
    # The probe adds its loss and changes no other: it reads the tokens, never writes them.
    assert set(losses) - set(plain_losses) == {'loss_probe'}
    for key, value in plain_losses.items():
        torch.testing.assert_close(losses[key], value)
    losses['loss_probe'].backward()
    assert probed.dataset_probes['decoder_0'].weight.grad.abs().sum() > 0
    # Its gradient reaches the trunk, as DAMEX's routing loss does through the gate.
    assert probed.decoder.layers[0].cross_attn.output_proj.weight.grad.abs().sum() > 0
    probed.eval()
    plain.eval()
    with torch.no_grad():
        for a, b in zip(probed.predict(inputs, samples), plain.predict(inputs, samples)):
            torch.testing.assert_close(a.pred_instances.bboxes, b.pred_instances.bboxes)


def test_dataset_probe_loss_is_the_cross_entropy_of_the_real_tokens(model_cfg):
    model = dense_model(model_cfg, dataset_probe=PROBE)
    inputs, samples = make_batch(['sketch', 'aerial'])
    # Two boxes in the second image: the first image's denoising groups are padded.
    samples[1].gt_instances = samples[1].gt_instances.cat(
        [samples[1].gt_instances, samples[1].gt_instances])
    tokens = {}
    for index in (0, 1):
        model.decoder.layers[index].ffn.register_forward_pre_hook(
            lambda _m, args, index=index: tokens.__setitem__(index, args[0]))
    loss = model.loss(inputs, samples)['loss_probe']
    expected = []
    for index in (0, 1):
        real = model.real_tokens('decoder', tokens[index].shape[:2], samples,
                                 torch.device('cpu'))
        assert not real.all(), 'the batch must hold padding slots'
        logits = model.dataset_probes[f'decoder_{index}'](tokens[index])
        targets = torch.tensor([1, 2])[:, None].expand(real.shape)
        expected.append(torch.nn.functional.cross_entropy(logits[real], targets[real]))
    torch.testing.assert_close(loss, 0.1 * torch.stack(expected).mean())


def test_dataset_probe_refuses_an_unlisted_dataset_and_bad_layers(model_cfg):
    model = dense_model(model_cfg, dataset_probe=dict(PROBE, datasets=['photo']))
    inputs, samples = make_batch(['photo', 'scan'])
    with pytest.raises(KeyError, match="dataset 'scan'.*does not list"):
        model.loss(inputs, samples)
    with pytest.raises(ValueError, match='names decoder layer 5'):
        MODELS.build(dense_cfg(model_cfg, dataset_probe=dict(PROBE, layers=dict(decoder=[5]))))
