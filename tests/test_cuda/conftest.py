"""The tests of benchmarks/gpu_check.sh. Those marked ``cuda`` are skipped
where torch sees no GPU, so ``make test`` runs everywhere; gpu_check.sh
refuses to start without one instead."""
import os

import pytest
import torch

# cuBLAS is deterministic only with a fixed workspace, which it reads when
# CUDA starts; collection imports this file before any test touches CUDA.
os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')

# A ``device`` parameter whose CPU variant runs everywhere.
CUDA = pytest.param('cuda', marks=pytest.mark.cuda)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs CUDA')
    for item in items:
        if item.get_closest_marker('cuda'):
            item.add_marker(skip)


@pytest.fixture
def float32_matmuls(monkeypatch):
    """Full float32 matrix products on CUDA (no TF32), for comparisons with
    the CPU."""
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)


@pytest.fixture
def deterministic_algorithms():
    """``torch.use_deterministic_algorithms(True)`` inside the test: an
    operation without a deterministic implementation raises."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)
