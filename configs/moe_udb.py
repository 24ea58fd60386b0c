# The vanilla MoE baseline on UODB: damex_udb.py with a load-balancing loss
# instead of the dataset-aware routing loss.
_base_ = './damex_udb.py'

model = dict(
    routing_loss=dict(_delete_=True, type='LoadBalancingLoss',
                      loss_weight=0.01),
    dataset_to_expert=None)
val_evaluator = [
    dict(type='MixtureCocoMetric'),
    dict(type='RoutingMetric')
]
test_evaluator = val_evaluator
