"""Distributed training on machines without CUDA."""
import os

import torch
import torch.distributed as dist


def init_cpu_process_group() -> bool:
    """Start a gloo process group for a CPU-only distributed launch.

    mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` before
    creating the process group, which fails where torch has no CUDA. The
    Runner only initialises distribution when no group exists yet, so a
    gloo group created here is the one it uses. Does nothing unless the
    process was started by a distributed launcher (``RANK`` and
    ``WORLD_SIZE`` set) on a machine without CUDA.

    Returns:
        bool: Whether a process group was created.
    """
    launched = 'RANK' in os.environ and 'WORLD_SIZE' in os.environ
    if not launched or torch.cuda.is_available() or dist.is_initialized():
        return False
    dist.init_process_group(backend='gloo')
    return True
