"""Shared fixtures: a tiny generated mixture, the tiny DAMEX config and a
checkpoint of it."""
import copy
import importlib.util
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared'
# Real photos with their original annotation files (CI has shared/ too).
REALDATA = SHARED / 'realdata'
TINY_CONFIG = REPO_ROOT / 'configs' / 'tiny' / 'damex_tiny.py'


def load_script(relative_path: str):
    """The module of a script of the repository (tools/, benchmarks/),
    which are not packages."""
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def tiny_mixture(tmp_path_factory):
    """A small demo mixture on disk (8 train / 4 val images per dataset)."""
    from damex_mmdet.demo import generate_demo_mixture
    root = tmp_path_factory.mktemp('tiny_mixture')
    generate_demo_mixture(root, seed=0, num_train=8, num_val=4, num_test=4,
                          progress=False)
    return root


def point_at_mixture(cfg: Config, root: Path) -> Config:
    """Redirect every mixture entry of ``cfg`` to the mixture at ``root``."""
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for entry in cfg[loader].dataset.datasets:
            entry.data_root = f'{root}/{entry.name}/'
    return cfg


@pytest.fixture
def tiny_cfg(tiny_mixture, tmp_path):
    """The tiny DAMEX config on the tiny mixture, writing into tmp_path."""
    cfg = Config.fromfile(str(TINY_CONFIG))
    cfg.work_dir = str(tmp_path / 'work_dir')
    return point_at_mixture(cfg, tiny_mixture)


@pytest.fixture(scope='session')
def tiny_checkpoint(tiny_mixture, tmp_path_factory):
    """The tiny DAMEX config on the tiny mixture (val data included) and its
    weights after one training iteration: (config path, checkpoint path)."""
    work_dir = tmp_path_factory.mktemp('tiny_checkpoint')
    cfg = point_at_mixture(Config.fromfile(str(TINY_CONFIG)), tiny_mixture)
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)
    # Not damex_tiny.py: the runner dumps its own (val-less) copy there.
    config_path = work_dir / 'damex_tiny_with_val.py'
    cfg.dump(str(config_path))
    train = copy.deepcopy(cfg)
    train.train_cfg.update(max_iters=1, val_interval=1)
    train.update(val_cfg=None, val_dataloader=None, val_evaluator=None)
    train.default_hooks.checkpoint = dict(type='CheckpointHook',
                                          by_epoch=False, interval=1)
    Runner.from_cfg(train).train()
    return config_path, work_dir / 'iter_1.pth'
