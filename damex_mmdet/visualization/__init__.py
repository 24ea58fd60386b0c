from .routing import RoutingStatistics, plot_routing_heatmaps

__all__ = ['RoutingStatistics', 'plot_routing_heatmaps']
