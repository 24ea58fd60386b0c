"""Routing accuracy and expert load of MoE detectors during validation."""
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmdet.registry import METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log


@METRICS.register_module()
class RoutingMetric(BaseMetric):
    """How the gates of a :class:`DAMEX` model route each dataset's tokens.

    Reads the per-image ``routing_counts`` (num_moe_layers, num_experts) that
    :class:`DAMEX` attaches to its predictions. Logs, per dataset,
    ``{prefix}/{dataset}/acc``: the share of its tokens (all MoE layers
    together) whose first-choice expert is the one ``dataset_to_expert``
    maps it to, with ``{prefix}/mean/acc`` over datasets; and
    ``{prefix}/expert{e}/load``: each expert's share of all tokens.

    Args:
        dataset_to_expert (dict, optional): The model's map; without it only
            the loads are logged (the vanilla MoE has no target experts).
        prefix (str, optional): Key prefix, default ``'routing'``.
    """

    default_prefix: Optional[str] = 'routing'

    def __init__(self, dataset_to_expert: Optional[Dict[str, int]] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.dataset_to_expert = dict(dataset_to_expert or {})

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'routing_counts' not in sample:
                raise KeyError(
                    'RoutingMetric needs predictions of a DAMEX model (they '
                    'carry routing_counts); drop it from the evaluator of a '
                    'dense model.')
            self.results.append(dict(
                dataset=sample.get('dataset'),
                counts=sample['routing_counts'].cpu().numpy()))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        counts_by_dataset = defaultdict(lambda: 0)
        for result in results:
            counts_by_dataset[result['dataset']] = (
                counts_by_dataset[result['dataset']] + result['counts'])
        metrics: Dict[str, float] = {}
        accuracies = []
        for name, counts in counts_by_dataset.items():
            expert = self.dataset_to_expert.get(name)
            if expert is None:
                continue
            accuracy = float(counts[:, expert].sum() / max(counts.sum(), 1))
            metrics[f'{name}/acc'] = accuracy
            accuracies.append(accuracy)
        if accuracies:
            metrics['mean/acc'] = float(np.mean(accuracies))
        total = sum(counts_by_dataset.values())
        loads = total.sum(axis=0) / max(total.sum(), 1)
        for expert, load in enumerate(loads):
            metrics[f'expert{expert}/load'] = float(load)
        print_log('Routing: ' + ', '.join(
            f'{k}={v:.3f}' for k, v in metrics.items()), logger='current')
        return metrics
