"""The model/mixture consistency check runs without MixtureCheckHook.

A ``num_classes`` too small would stop deep in torch (an IndexError, or a
device-side assert on a GPU) at the first box of a late dataset, and a too
large one would train logits no dataset labels; both must stop with the
value to set, in DAMEX and in a dense DINO with ``DatasetAwareDINOHead``.

Not covered: a dense DINO whose ``num_classes`` is too small, in training,
when the first batch holds a box beyond it. mmdet's DINO embeds the
denoising labels before its head sees the batch, so only
MixtureCheckHook (in every shipped config) stops that case by name.
"""
import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from ..conftest import REPO_ROOT

DAMEX_ONLY_KEYS = ('num_experts', 'moe_layers', 'routing_loss', 'dataset_to_expert')


def without_check_hook(cfg, model: str, num_classes: int):
    """``cfg`` as a user who never heard of MixtureCheckHook writes it."""
    cfg.custom_hooks = [h for h in cfg.get('custom_hooks', [])
                        if h['type'] != 'MixtureCheckHook']
    if model == 'DINO':
        for key in DAMEX_ONLY_KEYS:
            cfg.model.pop(key)
        cfg.model.type = 'DINO'
        cfg.test_evaluator = dict(type='MixtureCocoMetric')
    cfg.model.bbox_head.num_classes = num_classes
    cfg.train_cfg.max_iters = 1
    cfg.update(val_cfg=None, val_dataloader=None, val_evaluator=None)
    return cfg


def wrong_num_classes(num_classes: int) -> str:
    return (rf'model.bbox_head.num_classes is {num_classes}, but the '
            rf'DatasetMixture of \[.photo., .sketch., .aerial., .scan.\] has '
            rf'11 unified classes; set model.bbox_head.num_classes=11')


@pytest.mark.parametrize('model,num_classes', [('DAMEX', 10), ('DAMEX', 12),
                                               ('DINO', 12)])
def test_training_stops_on_a_wrong_num_classes(tiny_cfg, model, num_classes):
    runner = Runner.from_cfg(without_check_hook(tiny_cfg, model, num_classes))
    with pytest.raises(ValueError, match=wrong_num_classes(num_classes)):
        runner.train()


@pytest.mark.parametrize('model', ['DAMEX', 'DINO'])
@pytest.mark.parametrize('num_classes', [10, 12])
def test_testing_stops_on_a_wrong_num_classes(tiny_cfg, model, num_classes):
    runner = Runner.from_cfg(without_check_hook(tiny_cfg, model, num_classes))
    with pytest.raises(ValueError, match=wrong_num_classes(num_classes)):
        runner.test()


def test_a_dataset_without_expert_stops_before_the_first_step(tiny_cfg):
    """Not when its first image comes, which may be mid-epoch."""
    cfg = without_check_hook(tiny_cfg, 'DAMEX', 11)
    cfg.model.dataset_to_expert = dict(photo=0, sketch=1, aerial=2)
    # In mixture order the first batch is photo's: no scan image in it.
    cfg.train_dataloader.sampler = dict(type='DefaultSampler', shuffle=False)
    with pytest.raises(KeyError, match=r"\['scan'\] have no expert"):
        Runner.from_cfg(cfg).train()


def user_config(tmp_path, tiny_mixture, base: str, model: str,
                custom_hooks: str = '') -> str:
    """A user's config: ``base`` (a shipped config) on three datasets of
    their own, here three tiny datasets under other names, with the given
    ``model = dict(...)`` arguments."""
    def entries(split):
        return [dict(name=name, data_root=f'{tiny_mixture}/{folder}/',
                     ann_file=f'annotations/{split}.json',
                     img_prefix=f'images/{split}/')
                for name, folder in (('voc', 'photo'), ('faces', 'sketch'),
                                     ('terrain', 'aerial'))]
    path = tmp_path / 'my_damex.py'
    path.write_text('\n'.join([
        f"_base_ = '{REPO_ROOT / base}'",
        f"work_dir = '{tmp_path / 'work_dir'}'",
        f'model = dict(bbox_head=dict(num_classes=10), {model})',
        f"train_dataloader = dict(dataset=dict(datasets={entries('train')}))",
        f"val_dataloader = dict(dataset=dict(datasets={entries('val')}))",
        'test_dataloader = val_dataloader',
        'train_cfg = dict(max_iters=1, val_interval=1)',
        custom_hooks]) + '\n')
    return str(path)


WITHOUT_HOOK = "custom_hooks = [dict(type='FiniteLossHook')]"
MERGED_MAP = (r"model\.dataset_to_expert maps datasets \['photo', 'sketch', "
              r"'aerial', 'scan'\], which are not in the training mixture "
              r"\(its datasets: \['voc', 'faces', 'terrain'\]\)\. If the "
              r'config inherits another \(_base_\), mmengine merged .*'
              r'dict\(_delete_=True, \.\.\.\)')


@pytest.mark.parametrize('base, hooks', [
    ('configs/tiny/damex_tiny.py', ''),
    ('configs/tiny/damex_tiny.py', WITHOUT_HOOK),
    ('configs/demo/damex_demo.py', ''),
])
def test_a_map_merged_from_the_base_stops_before_the_first_step(
        tmp_path, tiny_mixture, base, hooks):
    """mmengine merges the user's three keys into the base's four: the model
    would train with an expert that no dataset of the mixture reaches."""
    cfg = Config.fromfile(user_config(
        tmp_path, tiny_mixture, base,
        'num_experts=4, dataset_to_expert=dict(voc=0, faces=1, terrain=2)',
        hooks))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=MERGED_MAP):
        runner.train()
    assert runner.iter == 0


def test_a_merged_map_out_of_range_names_the_merge(tmp_path, tiny_mixture):
    cfg = Config.fromfile(user_config(
        tmp_path, tiny_mixture, 'configs/tiny/damex_tiny.py',
        'num_experts=3, dataset_to_expert=dict(voc=0, faces=1, terrain=2)'))
    with pytest.raises(ValueError, match=r"(?s)'scan' to expert 3, out of "
                       r'range.*dict\(_delete_=True, \.\.\.\)'):
        Runner.from_cfg(cfg)


@pytest.mark.parametrize('hooks', ['', WITHOUT_HOOK])
def test_an_expert_without_dataset_stops_unless_spare(tmp_path, tiny_mixture,
                                                      hooks):
    model = ('num_experts=4, dataset_to_expert=dict(_delete_=True, voc=0, '
             'faces=1, terrain=2)')
    runner = Runner.from_cfg(Config.fromfile(
        user_config(tmp_path, tiny_mixture, 'configs/tiny/damex_tiny.py',
                    model, hooks)))
    with pytest.raises(ValueError, match=r'experts \[3\] of '
                       r'model\.num_experts=4 get no dataset.*'
                       r'model\.spare_experts=\[3\]'):
        runner.train()
    assert runner.iter == 0

    runner = Runner.from_cfg(Config.fromfile(
        user_config(tmp_path, tiny_mixture, 'configs/tiny/damex_tiny.py',
                    model + ', spare_experts=[3]', hooks)))
    runner.train()
    assert runner.iter == 1
    # RoutingMetric, given no map of its own, scored the model's.
    scalars = runner.message_hub.log_scalars
    assert {f'val/routing/{n}/acc' for n in ('voc', 'faces', 'terrain')} <= (
        set(scalars))
