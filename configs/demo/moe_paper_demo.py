# The reference's vanilla MoE on the demo mixture: moe_demo.py with tutel's
# load + importance loss (weight 0.1) on the queries matched to a ground-truth
# box instead of the Switch loss on all queries, and the reference's gate
# noise (std 1 / num_experts), which that loss's load term needs.
_base_ = './moe_demo.py'

model = dict(
    routing_loss=dict(_delete_=True, type='LoadImportanceLoss',
                      loss_weight=0.1),
    routing_loss_queries='matched',
    moe_cfg=dict(gate_noise_std=1 / 4))
