"""Plan the dataset -> expert map of a DAMEX model from dataset sizes and similarity.

DAMEX trains the gate to send each dataset's tokens to a fixed expert, so the map decides
which datasets share parameters. :func:`plan_experts` chooses it by a capacitated
k-medoids program over the datasets:

- every expert is led by a *prototype* dataset; a dataset placed on an expert costs its
  dissimilarity ``D[i, j]`` to that expert's prototype ``j`` (``D[j, j] = 0``). Each dataset
  counts once, whatever its size, because the benchmark averages AP over datasets: a small
  dataset put with dissimilar ones is the failure to avoid;
- an expert may take at most ``capacity = capacity_factor / num_experts`` of the training
  tokens; a dataset's tokens are its sampling share (every image of the mixture gives the
  decoder the same number of queries);
- one-expert plans (what ``model.dataset_to_expert`` takes today): every dataset on exactly
  one expert; a dataset larger than the capacity gets an expert of its own;
- split plans: a dataset's tokens may be spread over several experts, so a large dataset
  spans several and small similar ones share one.

With ``y_j`` the number of experts led by dataset ``j`` and ``x_ij`` the fraction of dataset
``i`` on them, the program is::

    minimise    sum_ij D_ij x_ij
    subject to  sum_j x_ij = 1                   every dataset placed
                sum_j y_j = E                    (one-expert: min(E, N))
                x_ij <= y_j                      only on opened prototypes
                sum_i w_i x_ij <= cap_j y_j      capacity, w = sampling shares
                x_jj >= y_j                      (one-expert) a prototype joins its own expert
    one-expert: x, y binary, cap_j = max(capacity, w_j); split: y integer, x in [0, 1],
    cap_j = capacity.

Its LP relaxation (integrality dropped) is solved for a lower bound; the integer program is
solved exactly by HiGHS (branch and bound over LP relaxations, :func:`scipy.optimize.milp`),
which takes milliseconds for the tens of datasets of a detection mixture, so the plan
carries a certificate: ``cost - lower_bound`` is the most any map could improve on the LP
bound.

Dissimilarities come from a short training run: :func:`dataset_token_features` averages the
tokens entering the MoE layers (hooks on the FFNs of a dense DINO or of an MoE model) per
dataset and :func:`dissimilarity_from_features` compares the means; or
:func:`dissimilarity_from_routing` compares a vanilla MoE's per-dataset expert histograms
(``routing.json`` of :func:`~damex_mmdet.analysis.analyze_routing`).
"""
import copy
import json
import math
import os.path as osp
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from mmdet.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from tqdm import tqdm

from ..datasets.samplers import MixtureSampler
from .routing_analysis import _build_loader

DEFAULT_CAPACITY_FACTOR = 1.5
# Loads and fractions below this are solver noise, not a share of an expert.
_TOLERANCE = 1e-7


class ExpertPlanError(ValueError):
    """A planning problem that has no valid map, or inputs that do not describe one."""


@dataclass
class ExpertPlan:
    """A dataset -> experts map and how good it is.

    Attributes:
        dataset_to_experts: Dataset name -> its experts, ascending; one each in a one-expert
            plan, several for a dataset that spans experts in a split plan.
        expert_loads: Share of the training tokens each of the ``num_experts`` experts
            takes, shape (num_experts,); unused experts take 0.
        capacity: Largest token share an expert may take (``capacity_factor / E``).
        cost: The objective, ``sum_i D[i, prototype of i's expert]`` (fractions for split
            datasets).
        lower_bound: Optimum of the LP relaxation; no map costs less.
        oversized: Datasets whose share exceeds the capacity -> the experts they would need
            (``ceil(share / capacity)``); a one-expert plan gives each of them one anyway.
    """

    dataset_to_experts: Dict[str, List[int]]
    expert_loads: List[float]
    capacity: float
    cost: float
    lower_bound: float
    oversized: Dict[str, int]

    @property
    def dataset_to_expert(self) -> Dict[str, int]:
        """The one-expert map ``model.dataset_to_expert`` takes.

        Raises:
            ExpertPlanError: Some dataset spans several experts (a split plan).
        """
        split = {n: e for n, e in self.dataset_to_experts.items() if len(e) > 1}
        if split:
            raise ExpertPlanError(
                f'datasets {sorted(split)} span several experts ({split}); a one-expert '
                'map needs plan_experts(..., allow_split=False).')
        return {name: experts[0] for name, experts in self.dataset_to_experts.items()}


def plan_experts(shares: Mapping[str, float],
                 dissimilarity: np.ndarray,
                 num_experts: int,
                 capacity_factor: float = DEFAULT_CAPACITY_FACTOR,
                 allow_split: bool = False) -> ExpertPlan:
    """Choose which datasets share an expert (see the module docstring).

    Args:
        shares: Dataset name -> share of the training samples (normalised here), in the
            order of the rows of ``dissimilarity``; :func:`sampling_shares` computes them.
        dissimilarity: (N, N) non-negative, symmetric, zero diagonal.
        num_experts: E, experts per MoE layer.
        capacity_factor: An expert may take ``capacity_factor / E`` of the tokens; >= 1
            (1 asks for perfectly even experts).
        allow_split: Let a dataset span several experts (DAMEX's ``dataset_to_expert``
            takes one expert per dataset today, so False is what a config can use).

    Returns:
        ExpertPlan: Experts numbered in the order of the first dataset (in ``shares``
        order) each holds, so a map of N <= E datasets in order is ``{d_k: k}``.

    Raises:
        ExpertPlanError: Bad inputs, or no one-expert map fits the capacity.
    """
    names = list(shares)
    weights = np.asarray([shares[n] for n in names], dtype=np.float64)
    dis = np.asarray(dissimilarity, dtype=np.float64)
    _check_problem(names, weights, dis, num_experts, capacity_factor)
    weights = weights / weights.sum()
    capacity = capacity_factor / num_experts
    oversized = {n: math.ceil(w / capacity - _TOLERANCE)
                 for n, w in zip(names, weights) if w > capacity + _TOLERANCE}
    if allow_split:
        y, x, cost, bound = _solve(dis, weights, num_experts, capacity, split=True)
        groups = _split_groups(names, weights, y, x, capacity)
    else:
        if len(oversized) > num_experts:
            raise ExpertPlanError(
                f'{len(oversized)} datasets ({sorted(oversized)}) each exceed an expert\'s '
                f'capacity {capacity:.3f} and need an expert of their own, but there are '
                f'only {num_experts} experts: raise the capacity factor ({capacity_factor}) '
                'or num_experts.')
        y, x, cost, bound = _solve(dis, weights, num_experts, capacity, split=False)
        groups = [[(i, 1.0) for i in range(len(names)) if x[i, j] > 0.5]
                  for j in range(len(names)) if y[j] > 0.5]
    groups.sort(key=lambda members: min(i for i, _ in members) if members else len(names))
    dataset_to_experts: Dict[str, List[int]] = {n: [] for n in names}
    loads = [0.0] * num_experts
    for expert, members in enumerate(groups):
        for i, fraction in members:
            dataset_to_experts[names[i]].append(expert)
            loads[expert] += float(weights[i] * fraction)
    return ExpertPlan(dataset_to_experts, loads, capacity, cost, bound, oversized)


def _check_problem(names: List[str], weights: np.ndarray, dis: np.ndarray,
                   num_experts: int, capacity_factor: float) -> None:
    num = len(names)
    if num == 0:
        raise ExpertPlanError('no datasets to plan')
    if not (np.all(np.isfinite(weights)) and np.all(weights > 0)):
        raise ExpertPlanError(f'dataset shares must be positive, got {dict(zip(names, weights))}')
    if dis.shape != (num, num):
        raise ExpertPlanError(
            f'the dissimilarity matrix is {dis.shape} but there are {num} datasets {names}')
    if not np.all(np.isfinite(dis)) or dis.min() < 0 or not np.allclose(dis, dis.T) \
            or np.abs(np.diag(dis)).max() > 0:
        raise ExpertPlanError('the dissimilarity matrix must be finite, non-negative, '
                              'symmetric and zero on the diagonal')
    if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
        raise ExpertPlanError(f'num_experts must be a positive int, got {num_experts!r}')
    if not capacity_factor >= 1:
        raise ExpertPlanError(
            f'capacity_factor must be >= 1 (E experts of capacity factor/E must hold all '
            f'tokens), got {capacity_factor}')


def _solve(dis: np.ndarray, weights: np.ndarray, num_experts: int, capacity: float,
           split: bool):
    """The program of the module docstring; returns ``y (N,), x (N, N), cost, LP bound``."""
    num = len(weights)
    num_vars = num + num * num  # y_j, then x_ij row-major

    def x_index(i, j):
        return num + i * num + j

    rows, lower, upper = [], [], []

    def constrain(coefficients: Dict[int, float], low: float, high: float):
        row = np.zeros(num_vars)
        for index, value in coefficients.items():
            row[index] += value
        rows.append(row)
        lower.append(low)
        upper.append(high)

    for i in range(num):
        constrain({x_index(i, j): 1.0 for j in range(num)}, 1.0, 1.0)
    opened = num_experts if split else min(num_experts, num)
    constrain({j: 1.0 for j in range(num)}, opened, opened)
    caps = np.full(num, capacity) if split else np.maximum(capacity, weights)
    for j in range(num):
        constrain({**{x_index(i, j): weights[i] for i in range(num)}, j: -caps[j]},
                  -np.inf, 0.0)
        for i in range(num):
            constrain({x_index(i, j): 1.0, j: -1.0}, -np.inf, 0.0)
        if not split:
            constrain({x_index(j, j): 1.0, j: -1.0}, 0.0, np.inf)
    constraints = LinearConstraint(np.array(rows), lower, upper)
    objective = np.concatenate([np.zeros(num), dis.reshape(-1)])
    low = np.zeros(num_vars)
    high = np.concatenate([np.full(num, num_experts if split else 1.0), np.ones(num * num)])
    if not split:
        # A dataset above capacity cannot share: it leads an expert holding only itself.
        for j in np.flatnonzero(weights > capacity + _TOLERANCE):
            low[j] = low[x_index(j, j)] = 1.0
    bounds = Bounds(low, high)
    relaxed = linprog(objective, bounds=list(zip(low, high)), method='highs',
                      **_as_linprog(np.array(rows), np.array(lower), np.array(upper)))
    integrality = np.concatenate([np.ones(num), np.full(num * num, 0 if split else 1)])
    result = milp(objective, constraints=constraints, bounds=bounds, integrality=integrality)
    if result.status != 0 or not relaxed.success:
        raise ExpertPlanError(
            f'no one-expert map of these {num} datasets onto {num_experts} experts keeps '
            f'every expert within the capacity {capacity:.3f} (shares '
            f'{np.round(weights, 3).tolist()}): raise the capacity factor, or plan with '
            'allow_split=True.')
    y = np.round(result.x[:num]).astype(int)
    x = result.x[num:].reshape(num, num)
    x = np.where(x < _TOLERANCE, 0.0, x)
    return y, x, float(result.fun), float(relaxed.fun)


def _as_linprog(rows: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> dict:
    """Two-sided rows as linprog's ``A_ub x <= b_ub`` and ``A_eq x = b_eq``."""
    equal = lower == upper
    upper_rows = ~equal & np.isfinite(upper)
    lower_rows = ~equal & np.isfinite(lower)
    return dict(A_eq=rows[equal], b_eq=upper[equal],
                A_ub=np.concatenate([rows[upper_rows], -rows[lower_rows]]),
                b_ub=np.concatenate([upper[upper_rows], -lower[lower_rows]]))


def _split_groups(names: List[str], weights: np.ndarray, y: np.ndarray, x: np.ndarray,
                  capacity: float):
    """Concrete experts of a split plan: ``[[(dataset index, fraction), ...] per expert]``.

    A prototype's group has the ``y_j`` experts the program gave it. A dataset spans as few
    of them as the capacity allows: one larger than the capacity is spread evenly over
    ``ceil(mass / capacity)`` empty experts, then the smaller ones go, largest first, to the
    first expert with room (split over the roomiest ones only if none has room). Experts
    the capacity does not need stay empty.
    """
    experts = []
    for j in np.flatnonzero(y > 0):
        slots: List[List] = [[] for _ in range(int(y[j]))]
        room = np.full(len(slots), capacity)
        pieces = sorted(((i, weights[i] * x[i, j]) for i in range(len(names))
                         if x[i, j] > 0), key=lambda piece: (-piece[1], piece[0]))
        for i, mass in pieces:
            if mass > capacity + _TOLERANCE:
                span = math.ceil(mass / capacity - _TOLERANCE)
                chosen = np.flatnonzero(room >= capacity - _TOLERANCE)[:span]
                for slot in chosen:
                    slots[slot].append((i, 1.0 / len(chosen) * x[i, j]))
                    room[slot] -= mass / len(chosen)
                continue
            fits = np.flatnonzero(room >= mass - _TOLERANCE)
            if len(fits):
                slots[fits[0]].append((i, x[i, j]))
                room[fits[0]] -= mass
                continue
            for slot in np.argsort(-room, kind='stable'):
                taken = min(mass, room[slot])
                if taken <= _TOLERANCE:
                    break
                slots[slot].append((i, taken / weights[i]))
                room[slot] -= taken
                mass -= taken
        experts += slots
    return experts


def sampling_shares(sizes: Mapping[str, int], sampler_cfg: Optional[Mapping] = None
                    ) -> Dict[str, float]:
    """Each dataset's share of the training samples under a :class:`MixtureSampler` config.

    Args:
        sizes: Dataset name -> number of training images, in mixture order.
        sampler_cfg: The config's ``train_dataloader.sampler`` (``mode``, ``temperature``,
            ``ratios``); None means proportional.
    """
    sampler_cfg = dict(sampler_cfg or {})
    if sampler_cfg.pop('type', 'MixtureSampler') != 'MixtureSampler':
        raise ExpertPlanError(
            'the planner needs the dataset shares of a MixtureSampler; the config\'s '
            'train_dataloader.sampler is another type: set its mode in a MixtureSampler.')
    sampler_cfg.pop('shuffle', None)
    sampler_cfg.pop('seed', None)
    sampler = MixtureSampler(_SizedMixture(sizes), shuffle=False, seed=0, **sampler_cfg)
    return dict(sampler.probabilities)


class _SizedMixture:
    """What :class:`MixtureSampler` reads of a mixture, from sizes alone."""

    def __init__(self, sizes: Mapping[str, int]):
        self.names = list(sizes)
        self.cumulative_sizes = np.cumsum([int(s) for s in sizes.values()]).tolist()

    def __len__(self) -> int:
        return self.cumulative_sizes[-1] if self.cumulative_sizes else 0


def mixture_sizes(cfg: Config) -> Dict[str, int]:
    """Training images per dataset of the config's ``train_dataloader`` mixture (as the
    sampler counts them: after mmdet's filters); reads annotations, not images."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    dataset = DATASETS.build(dataset_cfg)
    if not hasattr(dataset, 'names'):
        raise ExpertPlanError(
            f'train_dataloader.dataset is a {type(dataset).__name__}; the planner needs a '
            'DatasetMixture, which names each dataset.')
    bounds = [0] + list(dataset.cumulative_sizes)
    return {name: int(b - a) for name, a, b in zip(dataset.names, bounds[:-1], bounds[1:])}


def dissimilarity_from_features(stats: Mapping[str, Mapping[str, np.ndarray]]
                                ) -> np.ndarray:
    """How far apart the datasets' token distributions are at the MoE layers.

    ``D[i, j] = sum over layers of |mean_i - mean_j|^2 / s^2``, with ``s^2`` the layer's
    per-coordinate token variance within a dataset, averaged over datasets: the distance
    between dataset means in units of the spread of a dataset's own tokens, so layers of
    different scale weigh alike.

    Args:
        stats: Dataset name -> ``{'mean': (L, C), 'var': (L, C)}`` token statistics per
            layer, as :func:`dataset_token_features` returns.

    Returns:
        np.ndarray: (N, N) in ``stats`` order.
    """
    means = np.stack([np.asarray(s['mean'], np.float64) for s in stats.values()])
    variances = np.stack([np.asarray(s['var'], np.float64) for s in stats.values()])
    spread = variances.mean(axis=(0, 2))  # (L,)
    if not np.all(spread > 0):
        raise ExpertPlanError('the tokens of some layer do not vary within any dataset; '
                              'the features cannot measure similarity')
    diff = means[:, None] - means[None, :]  # (N, N, L, C)
    dis = ((diff**2).mean(axis=3) / spread).sum(axis=2)
    return (dis + dis.T) / 2


def dissimilarity_from_routing(report: Mapping) -> np.ndarray:
    """Dissimilarity of the datasets' expert histograms in a ``routing.json`` report.

    ``D[i, j]`` is the squared Hellinger distance between the two datasets' shares of
    tokens per expert, averaged over the MoE layers (0: routed alike; 1: disjoint experts).
    The report's ``gate`` protocol is used: a vanilla MoE's load-balanced routing groups
    tokens by what they look like, with no dataset ids.

    Returns:
        np.ndarray: (N, N) in ``report['datasets']`` order.
    """
    try:
        layers = report['protocols']['gate']['layers']
        names = report['datasets']
        shares = np.stack([[layers[layer]['shares'][n] for layer in layers] for n in names])
    except (KeyError, TypeError) as error:
        raise ExpertPlanError(
            f'not a routing.json of tools/analysis_tools/analyze_routing.py: missing '
            f'{error}') from error
    roots = np.sqrt(np.clip(shares, 0, None))  # (N, L, E)
    affinity = np.einsum('ile,jle->ijl', roots, roots)
    dis = np.clip(1.0 - affinity.mean(axis=2), 0.0, None)
    np.fill_diagonal(dis, 0.0)
    return (dis + dis.T) / 2


def dataset_token_features(cfg: Union[str, Config],
                           checkpoint: str,
                           layers: Mapping[str, Sequence[int]],
                           split: str = 'val',
                           max_images: Optional[int] = None,
                           device: Optional[str] = None,
                           progress: bool = True) -> Dict[str, Dict[str, np.ndarray]]:
    """Token statistics at the inputs of the given FFNs, per dataset.

    Runs the model of ``cfg`` (a dense DINO or a DAMEX / vanilla MoE model) with the
    weights of ``checkpoint`` over the ``{split}_dataloader`` mixture and hooks the FFN of
    every listed layer (``encoder.layers.{k}.ffn``, ``decoder.layers.{k}.ffn``); what
    enters them is what an MoE at those places routes. Every token counts, the encoder's
    padding positions included (the demo's images share one size).

    Args:
        cfg: Config (or its path) whose dataloader is a :class:`DatasetMixture`.
        checkpoint: Trained weights of that config's model.
        layers: ``{'encoder': [...], 'decoder': [...]}``, e.g. the planned config's
            ``model.moe_layers``.
        split: ``'val'`` or ``'test'`` dataloader.
        max_images: At most this many images, taken in turn from each dataset.
        device: Torch device; default CUDA when available, else CPU.
        progress: Show a progress bar.

    Returns:
        dict: Dataset name -> ``{'mean': (L, C), 'var': (L, C), 'num_tokens': int}``, L the
        hooked layers in encoder-then-decoder order.
    """
    cfg = Config.fromfile(cfg) if isinstance(cfg, str) else copy.deepcopy(cfg)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model = MODELS.build(cfg.model)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
    model.to(device).eval()
    dataset, loader = _build_loader(cfg, split, max_images)
    names = list(dataset.names)
    modules = []
    for part in ('encoder', 'decoder'):
        for index in layers.get(part, ()):
            stack = getattr(model, part).layers
            if not 0 <= index < len(stack):
                raise ExpertPlanError(
                    f'the features model has {len(stack)} {part} layers, no layer {index}: '
                    'use a checkpoint of the same depth as the planned config.')
            modules.append(stack[index].ffn)
    if not modules:
        raise ExpertPlanError('no layer to take features from: layers names none')
    sums: Dict[str, List] = {n: [0.0] * len(modules) for n in names}
    squares: Dict[str, List] = {n: [0.0] * len(modules) for n in names}
    counts = dict.fromkeys(names, 0)
    batch_names: List[str] = []

    def hook_for(position):
        def hook(module, args, kwargs):
            tokens = (args[0] if args else kwargs['x']).detach().double()  # (B, T, C)
            for image, name in enumerate(batch_names):
                sums[name][position] = sums[name][position] + tokens[image].sum(0).cpu()
                squares[name][position] = squares[name][position] + (
                    tokens[image]**2).sum(0).cpu()
                if position == 0:
                    counts[name] += tokens.shape[1]
        return hook

    handles = [m.register_forward_pre_hook(hook_for(p), with_kwargs=True)
               for p, m in enumerate(modules)]
    try:
        with torch.no_grad():
            for data_batch in tqdm(loader, desc='token features', unit='batch',
                                   disable=not progress):
                batch_names[:] = [s.metainfo['dataset'] for s in data_batch['data_samples']]
                model.test_step(data_batch)
    finally:
        for handle in handles:
            handle.remove()
    stats = {}
    for name in names:
        if counts[name] == 0:
            raise ExpertPlanError(f'dataset {name!r} gave no images: raise max_images')
        mean = torch.stack(sums[name]).numpy() / counts[name]
        var = torch.stack(squares[name]).numpy() / counts[name] - mean**2
        stats[name] = dict(mean=mean, var=np.clip(var, 0, None), num_tokens=counts[name])
    return stats


def planned_config_text(base_config: str, plan: ExpertPlan, num_experts: int,
                        evaluators: Optional[Sequence[Mapping]] = None) -> str:
    """A config inheriting ``base_config`` that uses the plan's one-expert map.

    Experts the plan leaves unused (more experts than datasets) are written as
    ``model.spare_experts``, without which DAMEX stops before training.

    Args:
        base_config: Path of the inherited config, as ``_base_`` should name it.
        plan: A one-expert plan.
        num_experts: ``model.num_experts`` to set.
        evaluators: The base config's ``val_evaluator`` (a list or one evaluator); the
            ``RoutingMetric`` in it loses any map of its own, so that it scores against the
            model's. None writes the plugin's pair (MixtureCocoMetric, RoutingMetric).
    """
    expert_map = plan.dataset_to_expert
    spare = [e for e in range(num_experts) if e not in expert_map.values()]
    if isinstance(evaluators, Mapping):
        evaluators = [evaluators]
    evaluators = [e.to_dict() if hasattr(e, 'to_dict') else copy.deepcopy(dict(e))
                  for e in (evaluators or [dict(type='MixtureCocoMetric'),
                                           dict(type='RoutingMetric')])]
    for evaluator in evaluators:
        if evaluator.get('type') == 'RoutingMetric':
            evaluator.pop('dataset_to_expert', None)
    loads = ', '.join(f'{load:.3f}' for load in plan.expert_loads)
    lines = [
        '# Written by tools/plan_experts.py: the dataset -> expert map planned from the',
        f'# datasets\' sizes and similarity (cost {plan.cost:.4f}, LP bound '
        f'{plan.lower_bound:.4f}; expert token loads {loads}).',
        f'_base_ = {base_config!r}',
        '',
        f'model = dict(num_experts={num_experts}, '
        f'dataset_to_expert=dict(_delete_=True, **{expert_map!r}), '
        f'spare_experts={spare!r})',
        f'val_evaluator = {evaluators!r}',
        'test_evaluator = val_evaluator',
    ]
    return '\n'.join(lines) + '\n'


def plan_config_experts(config: str,
                        out: str,
                        features_checkpoint: Optional[str] = None,
                        routing_json: Optional[str] = None,
                        features_config: Optional[str] = None,
                        split: str = 'val',
                        max_images: Optional[int] = None,
                        device: Optional[str] = None,
                        num_experts: Optional[int] = None,
                        capacity_factor: float = DEFAULT_CAPACITY_FACTOR,
                        sizes: Optional[Mapping[str, int]] = None) -> dict:
    """Plan ``config``'s dataset -> expert map and write the planned config.

    What ``tools/plan_experts.py`` runs: the sampling shares of ``config``'s training
    mixture, a dissimilarity between its datasets from one source, the one-expert and the
    split plan, then ``out`` (a config inheriting ``config`` with the one-expert map,
    :func:`planned_config_text`) and ``out``'s ``.json`` with the summary.

    Args:
        config: The DAMEX config to plan the map of.
        out: The planned config to write.
        features_checkpoint: Weights whose FFN input tokens give the dissimilarity
            (:func:`dataset_token_features`), of ``features_config`` (default: ``config``).
        routing_json: Or the ``routing.json`` of a vanilla MoE
            (:func:`dissimilarity_from_routing`); exactly one of the two.
        split, max_images, device: Images of the features, as in
            :func:`dataset_token_features`.
        num_experts: Default: ``config``'s ``model.num_experts``.
        capacity_factor: An expert takes at most ``capacity_factor / num_experts`` of the
            training tokens.
        sizes: Training images per dataset, instead of reading ``config``'s annotations.

    Returns:
        dict: The summary written to the ``.json``: config, num_experts, capacity_factor,
        sizes, shares, datasets, dissimilarity, and both plans (``vars`` of
        :class:`ExpertPlan`); :func:`format_expert_plans` prints it.

    Raises:
        ExpertPlanError: No or two similarity sources, no number of experts, a source
            without data of a training dataset, or a problem without a valid map.
    """
    if (features_checkpoint is None) == (routing_json is None):
        raise ExpertPlanError('give one similarity source: features_checkpoint '
                              '(--features-checkpoint) or routing_json (--routing-json).')
    cfg = Config.fromfile(config)
    num_experts = num_experts or cfg.model.get('num_experts')
    if not num_experts:
        raise ExpertPlanError(f'{config} sets no model.num_experts: pass --num-experts.')
    sizes = ({name: int(n) for name, n in sizes.items()} if sizes else mixture_sizes(cfg))
    shares = sampling_shares(sizes, cfg.train_dataloader.get('sampler'))
    if routing_json is not None:
        report = json.loads(Path(routing_json).read_text())
        source_names = list(report.get('datasets', []))
        dissimilarity = dissimilarity_from_routing(report)
    else:
        stats = dataset_token_features(
            features_config or config, features_checkpoint,
            layers=cfg.model.get('moe_layers'), split=split, max_images=max_images,
            device=device)
        source_names = list(stats)
        dissimilarity = dissimilarity_from_features(stats)
    missing = [n for n in shares if n not in source_names]
    if missing:
        raise ExpertPlanError(
            f'the similarity source has no data for datasets {missing} of {config} (it has '
            f'{source_names}): use a run whose {split} mixture holds every training '
            'dataset.')
    order = [source_names.index(n) for n in shares]
    dissimilarity = dissimilarity[np.ix_(order, order)]
    plan = plan_experts(shares, dissimilarity, num_experts, capacity_factor)
    split_plan = plan_experts(shares, dissimilarity, num_experts, capacity_factor,
                              allow_split=True)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = osp.relpath(osp.abspath(config), osp.abspath(out.parent))
    out.write_text(planned_config_text(base, plan, num_experts, cfg.get('val_evaluator')))
    summary = dict(
        config=config, num_experts=num_experts, capacity_factor=capacity_factor,
        sizes=sizes, shares=shares, datasets=list(shares),
        dissimilarity=dissimilarity.round(6).tolist(), plan=vars(plan),
        split_plan=vars(split_plan))
    out.with_suffix('.json').write_text(json.dumps(summary, indent=2))
    return summary


def format_expert_plans(summary: Mapping) -> str:
    """The plans of :func:`plan_config_experts`: per dataset its share, expert and split
    experts, then each plan's cost against the LP bound and its expert loads."""
    plan, split_plan = summary['plan'], summary['split_plan']
    lines = [f'{"dataset":<14}{"share":>8}{"expert":>8}   split plan']
    for name, share in summary['shares'].items():
        lines.append(f'{name:<14}{share:>8.3f}{plan["dataset_to_experts"][name][0]:>8}'
                     f'   {split_plan["dataset_to_experts"][name]}')
    for label, p in (('one-expert', plan), ('split', split_plan)):
        lines.append(f'{label} plan: cost {p["cost"]:.4f} (LP bound '
                     f'{p["lower_bound"]:.4f}), expert loads '
                     + ' '.join(f'{load:.3f}' for load in p['expert_loads']))
    if plan['oversized']:
        lines.append(
            f'over the capacity {plan["capacity"]:.3f} of one expert (experts they '
            f'would need): {plan["oversized"]}; model.dataset_to_expert takes one '
            'expert per dataset, so the config gives each of them one.')
    return '\n'.join(lines)
