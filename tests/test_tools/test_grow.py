"""Growing a trained DAMEX with a new dataset: damex_mmdet/models/grow.py,
damex_mmdet/models/grow_checkpoint.py, its CLI tools/grow_checkpoint.py and
the hooks that train the grown model."""
import copy
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mmdet.apis import DetInferencer, init_detector
from mmdet.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.model import bias_init_with_prob
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from damex_mmdet.apis import infer
from damex_mmdet.demo import DEMO_DATASETS
from damex_mmdet.datasets.label_space import UnifiedLabelSpace
from damex_mmdet.engine.hooks import ExpertLrMultHook
from damex_mmdet.models import (EXPERT_INITS, GATE_INITS, GrowError, MoEFFN,
                                check_grown_expert_map,
                                check_grown_label_space,
                                check_new_dataset_names, fit_new_gate_rows,
                                grow_checkpoint, source_experts_from_counts)

from ..conftest import REPO_ROOT, load_script

OLD_NAMES = ['photo', 'sketch', 'aerial', 'scan']
OLD_CLASSES = 11
OLD_EXPERTS = 4


@pytest.fixture(scope='module')
def tool():
    return load_script('tools/grow_checkpoint.py')


def grow_config(base: Path, root: Path, out: Path, new: dict,
                expert_map: dict, num_experts: int, num_classes: int,
                label_space=None) -> Path:
    """Write a config that inherits ``base`` and appends the datasets
    ``new`` ({name: folder of the tiny mixture it reads}) to both mixtures."""
    base_cfg = Config.fromfile(str(base))
    lines = [f"_base_ = '{base}'",
             f'load_from = {str(out.with_suffix(".pth"))!r}']
    for loader, split in (('train_dataloader', 'train'),
                          ('val_dataloader', 'val')):
        entries = [e.to_dict() for e in base_cfg[loader].dataset.datasets]
        entries += [dict(name=name, data_root=f'{root}/{folder}/',
                         ann_file=f'annotations/{split}.json',
                         img_prefix=f'images/{split}/')
                    for name, folder in new.items()]
        lines.append(f'{loader} = dict(dataset=dict(datasets={entries!r}, '
                     f'label_space={label_space!r}))')
    lines += ['test_dataloader = val_dataloader',
              f'model = dict(num_experts={num_experts}, dataset_to_expert='
              f'{expert_map!r}, bbox_head=dict(num_classes={num_classes}))',
              "val_evaluator = [dict(type='MixtureCocoMetric'), dict(type="
              f"'RoutingMetric', dataset_to_expert={expert_map!r})]",
              'test_evaluator = val_evaluator']
    out.write_text('\n'.join(lines) + '\n')
    return out


@pytest.fixture(scope='module')
def grown(tiny_checkpoint, tiny_mixture, tmp_path_factory):
    """The tiny checkpoint grown with 'xray' (scan's images under another
    name): (old config, old checkpoint, new config, grown checkpoint,
    summary)."""
    old_config, old_ckpt = tiny_checkpoint
    tmp = tmp_path_factory.mktemp('grow')
    new_config = grow_config(
        old_config, tiny_mixture, tmp / 'grown.py', dict(xray='scan'),
        dict(photo=0, sketch=1, aerial=2, scan=3, xray=4), 5, 12)
    out = tmp / 'grown.pth'
    info = grow_checkpoint(str(old_config), str(old_ckpt), str(new_config),
                           str(out))
    return old_config, old_ckpt, new_config, out, info


@pytest.fixture(scope='module')
def grown_mean_gate(grown, tmp_path_factory):
    """``grown`` with the new gate rows at the mean of the old ones."""
    old_config, old_ckpt, new_config, _, _ = grown
    out = tmp_path_factory.mktemp('grow_mean') / 'grown.pth'
    info = grow_checkpoint(str(old_config), str(old_ckpt), str(new_config),
                           str(out), gate_init='mean')
    return old_config, old_ckpt, new_config, out, info


def build(config, checkpoint, **model_options):
    cfg = Config.fromfile(str(config))
    cfg.model.update(model_options)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    model.load_state_dict(state['state_dict'], strict=True)
    return model.eval(), cfg, state['meta']


def old_val_batch(cfg):
    """Two val images of each old dataset, through the model's preprocessor."""
    loader = copy.deepcopy(cfg.val_dataloader.dataset)
    loader.datasets = [e for e in loader.datasets if e.name in OLD_NAMES]
    dataset = DATASETS.build(loader)
    starts = [0] + dataset.cumulative_sizes[:-1]
    return pseudo_collate([dataset[s + i] for s in starts for i in (0, 1)])


def head_outputs(model, batch, oracle: bool):
    """Per-layer class logits and boxes, and every MoE layer's choices."""
    data = model.data_preprocessor(batch, False)
    with ExitStack() as stack, torch.no_grad():
        if oracle:
            experts = model.experts_of(data['data_samples'], 'cpu')
            for _, moe in model.named_moe_layers():
                stack.enter_context(moe.force_experts(experts))
        scores, boxes = model._forward(data['inputs'], data['data_samples'])
    choices = [moe.last_expert_indices[..., 0].clone()
               for _, moe in model.named_moe_layers()]
    return scores, boxes, choices


def assert_old_part_predicts_as_before(old_model, new_model, batch,
                                       oracle: bool):
    old_scores, old_boxes, old_choices = head_outputs(old_model, batch, oracle)
    new_scores, new_boxes, new_choices = head_outputs(new_model, batch, oracle)
    assert new_scores.shape[-1] == OLD_CLASSES + 1
    assert torch.equal(new_boxes, old_boxes)
    for old, new in zip(old_choices, new_choices):
        assert torch.equal(old, new)
    # The 12-row classification layer runs another BLAS kernel than the
    # 11-row one: the same logits up to their last bits (2 ulp at 4.6).
    torch.testing.assert_close(new_scores[..., :OLD_CLASSES], old_scores,
                               rtol=0, atol=2e-6)


@pytest.mark.parametrize('which', ['grown', 'grown_mean_gate'])
def test_grown_model_keeps_old_predictions_at_step_zero(which, request):
    """Where the MoE output does not depend on the softmax mass (renormalised
    top-1 weights), the old part of the grown model is the old model: with
    mean gate rows for every token, with fitted ones for the old datasets'
    tokens the fit measured (these images among them)."""
    old_config, old_ckpt, new_config, out, _ = request.getfixturevalue(which)
    renormalised = dict(moe_cfg=dict(normalize_weights=True))
    old_model, _, _ = build(old_config, old_ckpt, **renormalised)
    new_model, new_cfg, _ = build(new_config, out, **renormalised)
    batch = old_val_batch(new_cfg)
    for oracle in (False, True):
        assert_old_part_predicts_as_before(old_model, new_model, batch, oracle)


def test_default_weights_keep_first_choices_scaled_by_the_new_share(
        grown_mean_gate):
    """With mean gate rows and probability weights every token keeps its
    expert, whose output weight shrinks by the new expert's softmax share,
    as documented."""
    old_config, old_ckpt, new_config, out, _ = grown_mean_gate
    old_model, _, _ = build(old_config, old_ckpt)
    new_model, _, _ = build(new_config, out)
    tokens = torch.randn(2, 50, 256, generator=torch.Generator().manual_seed(0))
    for (_, old), (_, new) in zip(old_model.named_moe_layers(),
                                  new_model.named_moe_layers()):
        with torch.no_grad():
            old_out, new_out = old(tokens), new(tokens)
        assert torch.equal(new.last_expert_indices, old.last_expert_indices)
        old_mass = old.last_gate_logits.exp().sum(-1)
        share = old_mass / (old_mass + old.last_gate_logits.mean(-1).exp())
        torch.testing.assert_close(new_out - tokens,
                                   (old_out - tokens) * share[..., None],
                                   rtol=1e-5, atol=1e-6)


def test_new_rows_and_experts_start_as_documented(grown_mean_gate):
    old_config, old_ckpt, new_config, out, info = grown_mean_gate
    old_model, _, _ = build(old_config, old_ckpt)
    new_model, _, meta = build(new_config, out)
    for old, new in zip(old_model.bbox_head.cls_branches,
                        new_model.bbox_head.cls_branches):
        assert torch.equal(new.weight[:OLD_CLASSES], old.weight)
        assert torch.equal(new.weight[OLD_CLASSES:],
                           torch.zeros_like(new.weight[OLD_CLASSES:]))
        assert new.bias[OLD_CLASSES].item() == pytest.approx(
            bias_init_with_prob(0.01))
    old_embedding = old_model.dn_query_generator.label_embedding.weight
    new_embedding = new_model.dn_query_generator.label_embedding.weight
    assert new_embedding.shape == (OLD_CLASSES + 1, old_embedding.shape[1])
    assert torch.allclose(new_embedding[OLD_CLASSES], old_embedding.mean(0))
    old_moes = dict(old_model.named_moe_layers())
    for name, moe in new_model.named_moe_layers():
        old_moe = old_moes[name]
        source = info['source_experts'][name][OLD_EXPERTS]
        assert 0 <= source < OLD_EXPERTS
        for param in ('expert_w1', 'expert_b1', 'expert_w2', 'expert_b2'):
            new, old = getattr(moe, param), getattr(old_moe, param)
            assert torch.equal(new[:OLD_EXPERTS], old)
            assert torch.equal(new[OLD_EXPERTS], old[source])
        assert torch.allclose(moe.gate.weight[OLD_EXPERTS],
                              old_moe.gate.weight.mean(0))
    classes = meta['dataset_meta']['classes']
    assert len(classes) == OLD_CLASSES + 1 and classes[-1] == 'xray:lesion'
    assert list(meta['dataset_meta']['dataset_names']) == OLD_NAMES + ['xray']
    assert meta['grown'][-1]['new_datasets'] == ['xray']
    # Each new expert copies the old expert that most xray tokens chose.
    for layer, counts in info['new_data_routing'].items():
        xray = counts['xray']
        assert sum(xray) > 0
        assert info['source_experts'][layer][OLD_EXPERTS] == xray.index(
            max(xray))


def test_fitted_gate_rows_of_a_dataset_that_repeats_an_old_one(grown):
    """xray is scan's images under another name: no gate row can send
    xray's tokens to the new expert without taking scan's, so the fit stops
    short of every measured scan token's first choice, and says how far it
    went."""
    old_config, old_ckpt, new_config, out, info = grown
    assert info['gate_init'] == 'fit'
    old_model, _, _ = build(old_config, old_ckpt)
    new_model, cfg, _ = build(new_config, out)
    old_moes = dict(old_model.named_moe_layers())
    for name, moe in new_model.named_moe_layers():
        fit = info['gate_fit'][name]
        assert 0 <= fit['step'] < 1
        assert 0 <= fit['new_tokens_reached'] <= 1
        old_gate = old_moes[name].gate.weight
        assert torch.equal(moe.gate.weight[:OLD_EXPERTS], old_gate)
        assert not torch.equal(moe.gate.weight[OLD_EXPERTS], old_gate.mean(0))


def test_cli_offers_the_package_initialisations(tool):
    """The CLI spells the choices out (it parses before importing the
    package); they must stay the package's."""
    actions = {a.dest: a for a in tool.build_parser()._actions}
    assert tuple(actions['gate_init'].choices) == GATE_INITS
    assert tuple(actions['expert_init'].choices) == EXPERT_INITS


def test_zero_output_experts_start_from_the_shared_path(tool, grown,
                                                       tmp_path, capsys):
    """--expert-init zero_output: the new expert keeps its source's hidden
    layer and outputs nothing, so the tokens it gets start with the shared
    expert alone."""
    old_config, old_ckpt, new_config, _, _ = grown
    out = tmp_path / 'zero.pth'
    tool.main([str(old_config), str(old_ckpt), str(new_config), str(out),
               '--expert-init', 'zero_output'])
    old_model, _, _ = build(old_config, old_ckpt)
    new_model, _, meta = build(new_config, out)
    info = meta['grown'][-1]
    assert info['expert_init'] == 'zero_output'
    # pycocotools prints while the datasets load; the summary follows.
    printed = capsys.readouterr().out.splitlines()
    first = printed.index(
        f"wrote {out}: datasets ['xray'] added, classes {OLD_CLASSES} -> "
        f'{OLD_CLASSES + 1}, experts {OLD_EXPERTS} -> {OLD_EXPERTS + 1}')
    layers = [name for name, _ in new_model.named_moe_layers()]
    assert [line.split(':')[0].strip()
            for line in printed[first + 1:first + 1 + len(layers)]] == layers
    old_moes = dict(old_model.named_moe_layers())
    for name, moe in new_model.named_moe_layers():
        source = info['source_experts'][name][OLD_EXPERTS]
        old = old_moes[name]
        assert torch.equal(moe.expert_w1[OLD_EXPERTS], old.expert_w1[source])
        assert torch.equal(moe.expert_b1[OLD_EXPERTS], old.expert_b1[source])
        assert not moe.expert_w2[OLD_EXPERTS].any()
        assert not moe.expert_b2[OLD_EXPERTS].any()
        assert torch.equal(moe.expert_w2[:OLD_EXPERTS], old.expert_w2)
        tokens = torch.randn(1, 5, moe.embed_dims)
        with torch.no_grad(), moe.force_experts(torch.tensor([OLD_EXPERTS])):
            routed = moe(tokens, identity=torch.zeros_like(tokens))
        expected = (moe.shared(tokens.reshape(-1, moe.embed_dims)).reshape(
            tokens.shape) if moe.shared is not None else 0 * tokens)
        torch.testing.assert_close(routed, expected)


def test_fitted_gate_rows_need_the_old_datasets_val_images(
        tool, tiny_checkpoint, tiny_mixture, tmp_path):
    old_config, old_ckpt = tiny_checkpoint
    new_config = grow_config(
        old_config, tiny_mixture, tmp_path / 'no_old_val.py',
        dict(xray='scan'), dict(photo=0, sketch=1, aerial=2, scan=3, xray=4),
        5, 12)
    cfg = Config.fromfile(str(new_config))
    cfg.val_dataloader.dataset.datasets = [
        e for e in cfg.val_dataloader.dataset.datasets if e.name == 'xray']
    cfg.dump(str(new_config))
    out = tmp_path / 'out.pth'
    with pytest.raises(SystemExit, match="val_dataloader has no images of "
                       "\['photo', 'sketch', 'aerial', 'scan'\].*"
                       '--gate-init mean'):
        tool.main([str(old_config), str(old_ckpt), str(new_config), str(out)])
    tool.main([str(old_config), str(old_ckpt), str(new_config), str(out),
               '--gate-init', 'mean'])
    assert out.is_file()


def test_growing_twice_in_a_row(tool, grown, tiny_mixture, tmp_path):
    _, _, first_config, first_ckpt, _ = grown
    second_config = grow_config(
        first_config, tiny_mixture, tmp_path / 'twice.py', dict(ink='sketch'),
        dict(photo=0, sketch=1, aerial=2, scan=3, xray=4, ink=5), 6, 16)
    out = tmp_path / 'twice.pth'
    tool.main([str(first_config), str(first_ckpt), str(second_config),
               str(out), '--source-expert', '1'])
    model, _, meta = build(second_config, out)
    assert model.num_experts == 6
    assert model.bbox_head.num_classes == 16
    classes = meta['dataset_meta']['classes']
    assert classes[11] == 'xray:lesion' and list(classes[12:]) == [
        'ink:person', 'ink:car', 'ink:house', 'ink:tree']
    assert [g['new_datasets'] for g in meta['grown']] == [['xray'], ['ink']]
    first, _, _ = build(first_config, first_ckpt)
    for (_, moe), (_, old) in zip(model.named_moe_layers(),
                                  first.named_moe_layers()):
        assert torch.equal(moe.expert_w1[:5], old.expert_w1)
        assert torch.equal(moe.expert_w1[5], old.expert_w1[1])


def test_dataset_name_that_exists_stops(tool, tiny_checkpoint, tiny_mixture,
                                        tmp_path):
    old_config, old_ckpt = tiny_checkpoint
    new_config = grow_config(
        old_config, tiny_mixture, tmp_path / 'again.py', dict(photo='scan'),
        dict(photo=0, sketch=1, aerial=2, scan=3), 5, 12)
    with pytest.raises(SystemExit, match="lists dataset 'photo' twice.*"
                       'already has a dataset of that name'):
        tool.main([str(old_config), str(old_ckpt), str(new_config),
                   str(tmp_path / 'out.pth')])
    assert not (tmp_path / 'out.pth').exists()


@pytest.mark.parametrize('case', ['merged_rename', 'new_first', 'duplicates'])
def test_class_list_that_clashes_stops(tool, tiny_checkpoint, tiny_mixture,
                                       tmp_path, case):
    old_config, old_ckpt = tiny_checkpoint
    new_config = grow_config(
        old_config, tiny_mixture, tmp_path / 'clash.py', dict(pets='sketch'),
        dict(photo=0, sketch=1, aerial=2, scan=3, pets=4), 5, 15)
    cfg = Config.fromfile(str(new_config))
    datasets = cfg.train_dataloader.dataset.datasets
    if case == 'merged_rename':
        # photo's 'person' is 'photo:person' in the trained model; merging a
        # new 'person' into it would rename an old class.
        cfg.train_dataloader.dataset.label_space = dict(
            merge_by_name=['photo', 'pets'])
        message = "changes old class 0 from 'photo:person' to 'person'"
    elif case == 'new_first':
        datasets.insert(0, datasets.pop())
        message = "changes old class 0 from 'photo:person' to 'pets:person'"
    else:
        datasets[-1].classes = ['person', 'car', 'person']
        message = ("the new training mixture: dataset 'pets' .*classes are "
                   "listed as \\['person', 'car', 'person'\\]")
    cfg.dump(str(new_config))
    with pytest.raises(SystemExit, match=message):
        tool.main([str(old_config), str(old_ckpt), str(new_config),
                   str(tmp_path / 'out.pth')])


def test_expert_index_out_of_range_stops(tool, tiny_checkpoint, tiny_mixture,
                                         tmp_path):
    old_config, old_ckpt = tiny_checkpoint
    new_config = grow_config(
        old_config, tiny_mixture, tmp_path / 'range.py', dict(xray='scan'),
        dict(photo=0, sketch=1, aerial=2, scan=3, xray=5), 5, 12)
    with pytest.raises(SystemExit, match="maps dataset 'xray' to expert 5, "
                       'out of range for num_experts=5'):
        tool.main([str(old_config), str(old_ckpt), str(new_config),
                   str(tmp_path / 'out.pth')])
    in_range = grow_config(
        old_config, tiny_mixture, tmp_path / 'ok.py', dict(xray='scan'),
        dict(photo=0, sketch=1, aerial=2, scan=3, xray=4), 5, 12)
    with pytest.raises(SystemExit, match='--source-expert 4 is out of range'
                       ': the trained model has experts 0..3'):
        tool.main([str(old_config), str(old_ckpt), str(in_range),
                   str(tmp_path / 'out.pth'), '--source-expert', '4'])


def test_source_expert_is_where_most_tokens_go():
    counts = {'dec0': dict(a=[1, 5, 0], b=[3, 0, 0]),
              'dec1': dict(a=[0, 0, 7], b=[3, 0, 0])}
    assert source_experts_from_counts(counts, {3: ['a', 'b']}) == {
        'dec0': {3: 1}, 'dec1': {3: 2}}
    with pytest.raises(GrowError, match="no token of the datasets \\['c'\\]"):
        source_experts_from_counts(counts, {3: ['c']})


def gate_tokens(centres, per_centre=40, seed=0):
    """Tokens scattered around each row of ``centres``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.cat([c + 0.3 * torch.randn(per_centre, c.numel(),
                                            generator=generator)
                      for c in centres])


def test_fitted_gate_rows_send_a_separable_dataset_to_its_expert():
    # Three old experts read dimensions 0-2; the new dataset lies along
    # dimension 3, which the old gate ignores, so its tokens spread over the
    # old experts and the mean row takes none of them.
    old_gate = torch.cat([3 * torch.eye(3), torch.zeros(3, 5)], dim=1)
    old_tokens = gate_tokens(torch.eye(8)[:3])
    new_tokens = gate_tokens(torch.eye(8)[3:4], seed=1)
    targets = torch.full((len(new_tokens), ), 3)
    rows, step = fit_new_gate_rows(old_gate, old_tokens, new_tokens, targets,
                                   num_added=1)
    assert rows.shape == (1, 8) and 0 < step <= 1
    with_mean = torch.cat([old_gate, old_gate.mean(0, keepdim=True)])
    with_fit = torch.cat([old_gate, rows])
    assert ((new_tokens @ with_mean.T).argmax(-1) == 3).float().mean() < 0.1
    assert ((new_tokens @ with_fit.T).argmax(-1) == 3).float().mean() > 0.95
    assert torch.equal((old_tokens @ with_fit.T).argmax(-1),
                       (old_tokens @ old_gate.T).argmax(-1))


def test_fitted_gate_rows_keep_old_choices_where_datasets_overlap():
    """A new dataset whose tokens are an old one's: the rows stop where the
    first old token would change its expert."""
    old_gate = torch.cat([3 * torch.eye(3), torch.zeros(3, 5)], dim=1)
    old_tokens = gate_tokens(torch.eye(8)[:3])
    new_tokens = old_tokens[:40]
    rows, step = fit_new_gate_rows(old_gate, old_tokens, new_tokens,
                                   torch.full((40, ), 3), num_added=1)
    assert 0 < step < 1
    with_fit = torch.cat([old_gate, rows])
    assert torch.equal((old_tokens @ with_fit.T).argmax(-1),
                       (old_tokens @ old_gate.T).argmax(-1))


def train_grown(new_config, out, work_dir, hooks, iters=2):
    cfg = Config.fromfile(str(new_config))
    cfg.work_dir = str(work_dir)
    cfg.load_from = str(out)
    cfg.randomness = dict(seed=0)
    cfg.train_cfg.update(max_iters=iters, val_interval=iters)
    cfg.update(val_cfg=None, val_dataloader=None, val_evaluator=None)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                        by_epoch=False, interval=iters)
    cfg.custom_hooks = hooks
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner.model


def test_frozen_experts_stay_bit_identical_under_adamw(grown, tmp_path):
    _, _, new_config, out, _ = grown
    start, _, _ = build(new_config, out)
    trained = train_grown(new_config, out, tmp_path, [
        dict(type='ExpertLrMultHook', experts=[0, 1, 2, 3], lr_mult=0.)])
    assert Config.fromfile(str(new_config)).optim_wrapper.optimizer.type \
        == 'AdamW'
    for (name, moe), (_, before) in zip(trained.named_moe_layers(),
                                        start.named_moe_layers()):
        for param in ('expert_w1', 'expert_b1', 'expert_w2', 'expert_b2'):
            now, was = getattr(moe, param), getattr(before, param)
            assert torch.equal(now[:OLD_EXPERTS], was[:OLD_EXPERTS]), name
            assert not torch.equal(now[OLD_EXPERTS], was[OLD_EXPERTS])
        assert not torch.equal(moe.gate.weight, before.gate.weight)


def test_lr_mult_is_a_smaller_adamw_step():
    """lr_mult=m moves the chosen experts exactly as AdamW with lr*m does."""
    torch.manual_seed(0)
    model = torch.nn.ModuleDict(dict(
        ffn=MoEFFN(embed_dims=8, feedforward_channels=16, num_experts=3)))
    weights = model.ffn.expert_w1
    hook = ExpertLrMultHook(experts=[1], lr_mult=0.25)
    runner = SimpleNamespace(model=model)
    hook.before_train(runner)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2,
                                  weight_decay=0.5)
    # The slice alone, under AdamW at the lower rate, fed the same gradients.
    start = weights[1].detach().clone()
    expected = start.clone().requires_grad_()
    reference = torch.optim.AdamW([expected], lr=0.25e-2, weight_decay=0.5)
    for step in range(3):
        hook.before_train_iter(runner, step)
        optimizer.zero_grad()
        model.ffn(torch.randn(40, 8)).square().sum().backward()
        expected.grad = weights.grad[1].clone()
        optimizer.step()
        hook.after_train_iter(runner, step)
        reference.step()
        assert torch.allclose(weights[1], expected, rtol=0, atol=1e-7)
    assert not torch.allclose(weights[1], start)
    with pytest.raises(ValueError, match='has \\[3\\], but ffn has 3 '
                       'experts'):
        ExpertLrMultHook(experts=[3]).expert_parameters(model)


def test_a_model_with_a_shared_expert_grows_exactly(tiny_checkpoint,
                                                     tiny_mixture, tmp_path):
    """The recommended DAMEX (shared expert) grows like the paper's: the
    shared expert is copied, and the old part predicts as before."""
    old_config, old_ckpt = tiny_checkpoint
    shared_config = tmp_path / 'shared.py'
    shared_config.write_text(f"_base_ = '{old_config}'\n"
                             'model = dict(moe_cfg=dict(shared_expert=True))\n')
    cfg = Config.fromfile(str(shared_config))
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    old = torch.load(old_ckpt, map_location='cpu', weights_only=False)
    missing = model.load_state_dict(old['state_dict'], strict=False)
    assert missing.missing_keys and all(
        '.shared.' in k for k in missing.missing_keys)
    shared_ckpt = tmp_path / 'shared.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=old['meta']),
               shared_ckpt)
    new_config = grow_config(
        shared_config, tiny_mixture, tmp_path / 'grown.py', dict(xray='scan'),
        dict(photo=0, sketch=1, aerial=2, scan=3, xray=4), 5, 12)
    out = tmp_path / 'grown.pth'
    grow_checkpoint(str(shared_config), str(shared_ckpt), str(new_config),
                    str(out))
    moe_cfg = dict(shared_expert=True, normalize_weights=True)
    old_model, _, _ = build(shared_config, shared_ckpt, moe_cfg=moe_cfg)
    new_model, new_cfg, _ = build(new_config, out, moe_cfg=moe_cfg)
    old_state, new_state = old_model.state_dict(), new_model.state_dict()
    shared_keys = [k for k in old_state if '.shared.' in k]
    assert shared_keys
    assert all(torch.equal(old_state[k], new_state[k]) for k in shared_keys)
    assert_old_part_predicts_as_before(old_model, new_model,
                                       old_val_batch(new_cfg), oracle=False)


def test_load_from_the_ungrown_checkpoint_stops(grown, tmp_path):
    _, old_ckpt, new_config, _, _ = grown
    with pytest.raises(ValueError, match='does not fit the model: bbox_head'
                       '.cls_branches.0.weight has shape \\(11, 256\\), the '
                       'model needs \\(12, 256\\).*tools/grow_checkpoint.py'):
        train_grown(new_config, old_ckpt, tmp_path, [dict(
            type='StrictLoadHook',
            hint='Write load_from with tools/grow_checkpoint.py.')])


@pytest.mark.parametrize('base, grown', [
    ('demo/grow_damex_demo_base.py', 'demo/grow_damex_demo_add_scan.py'),
    ('examples/damex_custom_mixture.py', 'examples/grow_custom_mixture.py'),
    ('examples/damex_custom_mixture_demo_size.py',
     'examples/grow_custom_mixture_demo_size.py')])
def test_grow_configs_extend_their_base(base, grown):
    old = Config.fromfile(str(REPO_ROOT / 'configs' / base))
    new = Config.fromfile(str(REPO_ROOT / 'configs' / grown))
    old_names = [e.name for e in old.train_dataloader.dataset.datasets]
    new_names = [e.name for e in new.train_dataloader.dataset.datasets]
    added = check_new_dataset_names(old_names, new_names)
    assert [e.name for e in new.val_dataloader.dataset.datasets] == new_names
    new_experts = check_grown_expert_map(
        old.model.dataset_to_expert, old.model.num_experts,
        new.model.dataset_to_expert, new.model.num_experts, added)
    hook = next(h for h in new.custom_hooks if h.type == 'ExpertLrMultHook')
    assert hook.experts == list(range(old.model.num_experts))
    ratios = new.train_dataloader.sampler.ratios
    assert set(ratios) == set(new_names)
    # Each expert's tokens weigh 1 / its dataset's ratio in the routing loss:
    # every expert holds the same share of it, whatever the replay shares.
    weights = new.model.routing_loss.expert_weight
    assert len(weights) == new.model.num_experts
    shares = {ratios[name] * weights[expert]
              for name, expert in new.model.dataset_to_expert.items()}
    assert shares == {1.0}
    assert any(h.type == 'StrictLoadHook' for h in new.custom_hooks)
    if base.startswith('demo'):
        assert new_experts == {3: ['scan']}
        classes = {spec.name: spec.classes for spec in DEMO_DATASETS}
        old_space = UnifiedLabelSpace({n: classes[n] for n in old_names})
        new_space = UnifiedLabelSpace({n: classes[n] for n in new_names})
        assert check_grown_label_space(old_space, new_space) == ('scan', )
        old_space.check_num_classes(old.model.bbox_head.num_classes)
        new_space.check_num_classes(new.model.bbox_head.num_classes)


@pytest.mark.parametrize('config', ['demo/grow_damex_demo_add_scan.py',
                                    'examples/grow_custom_mixture.py',
                                    'examples/grow_custom_mixture_demo_size.py'])
def test_grow_configs_halve_the_rate_of_the_gates_only(config):
    """The grow configs' ``custom_keys=dict(gate=...)`` match by substring:
    they must reach every MoE gate and nothing else."""
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / config))
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    lr_of = {id(p): group['lr'] for group in optimizer.param_groups
             for p in group['params']}
    base_lr = cfg.optim_wrapper.optimizer.lr
    # mmdet's DINO trains its backbone at 0.1x; the demo's at 1x.
    backbone_lr = base_lr * cfg.optim_wrapper.paramwise_cfg.custom_keys[
        'backbone'].lr_mult
    slowed = {name for name, p in model.named_parameters()
              if p.requires_grad and lr_of[id(p)] != (
                  backbone_lr if name.startswith('backbone.') else base_lr)}
    gates = {f'{name}.gate.weight' for name, m in model.named_modules()
             if isinstance(m, MoEFFN)}
    assert gates and slowed == gates
    assert {lr_of[id(p)] for name, p in model.named_parameters()
            if name in gates} == {base_lr * 0.5}


def test_inference_names_the_new_classes(grown, tiny_mixture, tmp_path,
                                         monkeypatch):
    """mmdet's init_detector and DetInferencer and damex_mmdet.apis.infer
    read the grown checkpoint's class names, old and new, without the
    training data."""
    _, _, new_config, grown_ckpt, _ = grown
    monkeypatch.chdir(tmp_path)
    image = str(sorted((tiny_mixture / 'scan' / 'images' / 'val').iterdir())[0])
    stored = torch.load(str(grown_ckpt), map_location='cpu',
                        weights_only=False)['meta']['dataset_meta']['classes']
    stored = list(stored)
    assert stored[:OLD_CLASSES] == [f'{spec.name}:{c}' for spec in DEMO_DATASETS
                                    for c in spec.classes]
    assert stored[OLD_CLASSES:] == ['xray:lesion']

    model = init_detector(str(new_config), str(grown_ckpt), device='cpu')
    assert list(model.dataset_meta['classes']) == stored
    inferencer = DetInferencer(model=str(new_config), weights=str(grown_ckpt),
                               device='cpu', show_progress=False)
    assert list(inferencer.visualizer.dataset_meta['classes']) == stored

    restricted = infer(
        image, str(new_config), str(grown_ckpt), str(tmp_path / 'out'),
        dataset='xray', score_thr=0, device='cpu', progress=False)
    assert {i['class'] for i in restricted[0]['instances']} == {'xray:lesion'}
