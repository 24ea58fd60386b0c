"""The unified label space of a mixture of detection datasets.

Every dataset of the mixture keeps its own class list (local label ``i`` is
the ``i``-th class of that list). The detector predicts in one unified label
space; :class:`UnifiedLabelSpace` fixes that space and maps labels both ways.

Layout rules:

* By default every dataset gets its own disjoint block of classes, blocks in
  dataset order. Classes are named ``'<dataset>:<class>'``, so ``kitti:Car``
  and ``coco:car`` are different classes with different logits.
* ``shared_blocks`` lets several datasets with the identical class list use
  one block (VOC07 and VOC12 label the same 20 classes). The block sits at
  the position of its first dataset and its classes are named
  ``'voc07+voc12:person'``.
* ``merge_by_name`` lists datasets whose equally named classes become one
  unified class, named by the bare class name (``'person'``), placed where
  the name first occurs. A shared block takes part in the merge when any of
  its datasets is listed.

The layout is a pure function of the constructor arguments, and
:meth:`UnifiedLabelSpace.to_dict` stores exactly those arguments (plus the
resulting class names as a check), so a checkpoint's
``meta['dataset_meta']`` can rebuild the same space with
:meth:`UnifiedLabelSpace.from_dict`.
"""
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

Labels = Union[int, List[int], Tuple[int, ...], np.ndarray, torch.Tensor]


class UnifiedLabelSpace:
    """Unified class list of several datasets and the label maps into it.

    Args:
        dataset_classes (Mapping[str, Sequence[str]]): Dataset name -> its
            local class names, in dataset order (the order fixes the layout).
        shared_blocks (Sequence[Sequence[str]]): Groups of dataset names that
            share one block, e.g. ``[['voc07', 'voc12']]``. The datasets of a
            group must have identical class lists. Defaults to ``()``.
        merge_by_name (Sequence[str]): Names of datasets whose classes with
            the same name map to one unified class. Defaults to ``()``.

    Raises:
        ValueError: On an empty mixture or class list, duplicate class names
            inside a dataset, unknown dataset names in ``shared_blocks`` or
            ``merge_by_name``, a dataset in two shared blocks, or shared
            datasets whose class lists differ.
        TypeError: When a class list or a group is a single string.

    Example:
        >>> space = UnifiedLabelSpace(
        ...     dict(voc07=['cat', 'dog'], voc12=['cat', 'dog'],
        ...          kitti=['Car']),
        ...     shared_blocks=[['voc07', 'voc12']])
        >>> space.classes
        ('voc07+voc12:cat', 'voc07+voc12:dog', 'kitti:Car')
        >>> space.to_unified('kitti', [0])
        [2]
        >>> space.to_local('voc12', [2, 1])
        [-1, 1]
    """

    def __init__(self,
                 dataset_classes: Mapping[str, Sequence[str]],
                 shared_blocks: Sequence[Sequence[str]] = (),
                 merge_by_name: Sequence[str] = ()) -> None:
        self._dataset_classes = self._check_dataset_classes(dataset_classes)
        names = tuple(self._dataset_classes)
        self._blocks = self._check_shared_blocks(shared_blocks, names)
        self._merge_by_name = self._check_merge_by_name(merge_by_name, names)
        self._build_layout()

    # ------------------------------------------------------------------ #
    # validation
    # ------------------------------------------------------------------ #
    @staticmethod
    def _check_dataset_classes(
            dataset_classes: Mapping[str, Sequence[str]]
    ) -> Dict[str, Tuple[str, ...]]:
        if not isinstance(dataset_classes, Mapping):
            raise TypeError(
                'dataset_classes must be a mapping {dataset name: class '
                f'list}}, got {type(dataset_classes).__name__}')
        if len(dataset_classes) == 0:
            raise ValueError(
                'dataset_classes is empty: a label space needs at least one '
                'dataset with its class list')
        checked = {}
        for name, classes in dataset_classes.items():
            if not isinstance(name, str) or not name:
                raise TypeError(
                    f'dataset names must be non-empty strings, got {name!r}')
            if ':' in name or '+' in name:
                # They separate block and class in unified class names.
                raise ValueError(
                    f"dataset name {name!r} contains ':' or '+', which "
                    'unified class names use as separators; rename it')
            if isinstance(classes, str):
                raise TypeError(
                    f'the classes of dataset {name!r} must be a list of '
                    f'class names, got the single string {classes!r}; write '
                    f'[{classes!r}] for a one-class dataset')
            classes = tuple(classes)
            if len(classes) == 0:
                raise ValueError(
                    f'dataset {name!r} has an empty class list: give its '
                    'classes (e.g. its METAINFO["classes"]) or drop it from '
                    'the mixture')
            bad = [c for c in classes if not isinstance(c, str) or not c]
            if bad:
                raise TypeError(
                    f'the classes of dataset {name!r} must be non-empty '
                    f'strings, got {bad!r}')
            duplicates = sorted(c for c, n in Counter(classes).items()
                                if n > 1)
            if duplicates:
                raise ValueError(
                    f'dataset {name!r} lists the classes {duplicates} more '
                    'than once: local labels would be ambiguous; make each '
                    'class name unique within the dataset')
            checked[name] = classes
        return checked

    def _check_known(self, names: Sequence[str], where: str) -> None:
        unknown = [n for n in names if n not in self._dataset_classes]
        if unknown:
            raise ValueError(
                f'{where} names {unknown}, which are not datasets of the '
                f'mixture; the datasets are {list(self._dataset_classes)}')

    def _check_shared_blocks(
            self, shared_blocks: Sequence[Sequence[str]],
            names: Tuple[str, ...]) -> Tuple[Tuple[str, ...], ...]:
        """Return every block as a tuple of dataset names, in layout order.

        A block's members are listed in dataset order and blocks are ordered
        by their first member, so equivalent arguments give equal layouts.
        """
        if isinstance(shared_blocks, str):
            raise TypeError(
                'shared_blocks must be a list of groups of dataset names, '
                f"e.g. [['voc07', 'voc12']], got the string {shared_blocks!r}")
        group_of = {}
        for group in shared_blocks:
            if isinstance(group, str):
                raise TypeError(
                    'shared_blocks must be a list of groups of dataset '
                    f"names, e.g. [['voc07', 'voc12']]; got the group "
                    f'{group!r}: wrap it in a list')
            group = tuple(group)
            self._check_known(group, 'shared_blocks')
            for name in group:
                if name in group_of:
                    raise ValueError(
                        f'dataset {name!r} is in two shared blocks '
                        f'({list(group_of[name])} and {list(group)}); merge '
                        'the groups into one')
                group_of[name] = group
            first = group[0]
            for other in group[1:]:
                self._check_same_classes(first, other)
        blocks = []
        for name in names:
            group = group_of.get(name, (name, ))
            block = tuple(n for n in names if n in group)
            if block[0] == name:
                blocks.append(block)
        return tuple(blocks)

    def _check_same_classes(self, first: str, other: str) -> None:
        classes_a = self._dataset_classes[first]
        classes_b = self._dataset_classes[other]
        if classes_a == classes_b:
            return
        only_a = [c for c in classes_a if c not in classes_b]
        only_b = [c for c in classes_b if c not in classes_a]
        if only_a or only_b:
            detail = (f'only in {first!r}: {only_a}, only in {other!r}: '
                      f'{only_b}')
        else:
            detail = (f'same classes in a different order: {list(classes_a)}'
                      f' vs {list(classes_b)}')
        raise ValueError(
            f'datasets {first!r} and {other!r} share a block but their '
            f'class lists differ ({detail}); give them identical class lists '
            'or remove them from shared_blocks')

    def _check_merge_by_name(self, merge_by_name: Sequence[str],
                             names: Tuple[str, ...]) -> Tuple[str, ...]:
        if isinstance(merge_by_name, str):
            raise TypeError(
                'merge_by_name must be a list of dataset names, got the '
                f'string {merge_by_name!r}: wrap it in a list')
        merge_by_name = tuple(merge_by_name)
        self._check_known(merge_by_name, 'merge_by_name')
        # Dataset order, so that equivalent arguments compare equal.
        return tuple(n for n in names if n in merge_by_name)

    # ------------------------------------------------------------------ #
    # layout
    # ------------------------------------------------------------------ #
    def _build_layout(self) -> None:
        merging_blocks = [
            block for block in self._blocks
            if any(n in self._merge_by_name for n in block)
        ]
        # A name is merged only when several merging blocks carry it; a
        # name unique to one block keeps its dataset-qualified form.
        name_count = Counter(c for block in merging_blocks
                             for c in self._dataset_classes[block[0]])

        classes: List[str] = []
        # A unified class is identified by a key: the bare name for a merged
        # class, (block, class) otherwise. Two keys must never share a name.
        index_of: Dict[str, int] = {}
        key_of_name: Dict[str, Any] = {}
        self._block_of = {}
        self._local_to_unified = {}
        for block in self._blocks:
            block_name = '+'.join(block)
            merging = block in merging_blocks
            unified_ids = []
            for cls in self._dataset_classes[block[0]]:
                if merging and name_count[cls] > 1:
                    key, unified = cls, cls
                else:
                    key, unified = (block_name, cls), f'{block_name}:{cls}'
                if key_of_name.setdefault(unified, key) != key:
                    raise ValueError(
                        f'the unified class name {unified!r} arises for two '
                        "different classes; avoid ':' in class names")
                if unified not in index_of:
                    index_of[unified] = len(classes)
                    classes.append(unified)
                unified_ids.append(index_of[unified])
            table = np.asarray(unified_ids, dtype=np.int64)
            for name in block:
                self._block_of[name] = block_name
                self._local_to_unified[name] = table

        self._classes = tuple(classes)
        self._unified_to_local = {}
        for name, table in self._local_to_unified.items():
            inverse = np.full(len(classes), -1, dtype=np.int64)
            inverse[table] = np.arange(len(table), dtype=np.int64)
            self._unified_to_local[name] = inverse

    # ------------------------------------------------------------------ #
    # properties
    # ------------------------------------------------------------------ #
    @property
    def classes(self) -> Tuple[str, ...]:
        """tuple[str]: Unified class names; index = unified label."""
        return self._classes

    @property
    def num_classes(self) -> int:
        """int: Number of unified classes (the head's ``num_classes``)."""
        return len(self._classes)

    @property
    def dataset_names(self) -> Tuple[str, ...]:
        """tuple[str]: Dataset names in layout order."""
        return tuple(self._dataset_classes)

    def block_name(self, dataset: str) -> str:
        """Name of the block holding ``dataset``'s classes.

        It is the dataset name, or the member names joined by ``'+'`` for a
        shared block (``'voc07+voc12'``).
        """
        self._check_dataset(dataset)
        return self._block_of[dataset]

    def classes_of(self, dataset: str) -> Tuple[str, ...]:
        """Local class names of ``dataset``; index = local label."""
        self._check_dataset(dataset)
        return self._dataset_classes[dataset]

    def unified_classes_of(self, dataset: str) -> Tuple[str, ...]:
        """Unified names of ``dataset``'s classes, in local label order."""
        self._check_dataset(dataset)
        return tuple(self._classes[i]
                     for i in self._local_to_unified[dataset])

    def dataset_of_class(self, unified_label: int) -> Tuple[str, ...]:
        """Datasets that annotate unified class ``unified_label``.

        Returns a tuple because a class of a shared block or a class merged
        by name belongs to several datasets.
        """
        self._check_range('unified', None, np.asarray([unified_label]))
        return tuple(name for name in self._dataset_classes
                     if self._unified_to_local[name][unified_label] >= 0)

    def class_mask(self, dataset: str) -> np.ndarray:
        """Boolean mask of shape (num_classes, ): the classes of a dataset.

        Useful to restrict scores to a dataset's own classes at evaluation.
        """
        self._check_dataset(dataset)
        return self._unified_to_local[dataset] >= 0

    # ------------------------------------------------------------------ #
    # label maps
    # ------------------------------------------------------------------ #
    def to_unified(self, dataset: str, local_labels: Labels) -> Labels:
        """Map local labels of ``dataset`` to unified labels.

        Args:
            dataset (str): Dataset name.
            local_labels (int | list | tuple | np.ndarray | Tensor): Local
                labels in ``[0, len(classes_of(dataset)))``, any shape.

        Returns:
            Same type as the input (same dtype, and the same device for a
            tensor) holding the unified labels.
        """
        self._check_dataset(dataset)
        return self._lookup(self._local_to_unified[dataset], local_labels,
                            'local', dataset)

    def to_local(self, dataset: str, unified_labels: Labels) -> Labels:
        """Map unified labels to local labels of ``dataset``.

        Args:
            dataset (str): Dataset name.
            unified_labels (int | list | tuple | np.ndarray | Tensor):
                Unified labels in ``[0, num_classes)``, any shape.

        Returns:
            Same type as the input holding local labels, ``-1`` where the
            unified class is not one of ``dataset``'s classes.
        """
        self._check_dataset(dataset)
        return self._lookup(self._unified_to_local[dataset], unified_labels,
                            'unified', dataset)

    def _lookup(self, table: np.ndarray, labels: Labels, kind: str,
                dataset: str) -> Labels:
        if isinstance(labels, torch.Tensor):
            if labels.is_floating_point() or labels.is_complex() or \
                    labels.dtype == torch.bool:
                raise TypeError(
                    f'{kind} labels must be an integer tensor, got dtype '
                    f'{labels.dtype}')
            if labels.numel():
                # One host sync per call: cheap next to silently wrong labels.
                low, high = labels.min().item(), labels.max().item()
                self._check_range(kind, dataset, np.asarray([low, high]))
            lut = torch.as_tensor(table, device=labels.device)
            return lut[labels.long()].to(labels.dtype)
        if isinstance(labels, np.ndarray):
            if labels.dtype.kind not in 'iu':
                raise TypeError(
                    f'{kind} labels must be an integer array, got dtype '
                    f'{labels.dtype}')
            self._check_range(kind, dataset, labels)
            return table[labels].astype(labels.dtype)
        if isinstance(labels, (bool, np.bool_)):
            raise TypeError(f'{kind} labels must be integers, got {labels!r}')
        if isinstance(labels, (int, np.integer)):
            self._check_range(kind, dataset, np.asarray([labels]))
            return int(table[labels])
        if isinstance(labels, (list, tuple)):
            array = np.asarray(labels)
            if array.size == 0:
                array = array.astype(np.int64)
            elif array.dtype.kind not in 'iu':
                raise TypeError(
                    f'{kind} labels must be integers, got {labels!r}')
            self._check_range(kind, dataset, array)
            return type(labels)(table[array].tolist())
        raise TypeError(
            f'{kind} labels must be an int, list, tuple, numpy array or '
            f'torch tensor, got {type(labels).__name__}')

    def _check_range(self, kind: str, dataset: Optional[str],
                     labels: np.ndarray) -> None:
        if kind == 'local':
            size = len(self._dataset_classes[dataset])
            where = f'dataset {dataset!r} ({size} classes)'
        else:
            size = self.num_classes
            where = f'the unified label space ({size} classes)'
        bad = labels[(labels < 0) | (labels >= size)] if labels.size else \
            labels
        if bad.size:
            raise ValueError(
                f'{kind} label {int(bad.flat[0])} is out of range for '
                f'{where}: valid labels are 0..{size - 1}')

    def _check_dataset(self, dataset: str) -> None:
        if dataset not in self._dataset_classes:
            raise ValueError(
                f'unknown dataset {dataset!r}; the label space knows '
                f'{list(self._dataset_classes)}')

    # ------------------------------------------------------------------ #
    # config checks, persistence, comparison
    # ------------------------------------------------------------------ #
    def check_num_classes(self,
                          num_classes: int,
                          where: str = 'model.bbox_head.num_classes') -> None:
        """Raise when a model's ``num_classes`` does not fit this space.

        Args:
            num_classes (int): The value found in the model.
            where (str): The config key that holds it, named in the error.

        Raises:
            ValueError: ``num_classes != self.num_classes``.
        """
        if num_classes != self.num_classes:
            raise ValueError(
                f'{where} is {num_classes}, but the unified label space of '
                f'{list(self._dataset_classes)} has {self.num_classes} '
                f'classes; set {where}={self.num_classes} in the config')

    def to_dict(self) -> Dict[str, Any]:
        """Plain, JSON- and pickle-safe description of this space.

        ``datasets`` keeps the order explicitly, so the layout survives
        serialisers that sort dict keys; ``classes`` is stored for readers
        and checked by :meth:`from_dict`.
        """
        return {
            'datasets': list(self._dataset_classes),
            'dataset_classes':
            {name: list(c)
             for name, c in self._dataset_classes.items()},
            'shared_blocks': [list(b) for b in self._blocks if len(b) > 1],
            'merge_by_name': list(self._merge_by_name),
            'classes': list(self._classes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'UnifiedLabelSpace':
        """Rebuild a space stored by :meth:`to_dict`.

        Raises:
            ValueError: Missing keys, or stored class names that differ from
                the rebuilt ones (the dict was edited or written by an
                incompatible version).
        """
        required = ('datasets', 'dataset_classes', 'shared_blocks',
                    'merge_by_name')
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(
                f'label space dict lacks {missing}; it must come from '
                'UnifiedLabelSpace.to_dict()')
        if sorted(d['datasets']) != sorted(d['dataset_classes']):
            raise ValueError(
                f"label space dict: 'datasets' {list(d['datasets'])} and "
                f"the keys of 'dataset_classes' "
                f"{list(d['dataset_classes'])} differ")
        space = cls({n: d['dataset_classes'][n]
                     for n in d['datasets']}, d['shared_blocks'],
                    d['merge_by_name'])
        stored = d.get('classes')
        if stored is not None and tuple(stored) != space.classes:
            raise ValueError(
                'label space dict: the stored classes differ from the ones '
                'rebuilt from its datasets; it was edited or written by an '
                'incompatible version of damex_mmdet')
        return space

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnifiedLabelSpace):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    # Defining __eq__ drops hashing; the space is immutable, so hash it.
    def __hash__(self) -> int:
        return hash((tuple(self._dataset_classes.items()), self._blocks,
                     self._merge_by_name))

    def __repr__(self) -> str:
        blocks = ', '.join(
            f"{'+'.join(b)}({len(self._dataset_classes[b[0]])})"
            for b in self._blocks)
        merged = ''
        if self._merge_by_name:
            merged = f', merge_by_name={list(self._merge_by_name)}'
        return (f'{type(self).__name__}(num_classes={self.num_classes}, '
                f'blocks=[{blocks}]{merged})')
