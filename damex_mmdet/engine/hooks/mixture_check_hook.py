"""Fail fast when the model and the dataset mixture disagree."""
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ...datasets.label_space import UnifiedLabelSpace


@HOOKS.register_module()
class MixtureCheckHook(Hook):
    """Check the model against the mixture before any step runs.

    A head with the wrong ``num_classes`` would train on out-of-range labels
    or waste logits, a dataset without an expert would fail mid-epoch, and
    an expert map with keys that are no training dataset (often merged from
    a ``_base_`` config) or experts that no dataset maps to would train
    wrongly (:meth:`DAMEX.check_training_map`); all are caught here with the
    fix. DAMEX and DatasetAwareDINOHead check every batch against its
    mixture anyway (:func:`~damex_mmdet.datasets.mixture.check_num_classes`,
    :meth:`DAMEX.loss`); this hook checks before the first batch is loaded,
    including the one case they cannot: a dense DINO's denoising queries
    embed out-of-range labels before its head sees the batch. It also checks
    that every dataset of the validation mixture has the unified labels it
    has in training (the val mixture may leave datasets out, as UODB tests
    VOC12's block on VOC07 only), since predictions are in the training
    space.
    """

    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        train_space = self._check(runner, runner.train_dataloader.dataset,
                                  'train_dataloader')
        model = self._model(runner)
        if train_space is not None and hasattr(model, 'check_training_map'):
            model.check_training_map(train_space.dataset_names)
        if runner.val_loop is not None and train_space is not None:
            val_space = self._label_space(runner.val_loop.dataloader.dataset)
            if val_space is not None:
                self._check_compatible(train_space, val_space)

    @staticmethod
    def _check_compatible(train_space: UnifiedLabelSpace,
                          val_space: UnifiedLabelSpace) -> None:
        for name in val_space.dataset_names:
            if name not in train_space.dataset_names:
                raise ValueError(
                    f'the val mixture has dataset {name!r}, which the model '
                    f'is not trained on ({train_space.dataset_names}): its '
                    f'classes have no logits. Drop it from val_dataloader or '
                    f'add it to train_dataloader.')
            local = list(range(len(val_space.classes_of(name))))
            if (train_space.classes_of(name) != val_space.classes_of(name)
                    or train_space.to_unified(name, local)
                    != val_space.to_unified(name, local)):
                raise ValueError(
                    f'dataset {name!r} has other unified labels in the val '
                    f'mixture than in training: keep the datasets in the '
                    f'same order, with the same classes, in both mixtures.')
        if val_space.num_classes != train_space.num_classes:
            raise ValueError(
                f'the val mixture has {val_space.num_classes} unified classes '
                f'and the training mixture {train_space.num_classes}: list '
                f'the same datasets in both (datasets that only train may '
                f'stay out of val only when they share a block).')

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

    @staticmethod
    def _model(runner):
        return (runner.model.module if is_model_wrapper(runner.model)
                else runner.model)

    def _check(self, runner, dataset, where: str):
        space = self._label_space(dataset)
        if space is None:
            return None
        model = self._model(runner)
        head = getattr(model, 'bbox_head', None)
        if head is not None:
            space.check_num_classes(head.num_classes)
        if hasattr(model, 'check_datasets'):
            model.check_datasets(space.dataset_names)
        return space
