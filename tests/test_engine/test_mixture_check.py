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
from mmengine.runner import Runner

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
