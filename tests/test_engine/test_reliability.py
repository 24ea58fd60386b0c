"""Atomic checkpoints, non-finite losses and model/data mismatches."""
import os

import pytest
from mmdet.registry import HOOKS
from mmengine.fileio import get_file_backend
from mmengine.hooks import Hook
from mmengine.runner import Runner

import damex_mmdet  # noqa: F401


def test_atomic_backend_replaces_whole_files(tmp_path):
    backend = get_file_backend(str(tmp_path),
                               backend_args=dict(backend='atomic_local'))
    target = tmp_path / 'ckpt' / 'latest.pth'
    backend.put(b'old checkpoint', target)
    assert target.read_bytes() == b'old checkpoint'
    backend.put_text('new', target)
    assert target.read_text() == 'new'
    assert os.listdir(target.parent) == ['latest.pth']


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    backend = get_file_backend(str(tmp_path),
                               backend_args=dict(backend='atomic_local'))
    target = tmp_path / 'latest.pth'
    backend.put(b'good', target)

    def disk_full(fd):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', disk_full)
    with pytest.raises(OSError, match='No space'):
        backend.put(b'truncat', target)
    assert target.read_bytes() == b'good'
    assert os.listdir(tmp_path) == ['latest.pth']


@HOOKS.register_module()
class PoisonLossHook(Hook):
    """Turns the logged loss of one iteration into NaN, as a diverged
    step would, ahead of the hooks under test."""

    priority = 'HIGHEST'

    def __init__(self, at_iter):
        self.at_iter = at_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter + 1 == self.at_iter:
            outputs['loss'] = outputs['loss'] * float('nan')


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cfg):
    tiny_cfg.train_cfg.max_iters = 4
    tiny_cfg.default_hooks.checkpoint.interval = 1
    tiny_cfg.default_hooks.checkpoint.max_keep_ckpts = 5
    tiny_cfg.default_hooks.checkpoint.save_best = None
    tiny_cfg.custom_hooks.append(dict(type='PoisonLossHook', at_iter=3))
    runner = Runner.from_cfg(tiny_cfg)
    with pytest.raises(FloatingPointError) as error:
        runner.train()
    message = str(error.value)
    assert 'iteration 3' in message and 'images' in message
    assert any(name in message for name in ('photo', 'sketch', 'aerial',
                                            'scan'))
    saved = sorted(p.name for p in os.scandir(tiny_cfg.work_dir)
                   if p.name.endswith('.pth'))
    assert saved == ['iter_1.pth', 'iter_2.pth']


def test_head_num_classes_must_fit_the_mixture(tiny_cfg):
    tiny_cfg.model.bbox_head.num_classes = 5
    with pytest.raises(ValueError, match='num_classes=11'):
        Runner.from_cfg(tiny_cfg).train()


def test_val_dataset_unseen_in_training_is_refused(tiny_cfg):
    train = tiny_cfg.train_dataloader.dataset.datasets
    tiny_cfg.train_dataloader.dataset.datasets = train[:3]
    tiny_cfg.model.bbox_head.num_classes = 10
    # The map fits training (scan's expert spare): only the val mixture is
    # wrong.
    tiny_cfg.model.dataset_to_expert = dict(photo=0, sketch=1, aerial=2)
    tiny_cfg.model.spare_experts = [3]
    with pytest.raises(ValueError, match="'scan', which the model"):
        Runner.from_cfg(tiny_cfg).train()
