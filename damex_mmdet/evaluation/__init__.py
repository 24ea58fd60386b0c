from .metrics import MixtureCocoMetric, RoutingMetric

__all__ = ['MixtureCocoMetric', 'RoutingMetric']
