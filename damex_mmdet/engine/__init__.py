from .amp import AmpOptimWrapper
from .atomic_local_backend import AtomicLocalBackend
from .checkpoint import allow_mmengine_checkpoints
from .cpu_distributed import init_cpu_process_group
from .hooks import *  # noqa: F401,F403
from .mmdet_tools import run_mmdet_tool
from .runner import ExactResumeRunner

allow_mmengine_checkpoints()

__all__ = [
    'AmpOptimWrapper', 'AtomicLocalBackend', 'ExactResumeRunner',
    'allow_mmengine_checkpoints', 'init_cpu_process_group', 'run_mmdet_tool'
]
