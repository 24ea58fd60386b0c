"""Every shipped config's expert map fits its training mixture as DAMEX
checks it before the first step, and is written once: RoutingMetric reads
the model's."""
import pytest
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope

import damex_mmdet  # noqa: F401

from .conftest import REPO_ROOT

CONFIGS = sorted(str(p.relative_to(REPO_ROOT / 'configs'))
                 for p in (REPO_ROOT / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)


@pytest.mark.parametrize('name', CONFIGS)
def test_expert_map_fits_the_training_mixture(name):
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / name))
    evaluators = cfg.get('val_evaluator') or []
    for evaluator in (evaluators if isinstance(evaluators, list)
                      else [evaluators]):
        assert 'dataset_to_expert' not in evaluator, (
            f'{name}: RoutingMetric reads the model\'s map')
    if cfg.model.type != 'DAMEX':
        return
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    train = [d.name for d in cfg.train_dataloader.dataset.datasets]
    model.check_training_map(train)
