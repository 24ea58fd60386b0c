# The paper's DAMEX on the demo mixture: dino_demo.py with MoE FFNs in
# decoder layers 0 and 2, one expert per demo dataset, and the DAMEX routing
# loss. damex_demo.py, the recommended configuration, adds a shared expert.
_base_ = './dino_demo.py'

dataset_to_expert = dict(photo=0, sketch=1, aerial=2, scan=3)
model = dict(
    type='DAMEX',
    num_experts=4,
    moe_layers=dict(encoder=[], decoder=[0, 2]),
    routing_loss=dict(type='DAMEXLoss', loss_weight=0.1),
    dataset_to_expert=dataset_to_expert)
val_evaluator = [
    dict(type='MixtureCocoMetric'),
    dict(type='RoutingMetric', dataset_to_expert=dataset_to_expert)
]
test_evaluator = val_evaluator
