# The vanilla MoE baseline: damex_paper_demo.py with a load-balancing loss
# instead of the dataset-aware routing loss.
_base_ = './damex_paper_demo.py'

model = dict(
    routing_loss=dict(_delete_=True, type='LoadBalancingLoss',
                      loss_weight=0.01),
    dataset_to_expert=None)
