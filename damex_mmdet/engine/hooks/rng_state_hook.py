"""Carry the random number generators' states through checkpoints."""
import logging
import random
from typing import Optional

import numpy as np
import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

RNG_KEY = 'rng_state'


def _train_sampler_seed(runner) -> Optional[int]:
    """The seed of the train dataloader's sampler, None if it has none."""
    return getattr(runner.train_dataloader.sampler, 'seed', None)


def _set_rng_state(state: dict) -> None:
    """Set the generators to a state saved by :class:`RNGStateHook`."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class _RestoreBeforeBatch:
    """An :class:`IterBasedTrainLoop`'s data iterator that sets the generators
    to ``state`` right before it fetches batch number ``index`` (counted from
    0 at this wrapper's first batch), then gives the loop its own iterator
    back."""

    def __init__(self, loop: IterBasedTrainLoop, index: int,
                 state: dict) -> None:
        self._loop = loop
        self._iterator = loop.dataloader_iterator
        self._index = index
        self._state = state

    def __iter__(self) -> '_RestoreBeforeBatch':
        return self

    def __next__(self):
        if self._index == 0:
            _set_rng_state(self._state)
            self._loop.dataloader_iterator = self._iterator
        self._index -= 1
        return next(self._iterator)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save the RNG states with every checkpoint and restore them on resume.

    mmengine restores weights, optimizer, scheduler and the loop position,
    but re-seeds the generators, so DINO's denoising-query noise and random
    augmentations after a resume differ from the uninterrupted run. The
    states are restored where the uninterrupted run was when it saved them:
    right before the first resumed batch is fetched. An
    :class:`IterBasedTrainLoop` first replays the batches the interrupted run
    consumed (building the iterator and skipping them draws from the
    generators too, in the main process when ``num_workers=0``, where the
    batches' random augmentations run), so the states are set after the
    replay, right before the loop fetches the batch of its first resumed
    iteration; an epoch-based loop resumes at an epoch's start and gets them
    before it builds the epoch's iterator. A run that starts from a
    checkpoint with ``load_from`` (not resumed) gets its states too, before
    its first batch.

    The train sampler's seed is saved as well. It is fixed when the runner
    builds the dataloader, before the checkpoint is read, so only
    :class:`ExactResumeRunner` (or ``randomness.seed`` in the config) can
    give a resumed run the interrupted run's sample order; a resume that
    continues with another sampler seed is reported as a warning.
    """

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._pending = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        state = dict(python=random.getstate(), numpy=np.random.get_state(),
                     torch=torch.get_rng_state(),
                     sampler_seed=_train_sampler_seed(runner))
        if torch.cuda.is_available():
            state['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint[RNG_KEY] = state

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._pending = checkpoint.get(RNG_KEY)

    def before_train(self, runner) -> None:
        # A checkpoint loaded with `load_from` starts at iteration 0: only a
        # resumed run has to continue the interrupted run's sample order.
        resumed = runner.iter > 0 or runner.epoch > 0
        if self._pending is None or not resumed:
            return
        saved = self._pending.get('sampler_seed')
        current = _train_sampler_seed(runner)
        if saved is not None and saved != current:
            print_log(
                f'Resumed with train sampler seed {current}, but the '
                f'checkpoint was trained with seed {saved}: the sample order '
                'differs from the interrupted run. Set randomness.seed in '
                "the config, or runner_type = 'ExactResumeRunner', which "
                "takes the checkpoint's seed.",
                logger='current', level=logging.WARNING)

    def before_train_epoch(self, runner) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop):
            # The loop skips runner.iter consumed batches after this hook.
            loop.dataloader_iterator = _RestoreBeforeBatch(loop, runner.iter,
                                                           state)
        else:
            _set_rng_state(state)
