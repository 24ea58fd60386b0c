# Vanilla MoE with the recommended DAMEX's architecture (damex_demo.py: the
# same shared expert, experts and FLOPs), trained with the load-balancing loss
# instead of the dataset-aware routing loss: the control for the routing loss.
_base_ = './moe_demo.py'

model = dict(moe_cfg=dict(shared_expert=True))
