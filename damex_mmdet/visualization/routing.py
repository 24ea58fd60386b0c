"""Routing statistics of MoE detectors and the plots that show them.

:class:`RoutingStatistics` sums the per-image ``routing_counts`` that
:class:`~damex_mmdet.models.DAMEX` attaches to its predictions into one
(num_datasets, num_experts) token-count matrix per MoE layer;
:func:`plot_routing_heatmaps` draws each matrix as a heatmap and the expert
loads as bars: the plots behind the paper's claim that dataset-aware routing
avoids expert collapse.
"""
import os.path as osp
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
# Figure without pyplot renders PNGs with Agg and leaves the caller's global
# backend alone.
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

# The routing counts DAMEX attaches to each predicted sample, and the
# metainfo keys naming their rows and the image's dataset.
COUNTS_KEY = 'routing_counts'
LAYERS_KEY = 'moe_layers'
DATASET_KEY = 'dataset'


class RoutingStatistics:
    """First-choice token counts per MoE layer, dataset and expert.

    Args:
        dataset_names (Sequence[str], optional): Row order. Datasets met in
            :meth:`update` but not listed are appended in order of arrival.
        dataset_to_expert (dict, optional): Dataset name to its mapped expert
            (DAMEX). Without it (vanilla MoE) accuracies are None.

    Attributes:
        layer_names (list[str]): MoE layer names, set by the first update.
        num_experts (int): E, set by the first update.
        counts (np.ndarray): (num_layers, num_datasets, num_experts) int64,
            tokens of each dataset whose first choice was each expert.
        num_images (np.ndarray): (num_datasets,) int64.
    """

    def __init__(self,
                 dataset_names: Sequence[str] = (),
                 dataset_to_expert: Optional[Mapping[str, int]] = None) -> None:
        self.dataset_names: List[str] = list(dataset_names)
        self.dataset_to_expert = (dict(dataset_to_expert)
                                  if dataset_to_expert else None)
        self.layer_names: List[str] = []
        self.num_experts = 0
        self.counts = np.zeros((0, len(self.dataset_names), 0), np.int64)
        self.num_images = np.zeros(len(self.dataset_names), np.int64)

    def update(self, data_samples: Sequence[Any]) -> None:
        """Add the routing counts of predicted samples.

        Args:
            data_samples: ``DetDataSample`` s returned by ``DAMEX.predict``
                (or their dict form), each with ``routing_counts`` of shape
                (num_layers, num_experts), metainfo ``moe_layers`` and the
                ``dataset`` tag of :class:`DatasetMixture`.
        """
        for sample in data_samples:
            counts = self._get(sample, COUNTS_KEY)
            if counts is None:
                raise KeyError(
                    'a predicted sample has no routing_counts: routing '
                    'statistics need the predictions of a DAMEX model (a '
                    'dense DINO has no routing).')
            name = self._get(sample, DATASET_KEY)
            if name is None:
                raise KeyError(
                    f'image {self._get(sample, "img_path")} has no dataset '
                    'tag: use a DatasetMixture as the val/test dataset, which'
                    ' tags every image with its dataset.')
            counts = np.asarray(
                counts.cpu().numpy() if hasattr(counts, 'cpu') else counts,
                dtype=np.int64)
            self._init_layers(list(self._get(sample, LAYERS_KEY) or []),
                              counts.shape)
            row = self._row(name)
            self.counts[:, row] += counts
            self.num_images[row] += 1

    @staticmethod
    def _get(sample: Any, key: str) -> Any:
        if isinstance(sample, Mapping):
            return sample.get(key)
        return sample.get(key, None)

    def _init_layers(self, layer_names: List[str], shape: tuple) -> None:
        if len(shape) != 2:
            raise ValueError(f'routing_counts must have shape (num_layers, '
                             f'num_experts), got {shape}')
        if not layer_names:
            layer_names = [f'moe{i}' for i in range(shape[0])]
        if not self.layer_names:
            self.layer_names, self.num_experts = layer_names, shape[1]
            self.counts = np.zeros(
                (shape[0], len(self.dataset_names), shape[1]), np.int64)
        elif layer_names != self.layer_names or shape[1] != self.num_experts:
            raise ValueError(
                f'samples disagree on the MoE layers: {layer_names} with '
                f'{shape[1]} experts after {self.layer_names} with '
                f'{self.num_experts}; statistics of different models '
                'cannot be summed.')

    def _row(self, name: str) -> int:
        if name not in self.dataset_names:
            self.dataset_names.append(name)
            self.counts = np.concatenate(
                [self.counts,
                 np.zeros((self.counts.shape[0], 1, self.counts.shape[2]),
                          np.int64)], axis=1)
            self.num_images = np.append(self.num_images, 0)
        return self.dataset_names.index(name)

    @property
    def observed_datasets(self) -> List[str]:
        """Datasets with at least one image, in row order."""
        return [n for n, k in zip(self.dataset_names, self.num_images) if k]

    def shares(self) -> np.ndarray:
        """Row-normalised counts: each dataset's token share per expert.

        Returns:
            np.ndarray: (num_layers, num_datasets, num_experts) float; a row
            sums to 1, or is all 0 for a dataset without images.
        """
        totals = self.counts.sum(axis=-1, keepdims=True)
        return self.counts / np.maximum(totals, 1)

    def accuracy(self) -> Optional[np.ndarray]:
        """Share of each dataset's tokens routed to its mapped expert.

        Returns:
            np.ndarray | None: (num_layers, num_datasets) float, NaN for a
            dataset without images or without an expert in the map; None
            without ``dataset_to_expert``.
        """
        if not self.dataset_to_expert:
            return None
        shares = self.shares()
        accuracy = np.full(shares.shape[:2], np.nan)
        for row, name in enumerate(self.dataset_names):
            expert = self.dataset_to_expert.get(name)
            if expert is not None and self.num_images[row]:
                accuracy[:, row] = shares[:, row, expert]
        return accuracy

    def overall_accuracy(self) -> Optional[np.ndarray]:
        """Accuracy per dataset over all MoE layers' tokens together.

        Returns:
            np.ndarray | None: (num_datasets,) float, NaN as in
            :meth:`accuracy`.
        """
        if not self.dataset_to_expert:
            return None
        totals = self.counts.sum(axis=(0, 2))
        accuracy = np.full(len(self.dataset_names), np.nan)
        for row, name in enumerate(self.dataset_names):
            expert = self.dataset_to_expert.get(name)
            if expert is not None and totals[row]:
                accuracy[row] = self.counts[:, row, expert].sum() / totals[row]
        return accuracy

    def loads(self) -> np.ndarray:
        """Each expert's share of all tokens of a layer.

        Returns:
            np.ndarray: (num_layers, num_experts) float, rows sum to 1.
        """
        totals = self.counts.sum(axis=1)
        return totals / np.maximum(totals.sum(axis=-1, keepdims=True), 1)

    def summary(self) -> Dict[str, Any]:
        """JSON-serialisable statistics.

        Returns:
            dict: ``datasets``, ``num_images`` {dataset: n}, ``num_experts``,
            ``dataset_to_expert`` (or None), ``layers`` {layer: {``counts``
            and ``shares`` {dataset: [E]}, ``accuracy`` {dataset: float} or
            None, ``load`` [E]}}, ``accuracy`` {dataset: float} over all
            layers or None, and ``mean_accuracy`` over datasets or None.
        """
        datasets = self.observed_datasets
        rows = [self.dataset_names.index(n) for n in datasets]
        shares, loads = self.shares(), self.loads()
        accuracy = self.accuracy()
        layers = {}
        for i, layer in enumerate(self.layer_names):
            layers[layer] = dict(
                counts={n: self.counts[i, r].tolist()
                        for n, r in zip(datasets, rows)},
                shares={n: shares[i, r].tolist()
                        for n, r in zip(datasets, rows)},
                accuracy=None if accuracy is None else _finite_dict(
                    datasets, accuracy[i, rows]),
                load=loads[i].tolist())
        overall = self.overall_accuracy()
        overall_dict = None if overall is None else _finite_dict(
            datasets, overall[rows])
        mean = None
        if overall_dict:
            mean = float(np.mean(list(overall_dict.values())))
        return dict(
            datasets=datasets,
            num_images={n: int(self.num_images[r])
                        for n, r in zip(datasets, rows)},
            num_experts=self.num_experts,
            dataset_to_expert=self.dataset_to_expert,
            layers=layers,
            accuracy=overall_dict,
            mean_accuracy=mean)


def _finite_dict(names: Sequence[str], values: np.ndarray) -> Dict[str, float]:
    return {n: float(v) for n, v in zip(names, values) if np.isfinite(v)}


def short_layer_name(name: str) -> str:
    """'decoder.layers.2.ffn' -> 'decoder layer 2', for titles and tables."""
    parts = name.split('.')
    if len(parts) >= 3 and parts[1] == 'layers' and parts[2].isdigit():
        return f'{parts[0]} layer {parts[2]}'
    return name


def _file_stem(name: str) -> str:
    return short_layer_name(name).replace(' ', '_').replace('.', '_')


def plot_routing_heatmaps(stats: RoutingStatistics,
                          out_dir: str,
                          title: str,
                          prefix: str = 'routing') -> List[str]:
    """Draw one dataset x expert heatmap per MoE layer and the expert loads.

    A heatmap's cell is the share of a dataset's tokens whose first choice
    was an expert, annotated in percent; the mapped expert of each dataset
    (``dataset_to_expert``) is outlined in red and named in the row label.

    Args:
        stats: Filled statistics.
        out_dir: Folder for the PNGs, created if needed.
        title: First title line, e.g. ``'damex_demo - routing by gate'``.
        prefix: File name prefix, so several protocols share a folder.

    Returns:
        list[str]: ``{prefix}_{layer}.png`` per layer, then
        ``{prefix}_expert_load.png``.
    """
    if not stats.layer_names or not stats.observed_datasets:
        raise ValueError('no routing statistics to plot: update() was never '
                         'called with predicted samples.')
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    datasets = stats.observed_datasets
    rows = [stats.dataset_names.index(n) for n in datasets]
    num_experts = stats.num_experts
    shares = stats.shares()[:, rows]
    accuracy = stats.accuracy()
    expert_map = stats.dataset_to_expert or {}
    row_labels = [
        f'{n} ({stats.num_images[r]} img)' +
        (f' \u2192 E{expert_map[n]}' if n in expert_map else '')
        for n, r in zip(datasets, rows)
    ]
    paths = []
    for i, layer in enumerate(stats.layer_names):
        fig = Figure(figsize=(1.6 + 0.85 * num_experts + 1.8,
                              1.5 + 0.55 * len(datasets)),
                     layout='constrained')
        ax = fig.subplots()
        image = ax.imshow(shares[i], cmap='Blues', vmin=0, vmax=1,
                          aspect='auto')
        for r, name in enumerate(datasets):
            for e in range(num_experts):
                value = shares[i, r, e]
                ax.text(e, r, _percent_label(value), ha='center',
                        va='center', fontsize=9,
                        color='white' if value > 0.55 else 'black')
            if name in expert_map:
                # Inset so that the outline is not hidden by the spines.
                ax.add_patch(Rectangle(
                    (expert_map[name] - 0.45, r - 0.45), 0.9, 0.9,
                    fill=False, edgecolor='crimson', linewidth=2.5))
        ax.set_xticks(range(num_experts),
                      [f'E{e}' for e in range(num_experts)])
        ax.set_yticks(range(len(datasets)), row_labels)
        ax.set_xticks(np.arange(num_experts - 1) + 0.5, minor=True)
        ax.set_yticks(np.arange(len(datasets) - 1) + 0.5, minor=True)
        ax.grid(which='minor', color='white', linewidth=1.5)
        ax.tick_params(which='minor', length=0)
        ax.set_xlabel('expert (first choice)' + (
            '; red outline: the mapped expert' if expert_map else ''))
        ax.set_ylabel('dataset \u2192 mapped expert' if expert_map
                      else 'dataset')
        subtitle = short_layer_name(layer)
        if accuracy is not None:
            mean = np.nanmean(accuracy[i, rows]) if np.isfinite(
                accuracy[i, rows]).any() else float('nan')
            subtitle += (f': routing accuracy {100 * mean:.1f}% (mean over '
                         'datasets)')
        ax.set_title(f'{title}\n{subtitle}', fontsize=10)
        fig.colorbar(image, ax=ax, label="share of the dataset's tokens",
                     fraction=0.08, pad=0.03)
        path = osp.join(out_dir, f'{prefix}_{_file_stem(layer)}.png')
        fig.savefig(path, dpi=110)
        paths.append(path)
    paths.append(_plot_expert_load(stats, datasets, rows, out_dir, title,
                                   prefix))
    return paths


def _percent_label(share: float) -> str:
    """Whole percent, without rounding a few tokens to 0% or 100%."""
    if 0 < share < 0.005:
        return '<1%'
    if 0.995 <= share < 1:
        return '>99%'
    return f'{100 * share:.0f}%'


def _plot_expert_load(stats: RoutingStatistics, datasets: List[str],
                      rows: List[int], out_dir: str, title: str,
                      prefix: str) -> str:
    """One panel per layer: expert loads stacked by dataset."""
    num_layers, num_experts = len(stats.layer_names), stats.num_experts
    totals = stats.counts.sum(axis=(1, 2), keepdims=True)
    # (layers, datasets, experts): share of all tokens of the layer.
    parts = (stats.counts / np.maximum(totals, 1))[:, rows]
    fig = Figure(figsize=(1.2 + (0.45 * num_experts + 1.2) * num_layers, 3.8),
                 layout='constrained')
    axes = fig.subplots(1, num_layers, sharey=True, squeeze=False)
    colours = colormaps['tab10' if len(datasets) <= 10 else 'tab20']
    top = max(parts.sum(axis=1).max(), 1 / num_experts) * 1.15
    for i, ax in enumerate(axes[0]):
        bottom = np.zeros(num_experts)
        for d, name in enumerate(datasets):
            ax.bar(range(num_experts), parts[i, d], bottom=bottom,
                   color=colours(d), label=name, width=0.75)
            bottom += parts[i, d]
        ax.axhline(1 / num_experts, color='grey', linestyle='--',
                   linewidth=1, label='uniform load')
        ax.set_xticks(range(num_experts),
                      [f'E{e}' for e in range(num_experts)])
        ax.set_ylim(0, min(top, 1.05))
        ax.set_title(short_layer_name(stats.layer_names[i]), fontsize=10)
        ax.set_xlabel('expert')
    axes[0][0].set_ylabel("share of the layer's tokens")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='outside right center', fontsize=9)
    fig.suptitle(f'{title}\nexpert load (bars stacked by dataset)',
                 fontsize=10)
    path = osp.join(out_dir, f'{prefix}_expert_load.png')
    fig.savefig(path, dpi=110)
    return path
