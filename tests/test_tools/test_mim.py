"""`mim train` and `mim test` run DAMEX through mmdet's own tools."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import TINY_CONFIG

MIM = Path(sys.executable).parent / 'mim'


def run(args, cwd):
    # A user's shell: no PYTHONPATH or torch.load override, only the venv.
    env = {k: v for k, v in os.environ.items()
           if k not in ('PYTHONPATH', 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD',
                        'TORCH_FORCE_WEIGHTS_ONLY_LOAD')}
    result = subprocess.run([str(MIM), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.skipif(not MIM.exists(), reason='openmim is not installed')
def test_mim_train_then_test(tiny_mixture, tmp_path):
    # The config's default data root is data/demo_mixture, relative to the
    # working directory, as for a user who generated the demo mixture there.
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'demo_mixture').symlink_to(tiny_mixture)
    work_dir = tmp_path / 'work_dir'
    run(['train', 'mmdet', str(TINY_CONFIG), '--work-dir', str(work_dir)],
        cwd=tmp_path)
    checkpoint = work_dir / 'iter_2.pth'
    assert checkpoint.exists()
    meta = torch.load(checkpoint, map_location='cpu')['meta']
    assert meta['dataset_meta']['classes'][0] == 'photo:person'

    output = run(['test', 'mmdet', str(TINY_CONFIG), '--checkpoint',
                  str(checkpoint), '--work-dir', str(tmp_path / 'test_dir')],
                 cwd=tmp_path)
    assert 'mixture/mean/AP50' in output
    assert 'routing/mean/acc' in output
    logs = sorted((tmp_path / 'test_dir').rglob('*.json'))
    assert logs, 'mim test wrote no metrics json'
    assert 'mixture/photo/AP' in json.loads(logs[-1].read_text())
