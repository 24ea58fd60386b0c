"""Analyses of trained DAMEX checkpoints.

Not imported by ``damex_mmdet`` itself: training needs none of it.
"""
from .routing_analysis import (RoutingAnalysisError, analyze_routing,
                               format_routing_table)

__all__ = ['RoutingAnalysisError', 'analyze_routing', 'format_routing_table']
