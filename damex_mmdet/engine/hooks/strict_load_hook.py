"""Stop when ``load_from`` does not fit the model exactly."""
import re

from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper


@HOOKS.register_module()
class StrictLoadHook(Hook):
    """Raise when a loaded checkpoint's entries or shapes differ from the model's.

    mmengine loads ``load_from`` non-strictly: entries of another shape are
    skipped with a warning and keep their fresh initialisation, which is what
    fine-tuning a COCO model on other classes wants, but a silent disaster
    when a grown model is pointed at the checkpoint from before growing
    (the new classes and experts would be random, and so would the old
    classes' rows). Grown configs add this hook.

    Args:
        hint (str): Appended to the error, e.g. how to make a fitting
            checkpoint.
    """

    priority = 'VERY_HIGH'

    def __init__(self, hint: str = '') -> None:
        self.hint = hint

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        state = checkpoint.get('state_dict', checkpoint)
        loaded = {re.sub(r'^module\.', '', k): tuple(v.shape)
                  for k, v in state.items() if hasattr(v, 'shape')}
        wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        problems = [f'{k} is missing' for k in wanted if k not in loaded]
        problems += [f'{k} is not in the model' for k in loaded
                     if k not in wanted]
        problems += [f'{k} has shape {loaded[k]}, the model needs {shape}'
                     for k, shape in wanted.items()
                     if k in loaded and loaded[k] != shape]
        if problems:
            shown = '; '.join(problems[:4])
            more = f' (and {len(problems) - 4} more)' if len(
                problems) > 4 else ''
            raise ValueError(
                f'the loaded checkpoint (load_from={runner.cfg.get("load_from")!r})'
                f' does not fit the model: '
                f'{shown}{more}. {self.hint}'.rstrip())
