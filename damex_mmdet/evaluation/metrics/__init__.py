from .mixture_coco_metric import MixtureCocoMetric
from .routing_metric import RoutingMetric

__all__ = ['MixtureCocoMetric', 'RoutingMetric']
