"""Analyses of trained DAMEX checkpoints.

Not imported by ``damex_mmdet`` itself: training needs none of it.
"""
from .expert_planner import (ExpertPlan, ExpertPlanError, plan_experts,
                             planned_config_text)
from .routing_analysis import (RoutingAnalysisError, analyze_routing,
                               format_routing_table)

__all__ = [
    'ExpertPlan', 'ExpertPlanError', 'RoutingAnalysisError', 'analyze_routing',
    'format_routing_table', 'plan_experts', 'planned_config_text'
]
