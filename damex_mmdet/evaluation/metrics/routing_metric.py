"""Routing accuracy and expert load of MoE detectors during validation."""
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import numpy as np
from mmdet.registry import METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log

from ...models.detectors.damex import DATASET_EXPERT_KEY


@METRICS.register_module()
class RoutingMetric(BaseMetric):
    """How the gates of a :class:`DAMEX` model route each dataset's tokens.

    Reads the per-image ``routing_counts`` (num_moe_layers, num_experts) that
    :class:`DAMEX` attaches to its predictions. Logs, per dataset,
    ``{prefix}/{dataset}/acc``: the share of its tokens (all MoE layers
    together) whose first-choice expert is the one its dataset maps to, with
    ``{prefix}/mean/acc`` over datasets; and ``{prefix}/expert{e}/load``:
    each expert's share of all tokens.

    The target experts are the model's ``dataset_to_expert``, which DAMEX
    gives every prediction (metainfo ``dataset_expert``), so the map is
    written once, in the model. Without one (the vanilla MoE) only the loads
    are logged.

    Args:
        dataset_to_expert (dict, optional): A map to score against instead of
            the model's, e.g. to read a vanilla MoE against a planned map. It
            must name exactly the evaluated mixture's datasets, and agree with
            the model's map where the model has one.
        prefix (str, optional): Key prefix, default ``'routing'``.
    """

    default_prefix: Optional[str] = 'routing'

    def __init__(self, dataset_to_expert: Optional[Dict[str, int]] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.dataset_to_expert = dict(dataset_to_expert or {})

    @BaseMetric.dataset_meta.setter
    def dataset_meta(self, dataset_meta: Optional[dict]) -> None:
        # The runner sets it when it builds the val/test loop: a map that
        # does not fit the mixture stops there, before any training.
        self._dataset_meta = dataset_meta
        names = (dataset_meta or {}).get('dataset_names')
        if names is not None:
            self._check_map(names)

    def _check_map(self, dataset_names: Sequence[str]) -> None:
        """Raise unless the metric's own map names exactly the evaluated
        datasets, whose routing accuracy would otherwise go missing."""
        if not self.dataset_to_expert:
            return
        foreign = [n for n in self.dataset_to_expert if n not in dataset_names]
        unmapped = [n for n in dataset_names if n not in self.dataset_to_expert]
        problems = []
        if foreign:
            problems.append(f'names datasets {foreign} that the mixture does '
                            f'not have')
        if unmapped:
            problems.append(f'has no expert for {unmapped}, whose routing '
                            f'accuracy would be missing')
        if problems:
            raise ValueError(
                f'RoutingMetric.dataset_to_expert ({self.dataset_to_expert}) '
                f'does not fit the evaluated mixture of {list(dataset_names)}'
                f': it {" and ".join(problems)}. Drop the metric\'s '
                f'dataset_to_expert, and it reads the model\'s map; if a '
                f'_base_ config gave it its map, write '
                f'dataset_to_expert=dict(_delete_=True, ...).')

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        for sample in data_samples:
            if 'routing_counts' not in sample:
                raise KeyError(
                    'RoutingMetric needs predictions of a DAMEX model (they '
                    'carry routing_counts); drop it from the evaluator of a '
                    'dense model.')
            name = sample.get('dataset')
            expert = sample.get(DATASET_EXPERT_KEY)
            if self.dataset_to_expert:
                own = self.dataset_to_expert.get(name)
                if expert is not None and own != expert:
                    raise ValueError(
                        f'RoutingMetric.dataset_to_expert maps dataset '
                        f'{name!r} to expert {own!r}, but the model maps it '
                        f'to {expert}: drop the metric\'s dataset_to_expert, '
                        f'and it reads the model\'s map.')
                expert = own
            self.results.append(dict(
                dataset=name, expert=expert,
                counts=sample['routing_counts'].cpu().numpy()))

    def compute_metrics(self, results: List[dict]) -> Dict[str, float]:
        counts_by_dataset = defaultdict(lambda: 0)
        expert_of: Dict[str, Optional[int]] = {}
        for result in results:
            name = result['dataset']
            counts_by_dataset[name] = counts_by_dataset[name] + result['counts']
            expert_of[name] = result['expert']
        names = (self.dataset_meta or {}).get('dataset_names',
                                              list(counts_by_dataset))
        self._check_map(names)
        targeted = [n for n, e in expert_of.items() if e is not None]
        untargeted = [n for n, e in expert_of.items() if e is None]
        if targeted and untargeted:
            raise ValueError(
                f'datasets {untargeted} have no target expert while '
                f'{targeted} have: every evaluated dataset needs one in '
                f'model.dataset_to_expert.')
        metrics: Dict[str, float] = {}
        accuracies = []
        for name in targeted:
            counts = counts_by_dataset[name]
            accuracy = float(counts[:, expert_of[name]].sum()
                             / max(counts.sum(), 1))
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
