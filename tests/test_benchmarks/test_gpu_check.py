"""benchmarks/gpu_check.sh refuses to run, loudly, where there is no GPU."""
import os
import subprocess
import sys

from ..conftest import REPO_ROOT

SCRIPT = REPO_ROOT / 'benchmarks' / 'gpu_check.sh'


def test_gpu_check_fails_in_one_line_without_cuda(tmp_path):
    # No visible device: what a CPU-only machine shows, GPU or not here.
    env = dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES='')
    table = tmp_path / 'gpu_check.md'
    result = subprocess.run([str(SCRIPT), str(table)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stdout == ''
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('gpu_check: FAIL: CUDA is not available')
    assert not table.parent.joinpath('cuda_tests.log').exists()
