"""A run killed with SIGKILL and resumed equals an uninterrupted run.

The run sets no ``randomness.seed``, as the shipped configs do: the killed run
draws its own, and the resumed process must find it itself. It loads data with
a random flip, like the demo configs (a persistent worker process) and without
workers (the flips then draw from the main process's generators), so the sample
order, the workers' seeds and the augmentations must all be the killed run's.
The uninterrupted run is the same run: the killed run's seed, never killed.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import REPO_ROOT, TINY_CONFIG

RUN_CONFIG = f"""
_base_ = '{TINY_CONFIG}'
# Killed after iteration 3, resumed from iteration 2 for four iterations: with
# generators set at the wrong point, later flips repeat or skip draws, and so
# many flips are unlikely to agree by chance.
max_iters = 6
train_cfg = dict(max_iters=max_iters, val_interval=100)
train_dataloader = dict(
    num_workers={{num_workers}}, persistent_workers={{num_workers}} > 0,
    dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='Resize', scale=(64, 64), keep_ratio=True),
        dict(type='PackDetInputs')
    ]))
default_hooks = dict(checkpoint=dict(interval=2, max_keep_ckpts=3,
                                     save_best=None))
"""
KILL_CONFIG = """
_base_ = './run.py'
custom_imports = dict(imports=['damex_mmdet', 'sigkill_hook'])
custom_hooks = [
    dict(type='MixtureCheckHook'),
    dict(type='FiniteLossHook'),
    dict(type='RNGStateHook'),
    dict(type='SigkillHook', at_iter=3)
]
"""


def train(config, work_dir, cwd, *extra):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / 'train.py'), str(config),
         '--work-dir', str(work_dir), *extra],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize('num_workers', [0, 1])
def test_sigkill_then_resume_matches_uninterrupted_run(tiny_mixture, tmp_path,
                                                       num_workers):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'demo_mixture').symlink_to(tiny_mixture)
    (tmp_path / 'run.py').write_text(RUN_CONFIG.format(num_workers=num_workers))
    (tmp_path / 'kill.py').write_text(KILL_CONFIG)

    killed = train(tmp_path / 'kill.py', tmp_path / 'resumed', tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / 'resumed' / 'iter_2.pth').exists()
    assert not (tmp_path / 'resumed' / 'iter_4.pth').exists()

    seed = torch.load(tmp_path / 'resumed' / 'iter_2.pth')['meta']['seed']
    straight = train(tmp_path / 'run.py', tmp_path / 'straight', tmp_path,
                     '--cfg-options', f'randomness.seed={seed}')
    assert straight.returncode == 0, straight.stderr[-3000:]

    resumed = train(tmp_path / 'run.py', tmp_path / 'resumed', tmp_path,
                    '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed' in (resumed.stdout + resumed.stderr).lower()

    expected = torch.load(tmp_path / 'straight' / 'iter_6.pth')
    result = torch.load(tmp_path / 'resumed' / 'iter_6.pth')
    assert result['meta']['iter'] == expected['meta']['iter'] == 6
    for key, value in expected['state_dict'].items():
        torch.testing.assert_close(result['state_dict'][key], value,
                                   rtol=1e-5, atol=1e-6, msg=key)
    exp_opt = expected['optimizer']['state']
    res_opt = result['optimizer']['state']
    for index in exp_opt:
        torch.testing.assert_close(res_opt[index]['exp_avg'],
                                   exp_opt[index]['exp_avg'],
                                   rtol=1e-5, atol=1e-6)
