"""Let torch >= 2.6 load mmengine checkpoints without disabling its safety.

torch 2.6 made ``torch.load`` default to ``weights_only=True``, which only
unpickles allow-listed types; mmengine 0.10.7 calls ``torch.load`` without
``weights_only`` and stores message-hub history and numpy values in every
checkpoint, so ``load_from``, ``resume`` and ``mim test`` fail with an
UnpicklingError. Allow-listing exactly those types keeps the protection for
everything else.
"""
import numpy as np
import torch
from mmengine.logging import HistoryBuffer

_MULTIARRAY = getattr(np, '_core', None) or np.core


def mmengine_checkpoint_globals() -> list:
    """The non-tensor types mmengine writes into checkpoints."""
    return [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        _MULTIARRAY.multiarray._reconstruct,
        _MULTIARRAY.multiarray.scalar,
        *{type(np.dtype(t)) for t in (np.float64, np.float32, np.int64,
                                      np.int32, np.bool_)},
    ]


def allow_mmengine_checkpoints() -> None:
    """Allow-list mmengine's checkpoint types in ``torch.load`` (idempotent)."""
    if hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
