"""Routing analysis of a trained DAMEX (or vanilla MoE) checkpoint.

:func:`analyze_routing` runs the model over the val or test mixture of its
config twice: routed by the learned gate, with the dataset unknown as at
test time (protocol ``gate``), and routed by dataset, each image sent to
its dataset's mapped expert (protocol ``dataset``, the oracle; only for
models with ``dataset_to_expert``). It writes ``routing.json`` and the
heatmaps of :func:`~damex_mmdet.visualization.plot_routing_heatmaps`.

``routing.json``::

    config, checkpoint, split, device, model, routing_loss, num_experts,
    layers [names], datasets [names], dataset_to_expert (or null),
    num_images (analysed, all datasets),
    protocols:
      gate | dataset:
        description, num_images {dataset: n},
        layers: {layer: counts {dataset: [E]}, shares {dataset: [E]},
                 accuracy {dataset: float} or null, load [E]},
        accuracy {dataset: float over all layers} or null, mean_accuracy,
        metrics {the config's evaluator, e.g. mixture/photo/AP} or {},
        plots [PNG file names in the output folder]

Accuracy *without* dataset ids is ``protocols.gate...accuracy``: the share
of a dataset's tokens the gate sends to the mapped expert. Under the oracle
every token goes to its mapped expert, so ``protocols.dataset`` accuracies
are 1 by construction (a check); what the oracle adds is its detection
``metrics``, the upper bound of perfect routing next to the gate's.
"""
import copy
import json
import os.path as osp
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch
from mmdet.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.evaluator import Evaluator
from mmengine.logging import print_log
from mmengine.registry import FUNCTIONS, init_default_scope
from mmengine.runner import load_checkpoint
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..models.detectors import DAMEX
from ..visualization.routing import (RoutingStatistics, plot_routing_heatmaps,
                                     short_layer_name)

class RoutingAnalysisError(ValueError):
    """A config or model the routing analysis cannot work with."""


PROTOCOLS = {
    'gate': 'routed by the learned gate, dataset unknown (test time)',
    'dataset': "routed by dataset: each image to its dataset's mapped "
               'expert (oracle)',
}
PLOT_TITLES = {'gate': 'routing by the gate',
               'dataset': 'routing by dataset (oracle)'}


def analyze_routing(cfg: Union[str, Config],
                    checkpoint: str,
                    out_dir: str,
                    split: str = 'val',
                    max_images: Optional[int] = None,
                    device: Optional[str] = None,
                    evaluate: bool = True,
                    progress: bool = True) -> Dict[str, Any]:
    """Measure and plot how a checkpoint routes each dataset's tokens.

    Args:
        cfg: Config (or its path) of a DAMEX model whose ``{split}_dataloader``
            is a :class:`DatasetMixture`.
        checkpoint: The trained weights.
        out_dir: Folder for ``routing.json`` and the PNGs; created if needed.
        split: ``'val'`` or ``'test'``: which dataloader of the config.
        max_images: Analyse at most this many images, taken in turn from
            each dataset so every dataset is represented.
        device: Torch device; default CUDA when available, else CPU.
        evaluate: Also run the config's ``{split}_evaluator`` on each
            protocol's predictions (detection AP gate vs oracle).
        progress: Show a progress bar.

    Returns:
        dict: The content of ``routing.json`` (see the module docstring).

    Raises:
        FileNotFoundError: The checkpoint does not exist.
        RoutingAnalysisError: The config's model is not a DAMEX model (a
            dense DINO has no routing to analyse), the checkpoint does not
            fit it, or the dataloader has no DatasetMixture.
    """
    if split not in ('val', 'test'):
        raise RoutingAnalysisError(
            f"split must be 'val' or 'test', got {split!r}")
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint} does not exist')
    cfg = Config.fromfile(cfg) if isinstance(cfg, str) else copy.deepcopy(cfg)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    _check_model_type(cfg)
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')

    model = MODELS.build(cfg.model)
    try:
        load_checkpoint(model, checkpoint, map_location='cpu', strict=True,
                        logger='silent')
    except RuntimeError as error:
        raise RoutingAnalysisError(
            f'checkpoint {checkpoint} does not fit the model of the config '
            f'(was it trained with another config?): {error}') from error
    model.to(device).eval()
    dataset, loader = _build_loader(cfg, split, max_images)
    dataset_names = list(dataset.names)

    protocols = ['gate']
    skipped = None
    if not model.dataset_to_expert:
        skipped = ('the model has no dataset_to_expert (vanilla MoE): '
                   'oracle routing and accuracies are skipped')
    else:
        unmapped = [n for n in dataset_names
                    if n not in model.dataset_to_expert]
        if unmapped:
            skipped = (f'datasets {unmapped} have no expert in '
                       'dataset_to_expert: oracle routing is skipped')
        else:
            protocols.append('dataset')
    if skipped:
        print_log(skipped, logger='current')

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model_name = (osp.splitext(osp.basename(cfg.filename))[0]
                  if cfg.filename else type(model).__name__)
    report: Dict[str, Any] = dict(
        config=cfg.filename or None,
        checkpoint=osp.abspath(checkpoint),
        split=split,
        device=str(device),
        model=type(model).__name__,
        routing_loss=type(model.routing_loss).__name__,
        num_experts=model.num_experts,
        layers=[name for name, _ in model.named_moe_layers()],
        datasets=dataset_names,
        dataset_to_expert=model.dataset_to_expert or None,
        num_images=len(loader.dataset),
        oracle_skipped=skipped,
        protocols={})
    evaluator_cfg = cfg.get(f'{split}_evaluator') if evaluate else None
    for protocol in protocols:
        model.test_routing = protocol
        stats, metrics = _run(model, loader, dataset, dataset_names,
                              evaluator_cfg, protocol, progress)
        title = (f'{model_name} ({osp.basename(checkpoint)}), {split}: '
                 f'{PLOT_TITLES[protocol]}')
        plots = plot_routing_heatmaps(stats, out_dir, title,
                                      prefix=f'routing_{protocol}')
        report['protocols'][protocol] = dict(
            description=PROTOCOLS[protocol],
            **stats.summary(),
            metrics=metrics,
            plots=[osp.basename(p) for p in plots])
    with open(osp.join(out_dir, 'routing.json'), 'w') as f:
        json.dump(report, f, indent=2)
    return report


def _check_model_type(cfg: Config) -> None:
    model_type = cfg.model.get('type')
    model_cls = MODELS.get(model_type) if isinstance(model_type,
                                                     str) else model_type
    if not (isinstance(model_cls, type) and issubclass(model_cls, DAMEX)):
        name = getattr(model_cls, '__name__', model_type)
        raise RoutingAnalysisError(
            f'the config builds a {name} model, which has no Mixture-of-'
            'Experts layers and so no routing to analyse (a dense DINO routes'
            ' nothing); use a DAMEX config (model.type="DAMEX", e.g. '
            'configs/demo/damex_demo.py or moe_demo.py).')


def _build_loader(cfg: Config, split: str, max_images: Optional[int]):
    loader_cfg = cfg.get(f'{split}_dataloader')
    if not loader_cfg:
        raise RoutingAnalysisError(f'the config has no {split}_dataloader')
    dataset = DATASETS.build(loader_cfg.dataset)
    if hasattr(dataset, 'full_init'):
        dataset.full_init()
    if not hasattr(dataset, 'names'):
        raise RoutingAnalysisError(
            f'{split}_dataloader.dataset is a {type(dataset).__name__}; the '
            'routing analysis needs a DatasetMixture, which tags each image '
            'with its dataset.')
    subset = dataset
    if max_images is not None and max_images < len(dataset):
        subset = Subset(dataset, _balanced_indices(dataset, max_images))
    collate_cfg = dict(loader_cfg.get('collate_fn',
                                      dict(type='pseudo_collate')))
    collate_fn = FUNCTIONS.get(collate_cfg.pop('type')) or pseudo_collate
    loader = DataLoader(
        subset,
        batch_size=loader_cfg.get('batch_size', 1),
        num_workers=loader_cfg.get('num_workers', 0),
        shuffle=False,
        collate_fn=lambda batch: collate_fn(batch, **collate_cfg))
    return dataset, loader


def _balanced_indices(dataset, max_images: int) -> List[int]:
    """Up to ``max_images`` indices of a mixture, one dataset after another."""
    starts = [0] + list(dataset.cumulative_sizes[:-1])
    sizes = np.diff([0] + list(dataset.cumulative_sizes))
    indices: List[int] = []
    for k in range(int(sizes.max())):
        for start, size in zip(starts, sizes):
            if k < size and len(indices) < max_images:
                indices.append(int(start + k))
    return sorted(indices)


def _run(model: DAMEX, loader: DataLoader, dataset, dataset_names: List[str],
         evaluator_cfg, protocol: str, progress: bool):
    stats = RoutingStatistics(dataset_names, model.dataset_to_expert)
    evaluator = None
    if evaluator_cfg:
        evaluator = Evaluator(copy.deepcopy(evaluator_cfg))
        evaluator.dataset_meta = dataset.metainfo
    bar = tqdm(loader, desc=f'routing by {protocol}', unit='batch',
               disable=not progress)
    with torch.no_grad():
        for data_batch in bar:
            outputs = model.test_step(data_batch)
            stats.update(outputs)
            if evaluator is not None:
                evaluator.process(data_samples=outputs, data_batch=data_batch)
    metrics = {}
    if evaluator is not None:
        metrics = {k: float(v) for k, v in
                   evaluator.evaluate(len(loader.dataset)).items()}
    return stats, metrics


def format_routing_table(report: Dict[str, Any]) -> str:
    """A plain-text summary of :func:`analyze_routing`'s report.

    Per protocol and dataset: the mapped expert and the share of its tokens
    routed there in each MoE layer (or, for a model without a map, its most
    used expert), then the expert loads of each layer.
    """
    layers = report['layers']
    heads = [short_layer_name(n).replace('decoder layer ', 'dec')
             .replace('encoder layer ', 'enc') for n in layers]
    expert_map = report['dataset_to_expert'] or {}
    lines = []
    for protocol, result in report['protocols'].items():
        lines.append(f'\n{protocol}: {result["description"]} '
                     f'({sum(result["num_images"].values())} images)')
        if expert_map:
            lines.append(f'{"dataset":<14}{"expert":>7}' +
                         ''.join(f'{h:>9}' for h in heads) + f'{"all":>9}')
            for name in result['datasets']:
                accuracies = [result['layers'][layer]['accuracy'].get(name)
                              for layer in layers]
                overall = result['accuracy'].get(name)
                lines.append(
                    f'{name:<14}{expert_map.get(name, "-"):>7}' + ''.join(
                        f'{_percent(a):>9}' for a in accuracies + [overall]))
            if result['mean_accuracy'] is not None:
                lines.append(f'{"mean accuracy":<21}' + ' ' * 9 * len(layers)
                             + f'{_percent(result["mean_accuracy"]):>9}')
        else:
            lines.append(f'{"dataset":<14}' + ''.join(
                f'{h + " top":>14}' for h in heads))
            for name in result['datasets']:
                cells = []
                for layer in layers:
                    shares = result['layers'][layer]['shares'][name]
                    top = int(np.argmax(shares))
                    cells.append(f'E{top} {_percent(shares[top])}')
                lines.append(f'{name:<14}' + ''.join(f'{c:>14}'
                                                     for c in cells))
        for layer, head in zip(layers, heads):
            load = result['layers'][layer]['load']
            lines.append(f'load {head:<9}' + ' '.join(
                f'E{e}={_percent(v)}' for e, v in enumerate(load)))
        for key in ('mixture/mean/AP', 'mixture/mean/AP50'):
            if key in result['metrics']:
                lines.append(f'{key} = {result["metrics"][key]:.4f}')
    return '\n'.join(lines).lstrip('\n')


def _percent(value: Optional[float]) -> str:
    return '-' if value is None else f'{100 * value:.1f}%'
