"""The shipped configs parse, build, and agree with their datasets."""
import inspect
import json
import shutil

import pytest
from mmdet.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.registry import LOOPS, init_default_scope

import damex_mmdet  # noqa: F401
from damex_mmdet.datasets.uodb_classes import UODB_CLASSES

from .conftest import REPO_ROOT


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


@pytest.mark.parametrize('name, model_type, loss', [
    ('dino_udb', 'DINO', None),
    ('dino_wide_udb', 'LayerwiseDINO', None),
    ('moe_udb', 'DAMEX', 'LoadImportanceLoss'),
    ('damex_udb', 'DAMEX', 'DAMEXLoss'),
    ('damex_paper_udb', 'DAMEX', 'DAMEXLoss'),
])
def test_uodb_recipe(name, model_type, loss):
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / f'{name}.py'))
    assert cfg.model.type == model_type
    assert cfg.model.bbox_head.num_classes == 167
    train = [d.name for d in cfg.train_dataloader.dataset.datasets]
    assert train == list(UODB_CLASSES)
    assert len(cfg.val_dataloader.dataset.datasets) == 11
    if loss:
        assert cfg.model.routing_loss.type == loss
        assert cfg.model.num_experts == 8
        assert list(cfg.model.moe_layers.decoder) == [0, 2, 4]
    # The reference's run: 8 GPUs x 1 image, StepLR(step_size=11) for 36 epochs.
    assert cfg.train_dataloader.batch_size == 1
    assert cfg.optim_wrapper.optimizer.lr == 1.4e-4
    assert cfg.train_cfg.max_epochs == 36
    assert [s.milestones for s in cfg.param_scheduler] == [[11, 22, 33]]
    assert cfg.runner_type == 'ExactResumeRunner'
    if name == 'moe_udb':
        # The reference's vanilla MoE: tutel's loss on matched queries, with gate noise.
        assert cfg.model.routing_loss.loss_weight == 0.1
        assert cfg.model.routing_loss_queries == 'matched'
        assert cfg.model.moe_cfg.gate_noise_std == 1 / 8
    if loss:
        # The recommended DAMEX adds a shared expert; the paper's and the
        # reference's vanilla MoE have none.
        shared = cfg.model.get('moe_cfg', {}).get('shared_expert', False)
        assert shared == (name == 'damex_udb')
    if name in ('damex_udb', 'damex_paper_udb'):
        experts = cfg.model.dataset_to_expert
        assert experts.voc07 == experts.voc12 == experts.comic == experts.coco
        assert experts.kitti == experts.lisa
        assert len(set(experts.values())) == 8
        cfg.model.backbone.init_cfg = None
        model = MODELS.build(cfg.model)
        model.check_datasets(train)
    if name == 'dino_wide_udb':
        # As wide as damex_udb's shared expert plus one routed expert, in
        # exactly its MoE layers.
        cfg.model.backbone.init_cfg = None
        model = MODELS.build(cfg.model)
        widths = [layer.ffn.layers[0][0].out_features
                  for layer in model.decoder.layers]
        assert widths == [4096, 2048, 4096, 2048, 4096, 2048]


@pytest.mark.parametrize('name', ['damex_custom_mixture', 'damex_custom_mixture_demo_size'])
def test_custom_mixture_example(name, tiny_mixture, tmp_path, monkeypatch):
    """The own-data examples, full and demo size, on two of the tiny datasets renamed."""
    for source, target in (('photo', 'pets'), ('aerial', 'cars')):
        shutil.copytree(tiny_mixture / source, tmp_path / 'data' / target)
    pets = tmp_path / 'data' / 'pets' / 'annotations'
    for split in ('train', 'val'):
        content = json.loads((pets / f'{split}.json').read_text())
        content['categories'] = [dict(c, name=n) for c, n in zip(
            content['categories'], ('cat', 'dog', 'bird'))]
        (pets / f'{split}.json').write_text(json.dumps(content))
    for split in ('train', 'val'):
        (tmp_path / 'data' / 'pets' / 'images' / split).rename(
            tmp_path / 'data' / 'pets' / f'images_{split}')
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / 'examples' / f'{name}.py'))
    for entry in (cfg.train_dataloader.dataset.datasets
                  + cfg.val_dataloader.dataset.datasets):
        split = 'train' if 'train' in entry.ann_file else 'val'
        entry.img_prefix = (f'data/pets/images_{split}/' if entry.name ==
                            'pets' else f'data/cars/images/{split}/')
    mixture = DATASETS.build(cfg.train_dataloader.dataset)
    assert mixture.metainfo['classes'] == (
        'pets:cat', 'pets:dog', 'cars:plane', 'cars:ship', 'cars:vehicle')
    assert cfg.model.bbox_head.num_classes == len(mixture.metainfo['classes'])
    assert mixture[0]['data_samples'].metainfo['dataset'] == 'pets'
    # The demo-size map replaces the demo's (photo, sketch, ...), not merged.
    assert cfg.model.dataset_to_expert == dict(pets=0, cars=1)
    cfg.model.backbone.init_cfg = None
    MODELS.build(cfg.model).check_datasets(['pets', 'cars'])


def check_schedule(cfg: Config, where: str) -> str:
    """Check that ``cfg``'s train loop takes its ``train_cfg`` and that its schedulers
    and checkpoints count in the loop's unit; return the loop type."""
    loop = dict(cfg.train_cfg)
    loop_type = loop.pop('type')
    loop.pop('_scope_', None)  # written by mmengine for an 'mmdet::' base
    try:
        inspect.signature(LOOPS.get(loop_type)).bind(None, None, **loop)
    except TypeError as error:
        raise AssertionError(f'{where}: {loop_type} {error}') from None
    by_epoch = loop_type == 'EpochBasedTrainLoop'
    # mmengine's schedulers and CheckpointHook count epochs unless told otherwise.
    assert all(s.get('by_epoch', True) == by_epoch for s in cfg.param_scheduler), where
    assert cfg.default_hooks.checkpoint.get('by_epoch', True) == by_epoch, where
    assert cfg.log_processor.get('by_epoch', True) == by_epoch, where
    return loop_type


@pytest.mark.parametrize('base, grown, loop_type', [
    ('examples/damex_custom_mixture.py', 'examples/grow_custom_mixture.py',
     'EpochBasedTrainLoop'),
    ('examples/damex_custom_mixture_demo_size.py',
     'examples/grow_custom_mixture_demo_size.py', 'IterBasedTrainLoop'),
    ('demo/grow_damex_demo_base.py', 'demo/grow_damex_demo_add_scan.py',
     'IterBasedTrainLoop'),
])
def test_grow_examples_keep_their_base_schedule_type(base, grown, loop_type):
    old = Config.fromfile(str(REPO_ROOT / 'configs' / base))
    new = Config.fromfile(str(REPO_ROOT / 'configs' / grown))
    assert check_schedule(old, base) == check_schedule(new, grown) == loop_type
    experts = new.model.dataset_to_expert
    assert {k: v for k, v in experts.items() if k in old.model.dataset_to_expert} == dict(
        old.model.dataset_to_expert)
    assert sorted(experts.values()) == list(range(new.model.num_experts))


def test_epoch_growth_on_an_iteration_base_is_what_the_check_catches(tmp_path):
    """grow_custom_mixture.py's schedule lines copied onto the demo-size base: mmengine
    would stop with an unexpected 'max_epochs'; grow_custom_mixture_demo_size.py is
    the growth example for that base."""
    epoch_growth = (REPO_ROOT / 'configs' / 'examples' / 'grow_custom_mixture.py').read_text()
    schedule = epoch_growth[epoch_growth.index('train_cfg = '):
                            epoch_growth.index('# The gates')]
    base = REPO_ROOT / 'configs' / 'examples' / 'damex_custom_mixture_demo_size.py'
    copied = tmp_path / 'grow_copied.py'
    copied.write_text(f'_base_ = {str(base)!r}\n{schedule}')
    with pytest.raises(AssertionError, match="IterBasedTrainLoop.*'max_epochs'"):
        check_schedule(Config.fromfile(str(copied)), 'copied')


@pytest.mark.parametrize('name, loss, queries', [
    ('moe_demo', 'LoadBalancingLoss', 'all'),
    ('moe_paper_demo', 'LoadImportanceLoss', 'matched'),
])
def test_demo_vanilla_moe_baselines(name, loss, queries):
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / 'demo' / f'{name}.py'))
    assert cfg.runner_type == 'ExactResumeRunner'
    assert 'seed' not in cfg.get('randomness', {})
    model = MODELS.build(cfg.model)
    assert type(model.routing_loss).__name__ == loss
    assert model.routing_loss_queries == queries
    assert model.dataset_to_expert == {}
    if name == 'moe_paper_demo':
        assert model.routing_loss.loss_weight == 0.1
        assert all(moe.gate_noise_std == 1 / 4 for _, moe in model.named_moe_layers())


def test_recommended_demo_damex_is_the_papers_plus_a_shared_expert_and_sampler():
    def resolved(name):
        return Config.fromfile(
            str(REPO_ROOT / 'configs' / 'demo' / f'{name}.py')).to_dict()
    recommended, paper = resolved('damex_demo'), resolved('damex_paper_demo')
    assert recommended['model'].pop('moe_cfg') == dict(shared_expert=True)
    assert 'moe_cfg' not in paper['model']
    # ... trained with the sampler the study recommends it with.
    assert recommended['train_dataloader'].pop('sampler') == dict(
        type='MixtureSampler', mode='temperature', temperature=2.0)
    assert paper['train_dataloader'].pop('sampler')['mode'] == 'proportional'
    assert recommended == paper
    model = MODELS.build(Config.fromfile(
        str(REPO_ROOT / 'configs' / 'demo' / 'damex_demo.py')).model)
    assert all(moe.shared is not None for _, moe in model.named_moe_layers())
    # The baselines stay without one; the growth recipe grows the
    # recommended model.
    for name in ('moe_demo', 'moe_paper_demo'):
        assert 'shared_expert' not in resolved(name)['model'].get('moe_cfg', {})
    assert resolved('grow_damex_demo_base')['model']['moe_cfg'] == dict(
        shared_expert=True)


@pytest.mark.parametrize('name', sorted(p.stem for p in (REPO_ROOT / 'configs' / 'demo').glob('*.py')))
def test_demo_configs_report_on_the_held_out_test_split(name):
    """Val chooses, test reports: `tools/test.py` on a demo config scores the
    test split of the same datasets its val split holds."""
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / 'demo' / f'{name}.py'))
    val = cfg.val_dataloader.dataset.datasets
    test = cfg.test_dataloader.dataset.datasets
    assert [d.name for d in test] == [d.name for d in val]
    assert all(d.ann_file == 'annotations/test.json' and d.img_prefix == 'images/test/'
               for d in test), test
    assert all(d.ann_file == 'annotations/val.json' for d in val)
