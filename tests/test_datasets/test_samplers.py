"""Tests of MixtureSampler: mixing ratios, determinism, ranks, mmdet glue."""
import itertools
import math
from collections import Counter

import numpy as np
import pytest
import torch
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from damex_mmdet.datasets import samplers as samplers_module
from damex_mmdet.datasets.samplers import MixtureSampler
from mmdet.datasets.samplers import AspectRatioBatchSampler
from mmdet.registry import DATA_SAMPLERS

SIZES = (120, 30, 7)  # a large, a medium and a tiny dataset


class ToyMixture:
    """Stand-in for the mixture wrapper: names, cumulative sizes, items.

    Image ``i`` is portrait when ``i`` is even, landscape otherwise, so the
    aspect-ratio batch sampler has two groups to form.
    """

    def __init__(self, sizes=SIZES, names=None):
        self.names = list(names or [f'd{i}' for i in range(len(sizes))])
        self.cumulative_sizes = list(itertools.accumulate(sizes))

    def __len__(self):
        return self.cumulative_sizes[-1]

    def __getitem__(self, idx):
        return idx

    def get_data_info(self, idx):
        return dict(width=100, height=200) if idx % 2 == 0 else dict(
            width=200, height=100)

    def dataset_of(self, idx):
        return next(d for d, end in enumerate(self.cumulative_sizes)
                    if idx < end)


def per_dataset(ds, indices):
    counts = Counter(ds.dataset_of(i) for i in indices)
    return [counts[d] for d in range(len(ds.names))]


@pytest.fixture(autouse=True)
def single_process(monkeypatch):
    monkeypatch.setattr(samplers_module, 'get_dist_info', lambda: (0, 1))


def expected_probabilities(mode, sizes=SIZES, **kwargs):
    sizes = np.asarray(sizes, dtype=float)
    if mode == 'proportional':
        weights = sizes
    elif mode == 'uniform':
        weights = np.ones_like(sizes)
    elif mode == 'temperature':
        weights = sizes**(1 / kwargs['temperature'])
    else:
        weights = np.asarray([kwargs['ratios'][f'd{i}']
                              for i in range(len(sizes))])
    return weights / weights.sum()


MODES = [
    dict(mode='proportional'),
    dict(mode='uniform'),
    dict(mode='temperature', temperature=2.0),
    dict(mode='temperature', temperature=5.0),
    dict(mode='ratios', ratios=dict(d0=1, d1=2, d2=5)),
]


@pytest.mark.parametrize('cfg', MODES, ids=lambda c: str(c))
def test_realised_ratios_match_requested(cfg):
    ds = ToyMixture()
    sampler = MixtureSampler(ds, seed=0, **cfg)
    kwargs = {k: v for k, v in cfg.items() if k != 'mode'}
    probs = expected_probabilities(cfg['mode'], **kwargs)
    np.testing.assert_allclose(list(sampler.probabilities.values()), probs)

    total = Counter()
    epochs = 20
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == len(sampler) == len(ds)
        counts = per_dataset(ds, indices)
        # Exact per epoch: the largest-remainder rounding of p * N.
        assert counts == list(sampler.counts.values())
        assert sum(counts) == len(ds)
        assert np.all(np.abs(np.asarray(counts) - probs * len(ds)) < 1)
        total.update(dict(enumerate(counts)))
    realised = np.asarray([total[d] for d in range(3)]) / (epochs * len(ds))
    np.testing.assert_allclose(realised, probs, atol=1 / len(ds))


def test_temperature_one_is_proportional_and_counts_add_up():
    ds = ToyMixture()
    prop = MixtureSampler(ds, seed=0)
    temp = MixtureSampler(ds, mode='temperature', temperature=1.0, seed=0)
    np.testing.assert_allclose(
        list(prop.probabilities.values()),
        list(temp.probabilities.values()))
    assert prop.counts == temp.counts == dict(zip(ds.names, SIZES))
    # Largest remainder: 157 / 3 = 52.33 -> 53, 52, 52 (tie to the first).
    uniform = MixtureSampler(ds, mode='uniform', seed=0)
    assert list(uniform.counts.values()) == [53, 52, 52]


def test_no_repeats_until_a_dataset_is_exhausted():
    ds = ToyMixture()
    sampler = MixtureSampler(ds, mode='uniform', seed=3)
    big, tiny = [], []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        big.append([i for i in indices if i < 120])
        tiny.append([i for i in indices if i >= 150])
    # The under-sampled dataset (53 of 120 per epoch) shows new images in
    # the next epoch too, and all of them within three epochs.
    assert len(set(big[0] + big[1])) == 106
    assert set(big[0] + big[1] + big[2]) == set(range(120))
    # The over-sampled dataset (52 per epoch from 7 images) is cycled
    # evenly: every image 7 or 8 times.
    assert set(Counter(tiny[0]).values()) <= {7, 8}
    assert set(tiny[0]) == set(range(150, 157))


def test_deterministic_for_seed_and_epoch():
    ds = ToyMixture()
    a = MixtureSampler(ds, mode='uniform', seed=42)
    b = MixtureSampler(ds, mode='uniform', seed=42)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert list(a) == list(a)  # re-iterating replays the epoch

    first = list(a)
    a.set_epoch(4)
    assert list(a) != first
    other_seed = MixtureSampler(ds, mode='uniform', seed=43)
    other_seed.set_epoch(3)
    assert list(other_seed) != first


def test_resume_replays_the_same_order():
    """A fresh sampler set to the restored epoch continues identically."""
    ds = ToyMixture()
    run = MixtureSampler(ds, mode='temperature', temperature=2.0, seed=7)
    seen = []
    for epoch in range(4):
        run.set_epoch(epoch)
        seen.append(list(run))

    resumed = MixtureSampler(ds, mode='temperature', temperature=2.0, seed=7)
    resumed.set_epoch(2)  # what mmengine does after loading the checkpoint
    assert list(resumed) == seen[2]
    # Iteration-based resume: skip the consumed part of the epoch.
    consumed = 40
    assert list(resumed)[consumed:] == seen[2][consumed:]


def test_with_a_dataloader_across_epochs():
    ds = ToyMixture()
    sampler = MixtureSampler(ds, mode='uniform', seed=1)
    loader = DataLoader(ds, batch_size=8, sampler=sampler)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        got = torch.cat(list(loader)).tolist()
        assert got == sampler.epoch_indices(epoch)


@pytest.mark.parametrize('world_size', [2, 3])
def test_ranks_are_disjoint_and_cover_the_epoch(monkeypatch, world_size):
    ds = ToyMixture()  # 157 samples: padding needed for both world sizes
    per_rank = []
    for rank in range(world_size):
        monkeypatch.setattr(samplers_module, 'get_dist_info',
                            lambda r=rank: (r, world_size))
        sampler = MixtureSampler(ds, mode='uniform', seed=5)
        sampler.set_epoch(1)
        per_rank.append(list(sampler))
        assert len(sampler) == math.ceil(len(ds) / world_size)
    assert len({len(r) for r in per_rank}) == 1

    epoch = sampler.epoch_indices(1)
    padded_size = len(per_rank[0]) * world_size
    padding = padded_size - len(epoch)
    assert 0 < padding < world_size
    # Interleaving the ranks restores the epoch list plus its padding.
    merged = [idx for group in zip(*per_rank) for idx in group]
    assert merged == epoch + epoch[:padding]
    # Only the padding repeats an index of the epoch across ranks.
    everything = Counter(idx for r in per_rank for idx in r)
    assert everything - Counter(epoch) == Counter(epoch[:padding])


def test_shuffle_false_interleaves_evenly_and_ignores_seed():
    ds = ToyMixture()
    a = MixtureSampler(ds, mode='uniform', shuffle=False, seed=0)
    b = MixtureSampler(ds, mode='uniform', shuffle=False, seed=99)
    assert list(a) == list(b)
    indices = list(a)
    # Round robin over the three datasets, each read in order.
    assert indices[:6] == [0, 120, 150, 1, 121, 151]
    assert [i for i in indices if 150 <= i][:9] == [
        150, 151, 152, 153, 154, 155, 156, 150, 151
    ]
    # The next epoch continues each dataset's stream where it stopped.
    a.set_epoch(1)
    assert [i for i in a if i < 120][0] == 53


def test_num_samples_sets_the_epoch_length(monkeypatch):
    monkeypatch.setattr(samplers_module, 'get_dist_info', lambda: (1, 4))
    sampler = MixtureSampler(ToyMixture(), mode='uniform', seed=0,
                             num_samples=1000)
    assert sum(sampler.counts.values()) == 1000
    assert len(sampler) == len(list(sampler)) == 250


def test_seed_none_uses_the_synchronised_seed(monkeypatch):
    monkeypatch.setattr(samplers_module, 'sync_random_seed', lambda: 1234)
    assert MixtureSampler(ToyMixture()).seed == 1234


def test_logs_the_mixture_once(monkeypatch):
    messages = []
    monkeypatch.setattr(samplers_module, 'print_log',
                        lambda msg, **kwargs: messages.append(msg))
    sampler = MixtureSampler(ToyMixture(names=['coco', 'voc', 'kitchen']),
                             mode='uniform', seed=0)
    list(sampler)
    assert len(messages) == 1
    assert "mode='uniform'" in messages[0]
    for name, size, count in zip(['coco', 'voc', 'kitchen'], SIZES,
                                 [53, 52, 52]):
        line = next(li for li in messages[0].splitlines()
                    if li.startswith(name))
        assert line.split() == [name, str(size), '0.3333', str(count)]


def test_builds_from_the_mmdet_registry():
    ds = ToyMixture()
    sampler = DATA_SAMPLERS.build(
        dict(type='MixtureSampler', dataset=ds, seed=0, mode='uniform'))
    assert isinstance(sampler, MixtureSampler)
    # The Runner builds with mmengine's root registry under scope 'mmdet'.
    with DefaultScope.overwrite_default_scope('mmdet'):
        sampler = MMENGINE_DATA_SAMPLERS.build(
            dict(type='MixtureSampler', mode='uniform'),
            default_args=dict(dataset=ds, seed=0))
    assert isinstance(sampler, MixtureSampler)


def test_runner_dataloader_with_aspect_ratio_batches():
    """The config path: Runner.build_dataloader passes dataset and seed."""
    ds = ToyMixture()
    with DefaultScope.overwrite_default_scope('mmdet'):
        loader = Runner.build_dataloader(
            dict(dataset=ds,
                 sampler=dict(type='MixtureSampler', mode='uniform'),
                 batch_sampler=dict(type='AspectRatioBatchSampler'),
                 batch_size=4,
                 num_workers=0),
            seed=11)
    sampler = loader.batch_sampler.sampler
    assert isinstance(loader.batch_sampler, AspectRatioBatchSampler)
    assert isinstance(sampler, MixtureSampler) and sampler.seed == 11
    batches = [b for b in loader]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == sorted(sampler.epoch_indices(0))
    # All but the leftover batches are single-orientation.
    full = [b for b in batches[:-2] if len(b) == 4]
    assert full and all(len({i % 2 for i in b}) == 1 for b in full)


def test_aspect_ratio_batch_sampler_wrapping():
    ds = ToyMixture()
    sampler = MixtureSampler(ds, mode='ratios', ratios=dict(d0=1, d1=1, d2=2),
                             seed=0)
    batches = AspectRatioBatchSampler(sampler, batch_size=2)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        flat = [i for b in batches for i in b]
        assert Counter(flat) == Counter(sampler.epoch_indices(epoch))
        assert len(list(batches)) == len(batches)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(mode='sqrt'), ValueError, r"unknown MixtureSampler mode 'sqrt'"),
    (dict(mode='uniform', temperature=2.0), ValueError,
     r"only applies to mode='temperature'"),
    (dict(ratios=dict(d0=1)), ValueError, r"only apply to mode='ratios'"),
    (dict(mode='temperature', temperature=0.0), ValueError, 'must be > 0'),
    (dict(mode='ratios'), ValueError, r"needs ratios=dict"),
    (dict(mode='ratios', ratios=dict(d0=1, d1=1)), ValueError,
     r"missing \['d2'\], unknown \[\]"),
    (dict(mode='ratios', ratios=dict(d0=1, d1=1, d2=1, coco=1)), ValueError,
     r"missing \[\], unknown \['coco'\]"),
    (dict(mode='ratios', ratios=dict(d0=1, d1=0, d2=1)), ValueError,
     r"ratios\['d1'\] must be a positive finite number, got 0"),
    (dict(mode='ratios', ratios=dict(d0=1, d1=float('nan'), d2=1)),
     ValueError, 'positive finite'),
    (dict(num_samples=0), ValueError, 'num_samples must be a positive int'),
])
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        MixtureSampler(ToyMixture(), seed=0, **kwargs)


def test_errors_of_the_dataset():
    with pytest.raises(TypeError, match='mixture dataset with `names`'):
        MixtureSampler(list(range(5)), seed=0)
    empty = ToyMixture(sizes=(5, 0, 3))
    # Proportional gives an empty dataset no share, so that is fine ...
    for shuffle in (True, False):
        sampler = MixtureSampler(empty, seed=0, shuffle=shuffle)
        assert sampler.counts['d1'] == 0
        assert sorted(sampler) == list(range(8))
    # ... but uniform cannot draw from it.
    with pytest.raises(ValueError, match=r"\['d1'\] are empty"):
        MixtureSampler(empty, mode='uniform', seed=0)
    broken = ToyMixture()
    broken.names = ['a', 'b']
    with pytest.raises(ValueError, match='2 names but 3 cumulative sizes'):
        MixtureSampler(broken, seed=0)
