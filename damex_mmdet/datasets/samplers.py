"""A sampler that sets the mixing ratio of the datasets in a mixture."""
import math
from typing import Dict, Iterator, List, Mapping, Optional

import numpy as np
import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from torch.utils.data import Sampler

from mmdet.registry import DATA_SAMPLERS

MODES = ('proportional', 'uniform', 'temperature', 'ratios')


@DATA_SAMPLERS.register_module()
class MixtureSampler(Sampler):
    """Draw each epoch's indices with a chosen share per dataset.

    The dataset is a concatenation of several datasets (the mixture wrapper,
    or anything exposing ``names`` and ``cumulative_sizes`` like
    :class:`torch.utils.data.ConcatDataset`: global index ``i`` belongs to
    the first dataset ``d`` with ``i < cumulative_sizes[d]``).

    Dataset probabilities ``p_d`` by ``mode``:

    - ``'proportional'``: ``p_d ∝ size_d``, what drawing uniformly from the
      concatenation gives (the reference recipe).
    - ``'uniform'``: every dataset equally often.
    - ``'temperature'``: ``p_d ∝ size_d ** (1 / temperature)``;
      ``temperature=1`` is proportional, larger values move towards uniform.
    - ``'ratios'``: ``p_d ∝ ratios[name_d]``, explicit positive weights for
      every dataset.

    One epoch holds ``num_samples`` indices. Dataset ``d`` gets exactly
    ``p_d * num_samples`` of them, rounded by the largest remainder, so the
    realised ratios are exact up to one sample per dataset and epoch.

    Within a dataset, indices are read from an endless stream made of
    successive random permutations of that dataset; epoch ``e`` takes the
    next ``count_d`` entries of the stream (positions ``e * count_d`` up to
    ``(e + 1) * count_d``). No index repeats before all of its dataset's
    indices were used, across epoch boundaries too: an under-sampled
    dataset shows fresh images every epoch until it has shown all, an
    over-sampled one is cycled. The indices of all datasets are then
    shuffled together.

    Determinism and resuming: the epoch's list is a pure function of
    ``(seed, epoch)`` (permutation ``k`` of dataset ``d`` is seeded with
    ``(seed, d, k)``, the final shuffle with ``seed + epoch``). mmengine's
    epoch-based loop calls :meth:`set_epoch` through ``DistSamplerSeedHook``
    and restores the epoch on resume; the iteration-based loop's
    ``_InfiniteDataloaderIterator`` calls :meth:`set_epoch` at every pass and,
    on resume, replays the consumed batches. Both therefore continue with
    the order an uninterrupted run would have seen, provided the seed is
    the same: the Runner builds the sampler before it reads the checkpoint,
    so a config without ``randomness.seed`` needs
    ``runner_type = 'ExactResumeRunner'`` (as the shipped configs have),
    which takes the checkpoint's seed.

    With ``shuffle=False`` nothing is random: each dataset's stream is
    ``0, 1, ..., size - 1, 0, 1, ...`` and the datasets are interleaved
    evenly (the ``j``-th of ``count_d`` samples of dataset ``d`` sits at
    relative position ``(j + 0.5) / count_d``), which suits debugging and
    evaluation-like passes.

    Distributed: the epoch's list is padded to a multiple of the world size
    by repeating its start, and rank ``r`` takes every ``world_size``-th
    index from position ``r``, so ranks never overlap within an epoch apart
    from the padding.

    Args:
        dataset: The mixture; needs ``names``, ``cumulative_sizes`` and
            ``__len__``.
        mode (str): One of ``'proportional'``, ``'uniform'``,
            ``'temperature'``, ``'ratios'``. Defaults to ``'proportional'``.
        temperature (float): Temperature of ``'temperature'`` mode, > 0.
            Defaults to 1.0.
        ratios (dict, optional): ``{dataset name: weight}`` for ``'ratios'``
            mode; every dataset must be named with a positive weight.
        shuffle (bool): Whether to randomise. Defaults to True.
        seed (int, optional): Random seed, identical on all ranks. ``None``
            draws one and synchronises it across ranks, like mmengine's
            ``DefaultSampler``. The Runner passes the config's seed.
        num_samples (int, optional): Indices per epoch over all ranks.
            Defaults to ``len(dataset)``.

    Attributes:
        probabilities (dict[str, float]): Dataset name -> share ``p_d``.
        counts (dict[str, int]): Dataset name -> indices per epoch.
        sizes (list[int]): Number of samples of each dataset.
        total_size (int): Indices per epoch over all ranks.
        num_samples (int): Indices per epoch of this rank (``len(self)``),
            as in mmengine's ``DefaultSampler``.
    """

    def __init__(self,
                 dataset,
                 mode: str = 'proportional',
                 temperature: float = 1.0,
                 ratios: Optional[Mapping[str, float]] = None,
                 shuffle: bool = True,
                 seed: Optional[int] = None,
                 num_samples: Optional[int] = None) -> None:
        self.rank, self.world_size = get_dist_info()
        self.dataset = dataset
        self.names = self._check_names(dataset)
        self.sizes = self._sizes(dataset)
        self._offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.mode = mode
        self.shuffle = shuffle
        self.seed = sync_random_seed() if seed is None else int(seed)
        self.epoch = 0

        if num_samples is None:
            num_samples = len(dataset)
        valid = isinstance(num_samples, int) and not isinstance(
            num_samples, bool) and num_samples > 0
        if not valid:
            raise ValueError(
                f'num_samples must be a positive int, got {num_samples!r}')
        self.total_size = num_samples

        probs = self._probabilities(mode, temperature, ratios)
        empty = [n for n, p, s in zip(self.names, probs, self.sizes)
                 if p > 0 and s == 0]
        if empty:
            raise ValueError(
                f'datasets {empty} are empty but mode {mode!r} gives them a '
                'share of the mixture; fix their annotations or drop them')
        self.probabilities: Dict[str, float] = dict(
            zip(self.names, probs.tolist()))
        counts = self._largest_remainder(probs, num_samples)
        self.counts: Dict[str, int] = dict(zip(self.names, counts))

        self.num_samples = math.ceil(num_samples / self.world_size)
        self._log_mixture()

    # ------------------------------------------------------------------ #
    # construction helpers
    # ------------------------------------------------------------------ #
    @staticmethod
    def _check_names(dataset) -> List[str]:
        # A lazily initialised mixture knows its sizes only after this.
        if hasattr(dataset, 'full_init'):
            dataset.full_init()
        for attr in ('names', 'cumulative_sizes'):
            if not hasattr(dataset, attr):
                raise TypeError(
                    f'MixtureSampler needs a mixture dataset with `{attr}`, '
                    f'got {type(dataset).__name__}; wrap the datasets in the '
                    'damex_mmdet mixture dataset')
        names = list(dataset.names)
        if len(names) != len(dataset.cumulative_sizes):
            raise ValueError(
                f'the mixture has {len(names)} names but '
                f'{len(dataset.cumulative_sizes)} cumulative sizes')
        if len(set(names)) != len(names):
            raise ValueError(f'dataset names must be unique, got {names}')
        return names

    @staticmethod
    def _sizes(dataset) -> List[int]:
        bounds = [0] + [int(c) for c in dataset.cumulative_sizes]
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
        if any(s < 0 for s in sizes):
            raise ValueError(
                'cumulative_sizes must be non-decreasing, got '
                f'{list(dataset.cumulative_sizes)}')
        if bounds[-1] != len(dataset):
            raise ValueError(
                f'cumulative_sizes ends at {bounds[-1]} but the dataset has '
                f'{len(dataset)} samples')
        return sizes

    def _probabilities(self, mode: str, temperature: float,
                       ratios: Optional[Mapping[str, float]]) -> np.ndarray:
        if mode not in MODES:
            raise ValueError(
                f'unknown MixtureSampler mode {mode!r}; use one of {MODES}')
        # Catch settings that the chosen mode would silently ignore.
        if mode != 'temperature' and temperature != 1.0:
            raise ValueError(
                f'temperature={temperature} only applies to '
                f"mode='temperature' (mode is {mode!r})")
        if mode != 'ratios' and ratios is not None:
            raise ValueError(
                f"ratios only apply to mode='ratios' (mode is {mode!r})")

        sizes = np.asarray(self.sizes, dtype=np.float64)
        if sizes.sum() == 0:
            raise ValueError('all datasets of the mixture are empty')
        if mode == 'proportional':
            weights = sizes
        elif mode == 'uniform':
            weights = np.ones_like(sizes)
        elif mode == 'temperature':
            if not temperature > 0:
                raise ValueError(
                    f'temperature must be > 0, got {temperature}')
            # Normalise first so that large datasets and small temperatures
            # cannot overflow; 0 ** x stays 0, so empty datasets get nothing.
            weights = (sizes / sizes.max())**(1.0 / temperature)
        else:
            weights = self._check_ratios(ratios)
        return weights / weights.sum()

    def _check_ratios(self, ratios: Optional[Mapping[str, float]]
                      ) -> np.ndarray:
        if not isinstance(ratios, Mapping):
            raise ValueError(
                "mode='ratios' needs ratios=dict(<dataset>=<weight>, ...) "
                f'naming every dataset of {self.names}, got {ratios!r}')
        missing = [n for n in self.names if n not in ratios]
        unknown = [n for n in ratios if n not in self.names]
        if missing or unknown:
            raise ValueError(
                f'ratios must name exactly the datasets {self.names}: '
                f'missing {missing}, unknown {unknown}')
        weights = []
        for name in self.names:
            w = ratios[name]
            if isinstance(w, bool) or not isinstance(
                    w, (int, float)) or not math.isfinite(w) or w <= 0:
                raise ValueError(
                    f'ratios[{name!r}] must be a positive finite number, '
                    f'got {w!r}; drop the dataset from the mixture instead '
                    'of giving it weight 0')
            weights.append(float(w))
        return np.asarray(weights)

    @staticmethod
    def _largest_remainder(probs: np.ndarray, total: int) -> List[int]:
        """Integer counts summing to ``total``, closest to ``probs * total``.

        Ties in the remainders go to the earlier dataset.
        """
        quotas = probs * total
        counts = np.floor(quotas).astype(np.int64)
        left = total - int(counts.sum())
        order = np.argsort(-(quotas - counts), kind='stable')
        counts[order[:left]] += 1
        return counts.tolist()

    def _log_mixture(self) -> None:
        width = max(len('dataset'), *(len(n) for n in self.names))
        lines = [
            f'MixtureSampler: mode={self.mode!r}, {self.total_size} samples '
            f'per epoch ({self.num_samples} per rank x {self.world_size})',
            f"{'dataset':<{width}}  {'size':>9}  {'prob':>7}  "
            f"{'per epoch':>9}"
        ]
        for name, size in zip(self.names, self.sizes):
            lines.append(f'{name:<{width}}  {size:>9}  '
                         f'{self.probabilities[name]:>7.4f}  '
                         f'{self.counts[name]:>9}')
        print_log('\n'.join(lines), logger='current')

    # ------------------------------------------------------------------ #
    # sampling
    # ------------------------------------------------------------------ #
    def _stream(self, d: int, start: int, count: int) -> torch.Tensor:
        """Entries ``[start, start + count)`` of dataset ``d``'s stream.

        Only the permutations overlapping the window are generated, so the
        cost does not grow with the epoch number.
        """
        size = self.sizes[d]
        if count == 0:
            return torch.zeros(0, dtype=torch.long)
        first, last = start // size, (start + count - 1) // size
        chunks = []
        for k in range(first, last + 1):
            if self.shuffle:
                g = torch.Generator()
                g.manual_seed(self._perm_seed(d, k))
                chunks.append(torch.randperm(size, generator=g))
            else:
                chunks.append(torch.arange(size))
        offset = start - first * size
        return torch.cat(chunks)[offset:offset + count]

    def _perm_seed(self, d: int, k: int) -> int:
        # SeedSequence mixes (seed, dataset, permutation) into independent
        # streams; plain sums such as seed + k would reuse permutations
        # between neighbouring seeds.
        entropy = [self.seed % 2**64, d, k]
        return int(np.random.SeedSequence(entropy).generate_state(
            1, dtype=np.uint64)[0] % 2**63)

    def epoch_indices(self, epoch: int) -> List[int]:
        """All global indices of ``epoch`` across ranks, before padding."""
        counts = list(self.counts.values())
        indices = torch.cat([
            self._stream(d, epoch * count, count) + int(self._offsets[d])
            for d, count in enumerate(counts)
        ])
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(len(indices), generator=g)
        else:
            # Even interleaving: sample j of dataset d at (j + 0.5) / count_d,
            # ties in dataset order.
            positions = torch.cat([
                (torch.arange(count, dtype=torch.float64) + 0.5) / count
                for count in counts
            ])
            order = torch.argsort(positions, stable=True)
        return indices[order].tolist()

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices(self.epoch)
        padded_size = self.num_samples * self.world_size
        indices = indices * math.ceil(padded_size / len(indices))
        return iter(indices[self.rank:padded_size:self.world_size])

    def __len__(self) -> int:
        """The number of indices of this rank per epoch."""
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose indices the next iteration yields."""
        self.epoch = epoch
