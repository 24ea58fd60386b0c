"""Analyses of trained DAMEX checkpoints.

Not imported by ``damex_mmdet`` itself: training needs none of it.
"""
from .expert_planner import (ExpertPlan, ExpertPlanError, format_expert_plans,
                             plan_config_experts, plan_experts, planned_config_text)
from .label_confusion import (LabelConfusionError, format_label_confusion,
                              label_block_confusion)
from .routing_analysis import (RoutingAnalysisError, analyze_routing,
                               format_routing_table)

__all__ = [
    'ExpertPlan', 'ExpertPlanError', 'LabelConfusionError', 'RoutingAnalysisError',
    'analyze_routing', 'format_expert_plans', 'format_label_confusion',
    'format_routing_table', 'label_block_confusion', 'plan_config_experts', 'plan_experts',
    'planned_config_text'
]
