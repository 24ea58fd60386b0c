"""Grow a trained DAMEX checkpoint for a config that adds datasets.

:func:`grow_checkpoint` is what ``tools/grow_checkpoint.py`` runs: it checks
that the new config extends the trained model (its mixture keeps every old
dataset, its label space every old class, its expert map every old expert),
routes val images of the new datasets through the trained model to choose
the expert each new one starts from, fits the new gate rows to the old and
new datasets' tokens, and writes the grown checkpoint with the growth
history in its meta. The state-dict operations it uses are in
:mod:`damex_mmdet.models.grow`.
"""
import copy
import keyword
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import torch
from mmdet.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope

from ..datasets.label_space import UnifiedLabelSpace
from ..visualization.routing import RoutingStatistics
from .detectors import DAMEX
from .grow import (EXPERT_INITS, GATE_INITS, GrowError, check_grown_expert_map,
                   check_grown_label_space, check_new_dataset_names,
                   fit_new_gate_rows, grow_state_dict, grown_meta,
                   source_experts_from_counts)

# Gate inputs kept of each routed image for fitting the new gate rows: a
# random subset bounds the memory where an MoE layer sees every encoder
# position.
TOKENS_PER_IMAGE = 256


def _build_damex(cfg: Config, which: str) -> DAMEX:
    # DINO writes into the config it is built from; keep ``cfg`` reusable.
    model = MODELS.build(copy.deepcopy(cfg.model))
    if not isinstance(model, DAMEX):
        raise GrowError(f'the {which} config builds a '
                        f'{type(model).__name__}, not a DAMEX model: only '
                        f'DAMEX models grow.')
    return model


def _mixture_names(cfg: Config, loader: str):
    dataset = cfg.get(loader, {}).get('dataset', {})
    if 'datasets' not in dataset:
        raise GrowError(f'the new config\'s {loader}.dataset is not a '
                        f'DatasetMixture: list the datasets there.')
    return [entry.get('name') for entry in dataset.datasets]


def _old_label_space(meta: dict, old_cfg: Config) -> UnifiedLabelSpace:
    stored = (meta.get('dataset_meta') or {}).get('label_space')
    if stored is not None:
        return UnifiedLabelSpace.from_dict(stored)
    dataset = DATASETS.build(old_cfg.train_dataloader.dataset)
    return UnifiedLabelSpace.from_dict(dataset.metainfo['label_space'])


@torch.no_grad()
def route_val_images(old_model: DAMEX, new_cfg: Config,
                     per_dataset: Dict[str, int], device: Optional[str]
                     ) -> Tuple[dict, dict]:
    """Route val images of the new config's mixture through the old model.

    Args:
        per_dataset: How many images of each dataset, the first ones of its
            val set.

    Returns:
        tuple: first-choice token counts ``{layer: {dataset: [E_old]}}``
        (as :class:`~damex_mmdet.visualization.RoutingStatistics` counts
        them) and the gate inputs ``{layer: {dataset: (n, D)}}``, at most
        ``TOKENS_PER_IMAGE`` counted tokens of each image.

    The images run through the old model in tensor mode (no prediction,
    whose checks expect the model's own mixture).
    """
    loader_cfg = new_cfg.val_dataloader
    dataset_cfg = copy.deepcopy(loader_cfg.dataset)
    dataset_cfg.datasets = [e for e in dataset_cfg.datasets
                            if e.name in per_dataset]
    dataset_cfg.pop('label_space', None)
    dataset = DATASETS.build(dataset_cfg)
    starts = [0] + list(dataset.cumulative_sizes[:-1])
    sizes = [end - start for start, end in zip(starts,
                                                dataset.cumulative_sizes)]
    names = [entry.name for entry in dataset_cfg.datasets]
    indices = [start + i for name, start, size in zip(names, starts, sizes)
               for i in range(min(size, per_dataset[name]))]
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    model = old_model.to(device).eval()
    moes = list(model.named_moe_layers())
    inputs = {}

    def keep_input(name):
        def hook(module, args, kwargs):
            inputs[name] = args[0] if args else kwargs['x']
        return hook

    hooks = [moe.register_forward_pre_hook(keep_input(name), with_kwargs=True)
             for name, moe in moes]
    statistics = RoutingStatistics(names)
    tokens = {name: {} for name, _ in moes}
    sampler = torch.Generator().manual_seed(0)
    batch_size = loader_cfg.get('batch_size', 1)
    try:
        for first in range(0, len(indices), batch_size):
            batch = pseudo_collate(
                [dataset[i] for i in indices[first:first + batch_size]])
            data = model.data_preprocessor(batch, False)
            samples = data['data_samples']
            model(data['inputs'], samples, mode='tensor')
            counts, layers = model.routing_counts(samples)
            statistics.update([
                dict(dataset=s.metainfo['dataset'], routing_counts=c,
                     moe_layers=layers) for s, c in zip(samples, counts)])
            for name, moe in moes:
                counted = model.counted_tokens(name, moe, samples)
                for sample, x, mask in zip(samples, inputs[name], counted):
                    kept = x[mask].float().cpu()
                    keep = torch.randperm(len(kept), generator=sampler)
                    tokens[name].setdefault(sample.metainfo['dataset'],
                                            []).append(
                        kept[keep[:TOKENS_PER_IMAGE]])
    finally:
        for hook in hooks:
            hook.remove()
    counts = {layer: dict(zip(statistics.dataset_names,
                              statistics.counts[i].tolist()))
              for i, layer in enumerate(statistics.layer_names)}
    tokens = {layer: {name: torch.cat(parts) for name, parts in by.items()}
              for layer, by in tokens.items()}
    return counts, tokens


def fit_gate_rows(old_model: DAMEX, tokens: dict, old_names: List[str],
                  new_map: Dict[str, int], added: Dict[int, List[str]]
                  ) -> Tuple[Dict[str, torch.Tensor], Dict[str, dict]]:
    """The new gate rows of every MoE layer, fitted to ``tokens`` (see
    :func:`~damex_mmdet.models.grow.fit_new_gate_rows`), and per layer the
    step kept and the share of the measured new tokens that reach their
    experts with them."""
    new_names = [n for names in added.values() for n in names]
    rows, report = {}, {}
    for name, moe in old_model.named_moe_layers():
        by_dataset = tokens[name]
        new_x = torch.cat([by_dataset[n] for n in new_names])
        new_targets = torch.cat([
            torch.full((len(by_dataset[n]), ), new_map[n]) for n in new_names])
        old_x = torch.cat([by_dataset[n] for n in old_names])
        gate = moe.gate.weight.detach().cpu()
        rows[name], step = fit_new_gate_rows(gate, old_x, new_x, new_targets,
                                             len(added))
        weight = torch.cat([gate, rows[name]])
        reached = (new_x @ weight.T).argmax(-1) == new_targets
        report[name] = dict(step=round(step, 4),
                            new_tokens_reached=round(
                                float(reached.float().mean()), 4))
    return rows, report


def _images_to_route(new_cfg: Config, old_names, added: Dict[int, List[str]],
                     max_images: int, with_old: bool) -> Dict[str, int]:
    """Val images of each dataset to route: ``max_images`` shared by the new
    datasets and, for fitting gate rows, as many of each old one."""
    new_names = [n for names in added.values() for n in names]
    wanted = new_names + (list(old_names) if with_old else [])
    val_names = _mixture_names(new_cfg, 'val_dataloader')
    lacking = [n for n in wanted if n not in val_names]
    if lacking:
        raise GrowError(
            f'the new config\'s val_dataloader has no images of {lacking}: '
            f'growing routes the new datasets\' images through the trained '
            f'model to choose the experts the new ones start from, and '
            f'fits the new gate rows to the old and new datasets\' tokens. '
            f'Add them to the val mixture, or pass --source-expert and '
            f'--gate-init mean.')
    per_dataset = max(1, max_images // len(new_names))
    return {name: per_dataset for name in wanted}


def grow_checkpoint(old_config: str, old_checkpoint: str, new_config: str,
                    out: str, source_expert: Optional[int] = None,
                    max_images: int = 50, device: Optional[str] = None,
                    cfg_options: Optional[dict] = None,
                    gate_init: str = 'fit',
                    expert_init: str = 'copy') -> dict:
    """Grow ``old_checkpoint`` for ``new_config`` and write it to ``out``.

    Args:
        old_config: Config the checkpoint was trained with.
        old_checkpoint: The trained weights.
        new_config: The config that adds datasets: it inherits
            ``old_config``, appends the new datasets to the training and val
            mixtures, raises ``model.num_experts`` and
            ``bbox_head.num_classes`` and maps the new datasets in
            ``dataset_to_expert`` (see ``configs/demo/grow_*.py``).
        out: Where to write the grown checkpoint; written to ``out.tmp``
            first and renamed, so an existing file is replaced whole.
        source_expert: Start every new expert from this old expert instead
            of the one the new data's tokens route to most.
        max_images: New-data val images routed through the trained model,
            and as many of each old dataset for fitting the gate rows.
        device: Torch device of the routing (default: cuda when available).
        cfg_options: Overrides merged into the new config.
        gate_init, expert_init: How the new gate rows and experts start, one
            of :data:`GATE_INITS` and :data:`EXPERT_INITS`.

    Returns:
        dict: What grew (stored as the last entry of the checkpoint's
        ``meta['grown']``; :func:`format_growth` prints it).

    Raises:
        GrowError: Whatever stops the new config from growing the model,
            raised before anything is written.
    """
    if gate_init not in GATE_INITS:
        raise GrowError(f'gate_init must be one of {GATE_INITS}, got '
                        f'{gate_init!r}.')
    if expert_init not in EXPERT_INITS:
        raise GrowError(f'expert_init must be one of {EXPERT_INITS}, got '
                        f'{expert_init!r}.')
    old_cfg = Config.fromfile(old_config)
    new_cfg = Config.fromfile(new_config)
    if cfg_options:
        new_cfg.merge_from_dict(cfg_options)
    init_default_scope(new_cfg.get('default_scope', 'mmdet'))
    checkpoint = torch.load(old_checkpoint, map_location='cpu',
                            weights_only=False)
    old_state = checkpoint.get('state_dict', checkpoint)
    meta = checkpoint.get('meta') or {}

    old_model = _build_damex(old_cfg, 'old')
    try:
        old_model.load_state_dict(old_state, strict=True)
    except RuntimeError as error:
        raise GrowError(f'{old_checkpoint} does not fit the model of '
                        f'{old_config}: pass the config it was trained with.'
                        f'\n{error}') from error
    old_space = _old_label_space(meta, old_cfg)
    new_datasets = check_new_dataset_names(
        old_space.dataset_names, _mixture_names(new_cfg, 'train_dataloader'))
    new_model_cfg = new_cfg.model
    added = check_grown_expert_map(
        old_model.dataset_to_expert, old_model.num_experts,
        dict(new_model_cfg.get('dataset_to_expert') or {}),
        new_model_cfg.get('num_experts', old_model.num_experts),
        new_datasets)
    if source_expert is not None and not (
            0 <= source_expert < old_model.num_experts):
        raise GrowError(
            f'--source-expert {source_expert} is out of range: the trained '
            f'model has experts 0..{old_model.num_experts - 1}.')

    try:
        new_mixture = DATASETS.build(new_cfg.train_dataloader.dataset)
    except ValueError as error:
        raise GrowError(f'the new training mixture: {error}') from error
    new_space = UnifiedLabelSpace.from_dict(new_mixture.metainfo['label_space'])
    check_grown_label_space(old_space, new_space)
    new_space.check_num_classes(
        new_model_cfg.bbox_head.get('num_classes'),
        'model.bbox_head.num_classes of the new config')
    new_model = _build_damex(new_cfg, 'new')

    layers = [name for name, _ in new_model.named_moe_layers()]
    counts, gate_rows, gate_fit = None, None, None
    if added and (source_expert is None or gate_init == 'fit'):
        counts, tokens = route_val_images(
            old_model, new_cfg,
            _images_to_route(new_cfg, old_space.dataset_names, added,
                             max_images, gate_init == 'fit'), device)
        if gate_init == 'fit':
            gate_rows, gate_fit = fit_gate_rows(
                old_model, tokens, list(old_space.dataset_names),
                dict(new_model.dataset_to_expert), added)
    if not added:
        sources = {}
    elif source_expert is not None:
        sources = {layer: {e: source_expert for e in added}
                   for layer in layers}
    else:
        sources = source_experts_from_counts(counts, added)
    state = grow_state_dict(old_state, new_model, old_space.num_classes,
                            sources, gate_rows, expert_init)
    new_model.load_state_dict(state, strict=True)

    info = dict(
        from_checkpoint=osp.abspath(old_checkpoint),
        new_datasets=list(new_datasets),
        num_classes=[old_space.num_classes, new_space.num_classes],
        num_experts=[old_model.num_experts, new_model.num_experts],
        dataset_to_expert=dict(new_model.dataset_to_expert),
        source_experts=sources,
        new_data_routing=counts,
        gate_init=gate_init,
        expert_init=expert_init,
        gate_fit=gate_fit)
    # Write next to the target and rename, so an interrupted run never
    # leaves a truncated checkpoint behind.
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    tmp_path = f'{out}.tmp'
    torch.save(dict(state_dict=state,
                    meta=grown_meta(meta, new_mixture.metainfo, info)),
               tmp_path)
    os.replace(tmp_path, out)
    return info


def format_growth(info: dict, out: str) -> str:
    """What :func:`grow_checkpoint` wrote to ``out``: the datasets, classes
    and experts added, and per MoE layer where each new expert started and
    how many measured new tokens the fitted gate rows send to it."""
    (old_c, new_c), (old_e, new_e) = info['num_classes'], info['num_experts']
    lines = [f'wrote {out}: datasets {info["new_datasets"]} added, '
             f'classes {old_c} -> {new_c}, experts {old_e} -> {new_e}']
    for layer, sources in info['source_experts'].items():
        fit = (info['gate_fit'] or {}).get(layer)
        lines.append(
            f'  {layer}: ' + ', '.join(
                f'expert {new} from expert {old}'
                for new, old in sources.items())
            + ('' if fit is None else
               f'; fitted gate rows (step {fit["step"]:.2f} from the mean '
               f'row) send {fit["new_tokens_reached"]:.1%} of the measured '
               f'new tokens to their experts'))
    lines.append('the lines of the new config that this checkpoint fits:')
    lines += [f'    {line}' for line in grown_config_lines(info, out)]
    return '\n'.join(lines)


def grown_config_lines(info: dict, out: str) -> List[str]:
    """The ``model`` settings and ``load_from`` of a config that trains the
    checkpoint :func:`grow_checkpoint` wrote to ``out``, as Python lines: the
    map with ``_delete_=True`` (mmengine would merge it into the base's), the
    experts it leaves spare (a base's ``spare_experts`` may not fit it),
    ``load_from`` absolute (training may run from any folder)."""
    expert_map = info['dataset_to_expert']
    if all(name.isidentifier() and not keyword.iskeyword(name)
           for name in expert_map):
        map_text = 'dict(' + ', '.join(
            ['_delete_=True'] + [f'{n}={e}' for n, e in expert_map.items()]) + ')'
    else:
        map_text = repr({'_delete_': True, **expert_map})
    num_experts = info['num_experts'][1]
    spare = sorted(set(range(num_experts)) - set(expert_map.values()))
    return ['model = dict(',
            f'    num_experts={num_experts},',
            f'    dataset_to_expert={map_text},',
            f'    spare_experts={spare},',
            f'    bbox_head=dict(num_classes={info["num_classes"][1]}))',
            f'load_from = {osp.abspath(out)!r}']
