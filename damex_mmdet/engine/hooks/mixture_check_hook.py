"""Fail fast when the model and the dataset mixture disagree."""
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ...datasets.label_space import UnifiedLabelSpace


@HOOKS.register_module()
class MixtureCheckHook(Hook):
    """Check the model against the mixture before any step runs.

    A head with the wrong ``num_classes`` would train on out-of-range labels
    or waste logits, and a dataset without an expert would fail mid-epoch;
    both are caught here with the value to set. It also checks that the
    validation mixture uses the training mixture's label space, since
    unified labels are only comparable within one space.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        train_space = self._check(runner, runner.train_dataloader.dataset,
                                  'train_dataloader')
        if runner.val_loop is not None and train_space is not None:
            val_space = self._label_space(runner.val_loop.dataloader.dataset)
            if val_space is not None and val_space != train_space:
                raise ValueError(
                    f'the val mixture\'s label space {val_space} differs from '
                    f'the training one {train_space}: list the same datasets '
                    f'in the same order, with the same classes, in both.')

    def before_val(self, runner) -> None:
        self._check(runner, runner.val_loop.dataloader.dataset,
                    'val_dataloader')

    def before_test(self, runner) -> None:
        self._check(runner, runner.test_loop.dataloader.dataset,
                    'test_dataloader')

    @staticmethod
    def _label_space(dataset):
        meta = getattr(dataset, 'metainfo', None) or {}
        if 'label_space' not in meta:
            return None
        return UnifiedLabelSpace.from_dict(meta['label_space'])

    def _check(self, runner, dataset, where: str):
        space = self._label_space(dataset)
        if space is None:
            return None
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        head = getattr(model, 'bbox_head', None)
        if head is not None and head.num_classes != space.num_classes:
            raise ValueError(
                f'model.bbox_head.num_classes={head.num_classes}, but the '
                f'{where} mixture has {space.num_classes} unified classes '
                f'({", ".join(space.dataset_names)}): set '
                f'model.bbox_head.num_classes={space.num_classes}.')
        if hasattr(model, 'check_datasets'):
            model.check_datasets(space.dataset_names)
        return space
