"""Let torch >= 2.6 load mmengine checkpoints without disabling its safety.

torch 2.6 made ``torch.load`` default to ``weights_only=True``, which only
unpickles allow-listed types; mmengine 0.10.7 calls ``torch.load`` without
``weights_only`` and stores message-hub history (``HistoryBuffer``) and numpy
values in every checkpoint, so ``load_from``, ``resume`` and ``mim test``
fail with an UnpicklingError. Allow-listing exactly those types keeps the
protection for everything else.
"""
import numpy as np
import torch
from mmengine.logging import HistoryBuffer

_NUMPY_CORE = getattr(np, '_core', None) or np.core


def _history_buffer_statistic(owner, name: str):
    """Stand-in for ``getattr`` in checkpoints.

    A pickled HistoryBuffer refers to its statistic methods (``mean``,
    ``current``...) through ``getattr(HistoryBuffer, name)``. Allowing the
    real ``getattr`` would open every attribute of every allowed object to a
    crafted file, so only those methods resolve.
    """
    method = vars(HistoryBuffer).get(name) if owner is HistoryBuffer else None
    if callable(method) and not name.startswith('_'):
        return getattr(owner, name)
    raise ValueError(
        f'checkpoint asks for attribute {name!r} of {owner!r}; only the '
        f'public methods of mmengine HistoryBuffer are allowed.')


def mmengine_checkpoint_globals() -> list:
    """The non-tensor globals mmengine writes into checkpoints.

    Besides the message hub's HistoryBuffers these are numpy arrays and
    scalars of plain numeric dtypes (metrics, and the numpy RNG state that
    :class:`RNGStateHook` stores).
    """
    numpy_dtypes = {type(np.dtype(t)) for t in (
        np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
        np.int8, np.uint64, np.uint32, np.uint16, np.uint8, np.bool_)}
    return [
        HistoryBuffer,
        (_history_buffer_statistic, 'builtins.getattr'),
        np.ndarray,
        np.dtype,
        _NUMPY_CORE.multiarray._reconstruct,
        _NUMPY_CORE.multiarray.scalar,
        *sorted(numpy_dtypes, key=lambda t: t.__name__),
    ]


def allow_mmengine_checkpoints() -> None:
    """Allow-list mmengine's checkpoint globals in ``torch.load``."""
    if hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals(mmengine_checkpoint_globals())
