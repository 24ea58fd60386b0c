"""Stop training on a non-finite loss before it reaches a checkpoint."""
import math
from collections import Counter

import torch

from mmdet.registry import HOOKS
from mmengine.hooks import Hook


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Stop at the first non-finite loss, naming the iteration and datasets.

    A NaN loss on a mixture usually comes from one dataset's bad boxes or
    a too high learning rate; knowing which datasets were in the batch is
    the first clue. The hook runs before mmengine's CheckpointHook (priority
    ``ABOVE_NORMAL`` < ``VERY_LOW``), so the broken weights are never saved
    and the last checkpoint on disk stays the last good one.
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        losses = {k: float(v.detach()) if isinstance(v, torch.Tensor)
                  else float(v) for k, v in (outputs or {}).items()
                  if 'loss' in k}
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if not bad:
            return
        samples = (data_batch or {}).get('data_samples', [])
        datasets = Counter(s.metainfo.get('dataset', '?') for s in samples)
        images = [s.metainfo.get('img_path') for s in samples]
        raise FloatingPointError(
            f'non-finite losses {bad} at iteration {runner.iter + 1} (epoch '
            f'{runner.epoch}); the batch held {dict(datasets)} images: '
            f'{images}. Training stopped before saving this state; resume '
            f'from the last checkpoint in {runner.work_dir} with a lower '
            f'learning rate, or check those images\' annotations.')
