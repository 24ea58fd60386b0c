"""Grow a trained DAMEX model with new datasets: new classes, new experts.

A model trained on some datasets learns new ones without starting over:

* the unified label space appends the new datasets' classes, so every old
  class keeps its index and name (:func:`check_grown_label_space`);
* the classification branches (every decoder layer's and the encoder's
  two-stage branch) and DINO's denoising label embedding gain one row per
  new class;
* every MoE layer gains the experts the new datasets map to, each a copy of
  the old expert that the new data already routes to most in that layer
  (:func:`source_experts_from_counts`), and a gate row; with
  ``expert_init='zero_output'`` a new expert's output projection starts at
  zero, so its tokens start from the shared expert alone (from the
  identity in a model without one);
* everything else is copied unchanged (:func:`grow_state_dict`).

New rows start so that the grown model behaves like the old one on the old
classes and datasets:

* classification branches: weight 0 and the bias of mmdet's prior
  (``bias_init_with_prob(0.01)``, what ``DeformableDETRHead.init_weights``
  gives every class). A new class scores 0.01 on every query, so it neither
  changes the old classes' logits nor reorders the encoder's proposals (the
  top-k of each token's best class) where old classes score above 0.01;
* denoising label embedding: the mean of the old classes' rows, a generic
  "some object" query content that training specialises;
* gate, ``gate_init='mean'``: the mean of the old experts' rows. Its logit
  is then the mean of the old logits, below their maximum for every token
  that has any preference, so every token keeps its first-choice expert.
  The new expert does take a share of the softmax: where the MoE weights an
  expert's output by its probability (top-1 with ``normalize_weights=None``,
  the default, also under oracle routing) the chosen expert's weight is
  scaled by ``sum_old / (sum_old + e^mean)`` (``sum_old`` = the old experts'
  summed ``e^logit``), close to 1 for a confident gate, which DAMEX's routing
  loss trains. No finite row of a bias-free linear gate can leave the
  softmax unchanged; with renormalised weights (``normalize_weights=True``)
  the grown model's old outputs are the old model's.
* gate, ``gate_init='fit'`` (:func:`fit_new_gate_rows`): rows fitted to the
  trained model's own tokens, so that the new datasets' tokens reach their
  new experts from the first step while every measured old token keeps its
  first choice. Growing from the mean rows, the routing loss has to teach
  the new rows while the features under them move, and on the demo mixture
  the new rows learned to take a fifth of an old dataset's tokens in one
  layer, although a linear gate row separates the two datasets in the
  trained model's features there.
"""
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from mmengine.model import bias_init_with_prob
from torch import Tensor

from ..datasets.label_space import UnifiedLabelSpace
from .detectors import DAMEX

# State-dict entries with one row per unified class.
CLASS_ROW_KEYS = (re.compile(r'^bbox_head\.cls_branches\.\d+\.(weight|bias)$'),
                  re.compile(r'^dn_query_generator\.label_embedding\.weight$'))
# MoE layer entries with one slice per expert (leading dimension E).
EXPERT_KEY = re.compile(r'^expert_\w+$')
GATE_KEY = 'gate.weight'
# The prior probability of a class on a query, as in DeformableDETRHead.
NEW_CLASS_PRIOR = 0.01
# How a grown gate's new rows start (module docstring).
GATE_INITS = ('fit', 'mean')
# How a new expert starts from its source expert (module docstring).
EXPERT_INITS = ('copy', 'zero_output')
# The expert entries of the output projection, which 'zero_output' zeroes.
EXPERT_OUTPUT_KEYS = ('expert_w2', 'expert_b2')
# Weight of the pull of fitted gate rows towards the mean row: it keeps the
# fit finite where the tokens separate perfectly.
GATE_FIT_L2 = 1e-3
# Fitted rows stop short of the first step that would change an old token's
# first choice by this factor, so that ties in float32 fall to the old
# expert.
GATE_FIT_MARGIN = 0.99


class GrowError(ValueError):
    """A new config or checkpoint that cannot grow from the trained model."""


def check_new_dataset_names(old_datasets: Sequence[str],
                            new_entry_names: Sequence[str]) -> List[str]:
    """The datasets a new mixture adds, from its entries' names.

    Args:
        old_datasets: Datasets of the trained model, in layout order.
        new_entry_names: ``name`` of every entry of the new training mixture.

    Returns:
        list[str]: The new datasets, in mixture order.

    Raises:
        GrowError: A name is listed twice and belongs to an old dataset, an
            old dataset is missing, or no dataset is new.
    """
    for name in new_entry_names:
        if name in old_datasets and list(new_entry_names).count(name) > 1:
            raise GrowError(
                f'the new mixture lists dataset {name!r} twice, and the '
                f'trained model already has a dataset of that name (its '
                f'datasets: {list(old_datasets)}): give the new dataset a '
                f'name of its own; names key the label blocks, the expert map'
                f' and the metrics.')
    missing = [n for n in old_datasets if n not in new_entry_names]
    if missing:
        raise GrowError(
            f'the new mixture lacks the datasets {missing} of the trained '
            f'model: keep every old dataset in train_dataloader (their '
            f'replay keeps their accuracy; the MixtureSampler ratios set its '
            f'share) and append the new ones after them.')
    added = [n for n in new_entry_names if n not in old_datasets]
    if not added:
        raise GrowError(
            f'the new mixture adds no dataset to the trained model\'s '
            f'{list(old_datasets)}: append the new dataset to '
            f'train_dataloader.dataset.datasets.')
    return added


def check_grown_label_space(old: UnifiedLabelSpace,
                            new: UnifiedLabelSpace) -> Tuple[str, ...]:
    """Check that ``new`` extends ``old`` and return the new datasets.

    ``new`` extends ``old`` when every old dataset keeps its classes, every
    old unified class keeps its index and its name, and only classes of new
    datasets follow them. Appending new datasets after the old ones in
    disjoint blocks always does; a new dataset may also share an old block
    (``shared_blocks``) or merge its classes into old merged classes
    (``merge_by_name``).

    Raises:
        GrowError: An old dataset is missing or its classes changed, or an
            old class would move or change its name (e.g. a new dataset
            placed before old ones, or merged by name with an old class that
            has a dataset-qualified name, which would rename it).
    """
    for name in old.dataset_names:
        if name not in new.dataset_names:
            raise GrowError(
                f'dataset {name!r} of the trained model is not in the new '
                f'mixture ({list(new.dataset_names)}): keep every old '
                f'dataset.')
        if new.classes_of(name) != old.classes_of(name):
            raise GrowError(
                f'dataset {name!r} already exists in the trained model with '
                f'the classes {list(old.classes_of(name))}, but the new '
                f'config gives it {list(new.classes_of(name))}: give a new '
                f'dataset a name of its own, and keep the old datasets\' '
                f'classes.')
    for index, old_class in enumerate(old.classes):
        new_class = (new.classes[index] if index < new.num_classes
                     else None)
        if new_class != old_class:
            raise GrowError(
                f'the grown label space changes old class {index} from '
                f'{old_class!r} to {new_class!r}: an old class must keep its '
                f'index and name. List the new datasets after the old ones, '
                f'keep shared_blocks and merge_by_name of the old datasets, '
                f'and do not merge a new class by name with an old class '
                f'whose name is dataset-qualified (it would be renamed).')
    for name in old.dataset_names:
        local = list(range(len(old.classes_of(name))))
        if new.to_unified(name, local) != old.to_unified(name, local):
            raise GrowError(
                f'dataset {name!r} maps its classes to other unified labels '
                f'in the grown label space; keep the old layout.')
    return tuple(n for n in new.dataset_names if n not in old.dataset_names)


def check_grown_expert_map(old_map: Mapping[str, int], old_num_experts: int,
                           new_map: Mapping[str, int], new_num_experts: int,
                           new_datasets: Sequence[str]) -> Dict[int, List[str]]:
    """Check the grown ``dataset_to_expert`` and return the added experts.

    Args:
        old_map, old_num_experts: The trained model's expert map and size.
        new_map, new_num_experts: The new config's.
        new_datasets: The datasets being added.

    Returns:
        dict[int, list[str]]: Each added expert (``old_num_experts`` up to
        ``new_num_experts - 1``) and the new datasets mapped to it.

    Raises:
        GrowError: Fewer experts than before, an expert index out of range,
            an old dataset moved to another expert, a new dataset without an
            expert, or an added expert that no new dataset maps to.
    """
    if new_num_experts < old_num_experts:
        raise GrowError(
            f'model.num_experts={new_num_experts} in the new config, but the '
            f'trained model has {old_num_experts} experts: growing keeps '
            f'every expert; set num_experts >= {old_num_experts}.')
    try:
        DAMEX.checked_expert_map(new_map, new_num_experts)
    except ValueError as error:
        raise GrowError(str(error)) from error
    for name, expert in old_map.items():
        if new_map.get(name) != expert:
            raise GrowError(
                f'dataset {name!r} used expert {expert} in the trained model '
                f'but model.dataset_to_expert gives it {new_map.get(name)!r}:'
                f' old datasets keep their experts.')
    if old_map:
        unmapped = [n for n in new_datasets if n not in new_map]
        if unmapped:
            raise GrowError(
                f'the new datasets {unmapped} have no expert in '
                f'model.dataset_to_expert: map each to a new expert (e.g. '
                f'{unmapped[0]}={old_num_experts} with num_experts='
                f'{old_num_experts + 1}) or to an old one it should share.')
    added = {e: [n for n in new_datasets if new_map.get(n) == e]
             for e in range(old_num_experts, new_num_experts)}
    orphans = [e for e, names in added.items() if not names]
    if orphans:
        raise GrowError(
            f'the new config adds experts {orphans} (num_experts '
            f'{old_num_experts} -> {new_num_experts}) but no new dataset maps'
            f' to them: add one expert per new dataset that needs its own.')
    return added


def source_experts_from_counts(
        counts: Mapping[str, Mapping[str, Sequence[int]]],
        added_experts: Mapping[int, Sequence[str]]
) -> Dict[str, Dict[int, int]]:
    """The old expert each added expert starts from, per MoE layer.

    Args:
        counts: ``{layer: {dataset: [E_old]}}``, first-choice token counts of
            the trained model on the new datasets' images (the ``counts`` of
            :class:`~damex_mmdet.visualization.RoutingStatistics`).
        added_experts: Added expert -> the new datasets mapped to it.

    Returns:
        dict: ``{layer: {added expert: old expert}}``, the old expert that
        receives most of the tokens of the added expert's datasets (the
        lower index on ties).

    Raises:
        GrowError: No token of an added expert's datasets was counted.
    """
    sources = {}
    for layer, by_dataset in counts.items():
        sources[layer] = {}
        for expert, names in added_experts.items():
            rows = [by_dataset[n] for n in names if n in by_dataset]
            total = torch.tensor(rows, dtype=torch.long).sum(0) if rows \
                else None
            if total is None or int(total.sum()) == 0:
                raise GrowError(
                    f'no token of the datasets {list(names)} was routed in '
                    f'{layer}: the routing measurement needs some of their '
                    f'images (val_dataloader of the new config), or choose '
                    f'the source expert yourself.')
            sources[layer][expert] = int(total.argmax())
    return sources


def fit_new_gate_rows(old_gate: Tensor, old_tokens: Tensor,
                      new_tokens: Tensor, new_targets: Tensor,
                      num_added: int,
                      max_iter: int = 100) -> Tuple[Tensor, float]:
    """Gate rows of the added experts, fitted to the trained model's tokens.

    The rows start at the mean of the old rows and minimise the routing
    loss the grown model trains with, with the old rows fixed: the
    cross-entropy of the new datasets' tokens to their experts plus that of
    the old datasets' tokens to the old gate's first choices (each the mean
    over its tokens, so that the few images of a new dataset weigh as much as
    the old ones), plus ``GATE_FIT_L2`` times the squared distance from the
    mean row. The fitted rows are then pulled back towards the mean row
    until no old token changes its first choice (at the mean row none does,
    see the module docstring), so that where the new tokens cannot be told
    apart from old ones the old routing wins.

    Args:
        old_gate: (E_old, D) the trained gate's weight.
        old_tokens: (M, D) gate inputs of the old datasets' images.
        new_tokens: (N, D) gate inputs of the new datasets' images.
        new_targets: (N,) the expert each new token's dataset maps to.
        num_added: Experts added after the old ones.
        max_iter: L-BFGS iterations of the fit.

    Returns:
        tuple: (num_added, D) rows in the gate's dtype, and the step from
        the mean row to the fitted one that was kept, in [0, 1].
    """
    gate = old_gate.detach().double()
    old_x, new_x = old_tokens.double(), new_tokens.double()
    new_targets = new_targets.long()
    old_logits = old_x @ gate.T
    old_best, old_choice = old_logits.max(dim=-1)
    mean_rows = gate.mean(dim=0, keepdim=True).expand(num_added, -1)
    rows = mean_rows.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([rows], max_iter=max_iter,
                                  line_search_fn='strong_wolfe')

    def closure():
        optimizer.zero_grad()
        weight = torch.cat([gate, rows])
        loss = (torch.nn.functional.cross_entropy(new_x @ weight.T,
                                                  new_targets)
                + torch.nn.functional.cross_entropy(old_x @ weight.T,
                                                    old_choice)
                + GATE_FIT_L2 * (rows - mean_rows).square().sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    fitted = rows.detach()
    # Row a's logit moves linearly from the mean row's (below the old
    # token's best logit) to the fitted one's; the first step at which any
    # row reaches the best logit bounds the step of every row.
    at_mean = old_x @ mean_rows.T
    rise = old_x @ (fitted - mean_rows).T
    steps = torch.where(rise > 0, (old_best[:, None] - at_mean) / rise,
                        torch.full_like(rise, float('inf')))
    step = min(1., float(steps.min()) * GATE_FIT_MARGIN)
    rows = mean_rows + step * (fitted - mean_rows)
    return rows.to(old_gate.dtype), step


def _is_class_row_key(key: str) -> bool:
    return any(pattern.match(key) for pattern in CLASS_ROW_KEYS)


def _grow_class_rows(key: str, old: Tensor, num_classes: int) -> Tensor:
    """Append ``num_classes - len(old)`` rows to a per-class tensor."""
    num_new = num_classes - old.shape[0]
    if key.endswith('label_embedding.weight'):
        new_rows = old.mean(dim=0, keepdim=True).expand(num_new, -1)
    elif key.endswith('.bias'):
        new_rows = old.new_full((num_new, ),
                                bias_init_with_prob(NEW_CLASS_PRIOR))
    else:
        new_rows = old.new_zeros(num_new, *old.shape[1:])
    return torch.cat([old, new_rows])


def _grow_moe_entry(key: str, old: Tensor, sources: Mapping[int, int],
                    gate_rows: Optional[Tensor], expert_init: str) -> Tensor:
    """Append one slice per added expert to an MoE layer's entry.

    ``sources`` maps each added expert, in increasing order, to the old
    expert it copies (its output projection zeroed with ``expert_init=
    'zero_output'``); the gate gets ``gate_rows`` instead, or the mean of
    the old rows when None.
    """
    if key == GATE_KEY and gate_rows is not None:
        new_rows = list(gate_rows.to(old.dtype))
    elif key == GATE_KEY:
        new_rows = [old.mean(dim=0)] * len(sources)
    elif expert_init == 'zero_output' and key in EXPERT_OUTPUT_KEYS:
        new_rows = [torch.zeros_like(old[0])] * len(sources)
    else:
        new_rows = [old[sources[e]] for e in sorted(sources)]
    return torch.cat([old, torch.stack(new_rows)]) if new_rows else old


def grow_state_dict(old_state: Mapping[str, Tensor], new_model: DAMEX,
                    num_old_classes: int,
                    source_experts: Mapping[str, Mapping[int, int]],
                    gate_rows: Optional[Mapping[str, Tensor]] = None,
                    expert_init: str = 'copy') -> Dict[str, Tensor]:
    """Turn the trained model's state dict into one for ``new_model``.

    Args:
        old_state: The trained DAMEX's ``state_dict``.
        new_model: The grown model (built from the new config); only its
            entry names and shapes are used.
        num_old_classes: Unified classes of the trained model; the new ones
            follow them.
        source_experts: ``{layer: {added expert: old expert}}``, see
            :func:`source_experts_from_counts`; layers without added experts
            may be omitted.
        gate_rows: ``{layer: (added experts, D)}``, the new gate rows of
            those layers (e.g. :func:`fit_new_gate_rows`); the other layers'
            new rows are the mean of their old rows.
        expert_init: ``'copy'``: each new expert is its source expert;
            ``'zero_output'``: the same with its output projection zero.

    Returns:
        dict[str, Tensor]: A state dict that loads strictly into
        ``new_model``, old entries copied, new rows as in the module
        docstring.

    Raises:
        GrowError: The two models differ in anything but the number of
            classes and experts (other shapes, entries, MoE placement).
    """
    target = new_model.state_dict()
    missing = sorted(set(target) - set(old_state))
    unexpected = sorted(set(old_state) - set(target))
    if missing or unexpected:
        raise GrowError(
            f'the trained model and the new config\'s model have different '
            f'parameters (only in the new model: {missing[:5]}, only in the '
            f'trained one: {unexpected[:5]}): the new config must inherit '
            f'the trained model\'s config and change only datasets, classes '
            f'and experts (e.g. same moe_layers, depth and widths).')
    if expert_init not in EXPERT_INITS:
        raise GrowError(f'expert_init must be one of {EXPERT_INITS}, got '
                        f'{expert_init!r}.')
    moe_prefixes = {f'{name}.': name for name, _ in new_model.named_moe_layers()}
    num_classes = new_model.bbox_head.num_classes
    grown = {}
    for key, old in old_state.items():
        want = tuple(target[key].shape)
        prefix = next((p for p in moe_prefixes if key.startswith(p)), None)
        local = key[len(prefix):] if prefix else None
        if _is_class_row_key(key) and old.shape[0] == num_old_classes:
            value = _grow_class_rows(key, old, num_classes)
        elif local is not None and (local == GATE_KEY
                                    or EXPERT_KEY.match(local)):
            sources = dict(source_experts.get(moe_prefixes[prefix], {}))
            value = _grow_moe_entry(
                local, old, sources,
                (gate_rows or {}).get(moe_prefixes[prefix]), expert_init)
        else:
            value = old
        if tuple(value.shape) != want:
            raise GrowError(
                f'{key}: the trained model has shape {tuple(old.shape)}, the '
                f'new config\'s model needs {want}, which growing does not '
                f'produce: the new config may change only datasets, classes '
                f'(bbox_head.num_classes) and experts (num_experts, '
                f'dataset_to_expert).')
        grown[key] = value.clone()
    return grown


def grown_meta(old_meta: Optional[Mapping], dataset_meta: Mapping,
               grow_info: Mapping) -> dict:
    """Checkpoint ``meta`` of a grown model.

    ``dataset_meta`` (the new mixture's metainfo: unified class names,
    palette, label space) replaces the old one, so ``init_detector``,
    ``DetInferencer`` and ``tools/infer.py`` name old and new classes; each
    growth step is appended to ``meta['grown']``.
    """
    meta = dict(old_meta or {})
    meta['dataset_meta'] = dict(dataset_meta)
    meta['grown'] = list(meta.get('grown', [])) + [dict(grow_info)]
    return meta
