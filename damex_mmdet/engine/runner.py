"""A Runner whose resumed run continues with the seed of the run it resumes."""
import copy
import logging
from typing import Optional

from mmengine.logging import print_log
from mmengine.registry import RUNNERS
from mmengine.runner import CheckpointLoader, Runner, find_latest_checkpoint


@RUNNERS.register_module()
class ExactResumeRunner(Runner):
    """mmengine's Runner, resuming with the random seed of the interrupted run.

    Without ``randomness.seed`` in the config (the shipped configs set none,
    so that every run gets its own seed) mmengine draws a fresh seed and
    builds the train dataloader with it before it loads the checkpoint: the
    sampler's order and the data workers' seeds of the resumed run are then
    not the interrupted run's, and restoring the global seed afterwards, as
    ``Runner.resume`` does, cannot change them. This runner reads the seed of
    the checkpoint it will resume before anything is built, so sampler,
    workers and generators all continue as in an uninterrupted run (the
    generators' states themselves are :class:`RNGStateHook`'s job). A seed
    set in the config is kept.

    Selected by ``runner_type = 'ExactResumeRunner'``, which mmdet's
    ``tools/train.py`` and ``mim train`` build from mmengine's root
    ``RUNNERS`` registry (no default scope is set yet at that point, so it is
    registered there rather than in mmdet's child registry).
    """

    @classmethod
    def from_cfg(cls, cfg) -> Runner:
        """Build the runner, with the resumed checkpoint's seed if the config
        resumes and sets no seed."""
        randomness = dict(cfg.get('randomness') or {})
        if cfg.get('resume', False) and randomness.get('seed') is None:
            checkpoint = (cfg.get('load_from')
                          or find_latest_checkpoint(cfg['work_dir']))
            seed = None if checkpoint is None else cls._saved_seed(checkpoint)
            if seed is not None:
                cfg = copy.deepcopy(cfg)
                cfg['randomness'] = dict(randomness, seed=seed)
        return super().from_cfg(cfg)

    @staticmethod
    def _saved_seed(checkpoint: str) -> Optional[int]:
        """The seed stored in ``checkpoint``'s meta, None if there is none."""
        meta = CheckpointLoader.load_checkpoint(
            checkpoint, map_location='cpu').get('meta', {})
        seed = meta.get('seed')
        if seed is None:
            print_log(
                f'{checkpoint} stores no random seed (meta.seed): the resumed '
                'run draws a new one, so its sample order differs from the '
                'interrupted run; set randomness.seed to choose one.',
                logger='current', level=logging.WARNING)
            return None
        print_log(f'Resuming with the random seed {seed} of {checkpoint}.',
                  logger='current')
        return seed
