"""A mixture of detection datasets with different label sets."""
import bisect
import copy
import os.path as osp
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from mmcv.transforms import Compose
from mmdet.datasets import BaseDetDataset, CocoDataset
from mmdet.registry import DATASETS
from mmengine.logging import print_log
from torch.utils.data import Dataset

from .annotation_checks import check_coco_annotations
from .image_checks import check_image_files
from .label_space import UnifiedLabelSpace

# Keys the mixture writes into every sample's metainfo, after the pipeline,
# so they reach the model whatever PackDetInputs' meta_keys say.
DATASET_NAME_KEY = 'dataset'
DATASET_INDEX_KEY = 'dataset_idx'
# mmdet's CocoMetric convention for ground truth in original coordinates.
RAW_INSTANCES_KEY = 'instances'
# Unified labels of the sample's dataset, for the oracle class protocol.
DATASET_CLASSES_KEY = 'dataset_classes'
# The mixture's unified class count and dataset names, so that every model
# can check that it fits the data it is given (see check_num_classes).
NUM_UNIFIED_CLASSES_KEY = 'num_unified_classes'
MIXTURE_DATASETS_KEY = 'mixture_datasets'


def check_num_classes(data_samples: Sequence,
                      num_classes: int,
                      where: str = 'model.bbox_head.num_classes') -> None:
    """Raise unless ``num_classes`` is the unified class count of the
    :class:`DatasetMixture` the samples come from.

    Too few classes stop deep in torch (or a CUDA assert) at the first box
    of a late dataset; too many train logits that no dataset labels.
    Samples that no mixture tagged pass.

    Args:
        data_samples (Sequence[DetDataSample]): A batch.
        num_classes (int): The model's value.
        where (str): The config key that holds it, named in the error.
    """
    for sample in data_samples:
        expected = sample.metainfo.get(NUM_UNIFIED_CLASSES_KEY)
        if expected is not None and expected != num_classes:
            raise ValueError(
                f'{where} is {num_classes}, but the DatasetMixture of '
                f'{list(sample.metainfo[MIXTURE_DATASETS_KEY])} has '
                f'{expected} unified classes; set {where}={expected} in the '
                f'config.')


def _palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """A fixed random RGB colour per unified class."""
    rng = np.random.RandomState(0)
    return [tuple(int(v) for v in rng.randint(0, 256, 3))
            for _ in range(num_classes)]


@DATASETS.register_module()
class DatasetMixture(Dataset):
    """Concatenate detection datasets whose class lists differ.

    Unlike mmengine's ``ConcatDataset`` it accepts datasets with different
    metainfo: each dataset's local labels are mapped into one
    :class:`UnifiedLabelSpace` (disjoint blocks by default), and every sample
    is tagged with its dataset's name and index in
    ``data_sample.metainfo['dataset' | 'dataset_idx']``, and with the
    mixture's ``'num_unified_classes' | 'mixture_datasets'``, against which
    DAMEX and DatasetAwareDINOHead check themselves. In test mode each
    sample also carries its ground truth in its dataset's own labels and
    original coordinates (``metainfo['instances']``) and the unified labels
    of its dataset (``metainfo['dataset_classes']``) for per-dataset
    evaluation.

    Args:
        datasets (Sequence[dict]): One entry per dataset. Each has a unique
            ``name`` and either a full mmdet dataset config (with ``type``)
            or the COCO shorthand ``ann_file``, ``img_prefix`` and optional
            ``classes`` (default: every category of the file) and
            ``data_root``. An entry may set its own ``pipeline``.
        pipeline (Sequence[dict]): The pipeline of every entry without one.
        label_space (dict, optional): ``shared_blocks`` and
            ``merge_by_name`` of :class:`UnifiedLabelSpace`.
        test_mode (bool): Build the datasets for evaluation.
        lazy_init (bool): Defer loading annotations to :meth:`full_init`.
        max_refetch (int): In training, how many other images of the same
            dataset to try when the pipeline returns None.
        max_dropped_box_fraction (float): The largest share of a COCO-format
            dataset's boxes that mmdet's ``CocoDataset`` may drop by its own
            rules (``ignore`` key, no overlap with the image, ``area <= 0``,
            less than 1 pixel wide or high) before building stops with an
            error; the drops are logged and kept in ``dropped_boxes`` by
            dataset and reason. A dataset that loses every box always stops.
    """

    def __init__(self,
                 datasets: Sequence[dict],
                 pipeline: Sequence[dict] = (),
                 label_space: Optional[Mapping] = None,
                 test_mode: bool = False,
                 lazy_init: bool = False,
                 max_refetch: int = 15,
                 max_dropped_box_fraction: float = 1.0) -> None:
        self.names = self._checked_names(datasets)
        self._entries = [copy.deepcopy(dict(e)) for e in datasets]
        self.pipeline = Compose(pipeline)
        self.label_space_cfg = dict(label_space or {})
        self.test_mode = test_mode
        self.max_refetch = max_refetch
        self.max_dropped_box_fraction = max_dropped_box_fraction
        self.datasets: List[BaseDetDataset] = []
        # Boxes mmdet's CocoDataset will skip by its own rules, by dataset and
        # reason; also logged.
        self.dropped_boxes: Dict[str, Dict[str, int]] = {}
        self._pipelines: List[Compose] = []
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @staticmethod
    def _checked_names(datasets: Sequence[dict]) -> List[str]:
        if not datasets:
            raise ValueError('DatasetMixture needs at least one dataset in '
                             '`datasets`.')
        names = []
        for position, entry in enumerate(datasets):
            name = entry.get('name')
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f'DatasetMixture entry {position} has no `name`: give '
                    f'every dataset a unique name, e.g. name="coco".')
            if name in names:
                raise ValueError(
                    f'DatasetMixture has two datasets named {name!r} '
                    f'(entries {names.index(name)} and {position}): names key '
                    f'the label space, the expert map and the metrics, so '
                    f'they must be unique.')
            names.append(name)
        return names

    def full_init(self) -> None:
        """Build every dataset, the label space and the index.

        Every image of every dataset must exist
        (:func:`~damex_mmdet.datasets.image_checks.check_image_files`), so
        that a wrong ``img_prefix`` or a lost file stops here, not mid-epoch.
        """
        if self._fully_initialized:
            return
        for name, entry in zip(self.names, self._entries):
            dataset, pipeline = self._build(name, entry)
            if len(dataset) == 0:
                raise ValueError(
                    f'dataset {name!r} is empty after loading '
                    f'{getattr(dataset, "ann_file", "")} and filtering '
                    f'(filter_cfg={dataset.filter_cfg}): check the annotation '
                    f'file or drop the dataset from the mixture.')
            self.datasets.append(dataset)
            self._pipelines.append(pipeline)
        check_image_files(dict(zip(self.names, self.datasets)))
        self.label_space = UnifiedLabelSpace(
            {name: d.metainfo['classes']
             for name, d in zip(self.names, self.datasets)},
            **self.label_space_cfg)
        self._dataset_classes = [
            np.flatnonzero(self.label_space.class_mask(name)).tolist()
            for name in self.names
        ]
        self.cumulative_sizes = np.cumsum(
            [len(d) for d in self.datasets]).tolist()
        self._fully_initialized = True
        sizes = ', '.join(f'{n}: {len(d)}'
                          for n, d in zip(self.names, self.datasets))
        print_log(f'DatasetMixture ({"test" if self.test_mode else "train"}) '
                  f'of {len(self.names)} datasets ({sizes}); '
                  f'{self.label_space.num_classes} unified classes.',
                  logger='current')

    def _build(self, name: str, entry: dict) -> Tuple[BaseDetDataset, Compose]:
        entry = dict(entry)
        entry.pop('name')
        pipeline = entry.pop('pipeline', None)
        if 'type' not in entry:
            entry = self._coco_shorthand(name, entry)
        dataset_type = DATASETS.get(entry['type'])
        if dataset_type is None:
            raise KeyError(f'dataset {name!r}: unknown dataset type '
                           f'{entry["type"]!r}; is its module imported?')
        if issubclass(dataset_type, CocoDataset):
            ann_file = entry['ann_file']
            if entry.get('data_root') and not osp.isabs(ann_file):
                ann_file = osp.join(entry['data_root'], ann_file)
            metainfo = dict(entry.get('metainfo') or {})
            check = check_coco_annotations(ann_file, name,
                                           metainfo.get('classes'),
                                           self.max_dropped_box_fraction)
            metainfo['classes'] = check.classes
            entry['metainfo'] = metainfo
            self.dropped_boxes[name] = check.dropped_boxes
        # The mixture runs the pipeline itself so it can map labels before
        # and tag the packed sample after it.
        entry.update(pipeline=[], test_mode=self.test_mode)
        dataset = DATASETS.build(entry)
        dataset.full_init()
        if pipeline is None:
            return dataset, self.pipeline
        return dataset, Compose(pipeline)

    @staticmethod
    def _coco_shorthand(name: str, entry: dict) -> dict:
        unknown = set(entry) - {'ann_file', 'img_prefix', 'classes',
                                'data_root', 'filter_cfg', 'backend_args'}
        if 'ann_file' not in entry or unknown:
            raise ValueError(
                f'dataset {name!r}: an entry without `type` is the COCO '
                f'shorthand, which takes ann_file, img_prefix and optionally '
                f'classes and data_root; got keys {sorted(entry)}. Give a '
                f'full dataset config with `type` otherwise.')
        classes = entry.pop('classes', None)
        return dict(
            type='CocoDataset',
            ann_file=entry.pop('ann_file'),
            data_prefix=dict(img=entry.pop('img_prefix', '')),
            metainfo=dict(classes=tuple(classes)) if classes else None,
            **entry)

    @property
    def metainfo(self) -> Dict:
        """The mixture's metainfo, stored in checkpoints by mmengine.

        ``classes`` are the unified, dataset-qualified class names, so
        ``init_detector`` and ``DetInferencer`` name predictions correctly.
        Before :meth:`full_init` (``lazy_init=True``, as those two build the
        test dataset for its palette) no file is read: see
        :meth:`_config_metainfo`.
        """
        if not self._fully_initialized:
            return self._config_metainfo()
        space = self.label_space
        return dict(
            classes=space.classes,
            palette=_palette(space.num_classes),
            dataset_names=list(self.names),
            label_space=space.to_dict(),
            dataset_cat_ids={
                name: list(getattr(d, 'cat_ids', None)
                           or range(1, len(d.metainfo['classes']) + 1))
                for name, d in zip(self.names, self.datasets)
            },
            # The file a COCO-format dataset is scored against; None where
            # the metric scores the dataset's test-mode parse (e.g. VOC XML).
            dataset_ann_files={
                name: d.ann_file if isinstance(d, CocoDataset) else None
                for name, d in zip(self.names, self.datasets)
            })

    def _config_metainfo(self) -> Dict:
        """What the config states, for inference without the annotations.

        ``dataset_names``; and ``classes``, ``palette`` and ``label_space``
        when every entry lists its classes (``classes`` or
        ``metainfo.classes``), since otherwise they come from the annotation
        files. A checkpoint stores the full metainfo, which ``init_detector``
        and ``DetInferencer`` read.
        """
        meta = dict(dataset_names=list(self.names))
        classes = [entry.get('classes')
                   or (entry.get('metainfo') or {}).get('classes')
                   for entry in self._entries]
        if all(classes):
            space = UnifiedLabelSpace(dict(zip(self.names, classes)),
                                      **self.label_space_cfg)
            meta.update(classes=space.classes,
                        palette=_palette(space.num_classes),
                        label_space=space.to_dict())
        return meta

    def __len__(self) -> int:
        self.full_init()
        return self.cumulative_sizes[-1]

    def locate(self, idx: int) -> Tuple[int, int]:
        """Map a global index to (dataset index, index in that dataset)."""
        if not 0 <= idx < len(self):
            raise IndexError(f'index {idx} out of range for a mixture of '
                             f'{len(self)} samples')
        dataset_idx = bisect.bisect_right(self.cumulative_sizes, idx)
        start = self.cumulative_sizes[dataset_idx - 1] if dataset_idx else 0
        return dataset_idx, idx - start

    def get_data_info(self, idx: int) -> dict:
        """Data info of a sample, labels still local to its dataset."""
        dataset_idx, local_idx = self.locate(idx)
        return self.datasets[dataset_idx].get_data_info(local_idx)

    def __getitem__(self, idx: int) -> dict:
        dataset_idx, local_idx = self.locate(idx)
        dataset = self.datasets[dataset_idx]
        for _ in range(self.max_refetch + 1):
            result = self._prepare(dataset_idx,
                                   dataset.get_data_info(local_idx))
            if result is not None:
                return result
            if self.test_mode:
                break
            local_idx = np.random.randint(len(dataset))
        raise RuntimeError(
            f'dataset {self.names[dataset_idx]!r}: the pipeline returned None '
            f'for {self.max_refetch + 1} images in a row; check the pipeline '
            f'(e.g. crops that remove every box) or the annotations.')

    def _prepare(self, dataset_idx: int, data_info: dict) -> Optional[dict]:
        name = self.names[dataset_idx]
        raw_instances = data_info.get('instances', [])
        data_info['instances'] = [
            dict(instance, bbox_label=self.label_space.to_unified(
                name, instance['bbox_label'])) for instance in raw_instances
        ]
        data_info[DATASET_NAME_KEY] = name
        data_info[DATASET_INDEX_KEY] = dataset_idx
        try:
            result = self._pipelines[dataset_idx](data_info)
        except Exception as error:
            raise RuntimeError(
                f'dataset {name!r}: the pipeline failed on image '
                f'{data_info.get("img_path")}: {type(error).__name__}: '
                f'{error}. Fix or remove that image (and its annotations).'
            ) from error
        if result is None:
            return None
        tags = {DATASET_NAME_KEY: name, DATASET_INDEX_KEY: dataset_idx,
                NUM_UNIFIED_CLASSES_KEY: self.label_space.num_classes,
                MIXTURE_DATASETS_KEY: tuple(self.names)}
        if self.test_mode:
            tags[RAW_INSTANCES_KEY] = raw_instances
            tags[DATASET_CLASSES_KEY] = self._dataset_classes[dataset_idx]
        result['data_samples'].set_metainfo(tags)
        return result
