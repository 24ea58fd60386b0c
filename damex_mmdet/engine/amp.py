"""Mixed-precision training by config, on GPUs and on CPU-only machines."""
from typing import Optional, Union

import torch
from mmdet.registry import OPTIM_WRAPPERS
from mmengine.device import get_device
from mmengine.optim import AmpOptimWrapper as MMEngineAmpOptimWrapper
from mmengine.optim import OptimWrapper


@OPTIM_WRAPPERS.register_module(name='AmpOptimWrapper')
class AmpOptimWrapper(MMEngineAmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper``, also on CPU with bfloat16 autocast.

    Registered under mmengine's name in mmdet's scope, so
    ``optim_wrapper=dict(type='AmpOptimWrapper', dtype='bfloat16')`` and
    mmdet's ``tools/train.py --amp`` use it. On a GPU (or NPU, MLU, MUSA)
    it is mmengine's wrapper unchanged. mmengine's refuses to start on a
    CPU-only machine although its ``autocast`` supports CPU bfloat16; here
    the CPU gets that autocast, without loss scaling: bfloat16 keeps
    float32's exponent range, so gradients do not underflow, and
    ``loss_scale`` is not used there.

    Args:
        loss_scale (str | float | dict): As mmengine's; ignored on CPU.
        dtype (str | torch.dtype, optional): Autocast dtype. On CPU only
            ``'bfloat16'`` (the default there) is supported.
        use_fsdp (bool): As mmengine's; not supported on CPU.
        **kwargs: :class:`OptimWrapper` arguments (``optimizer``,
            ``clip_grad``, ``accumulative_counts``).
    """

    def __init__(self,
                 loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Optional[Union[str, torch.dtype]] = None,
                 use_fsdp: bool = False,
                 **kwargs) -> None:
        if get_device() != 'cpu':
            super().__init__(loss_scale=loss_scale, dtype=dtype,
                             use_fsdp=use_fsdp, **kwargs)
            return
        if dtype not in (None, 'bfloat16', torch.bfloat16):
            raise ValueError(
                f'optim_wrapper.dtype={dtype!r}: CPU autocast computes only '
                f"in bfloat16; set optim_wrapper.dtype='bfloat16' or train "
                f'on a GPU.')
        if use_fsdp:
            raise ValueError(
                'optim_wrapper.use_fsdp=True needs a GPU; this machine has '
                'none: remove use_fsdp.')
        OptimWrapper.__init__(self, **kwargs)  # skips mmengine's GPU check
        self._scale_update_param = None
        self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
        self.cast_dtype = torch.bfloat16
