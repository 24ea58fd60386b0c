# The paper's DAMEX on the demo mixture: dino_demo.py with MoE FFNs in
# decoder layers 0 and 2, one expert per demo dataset, and the DAMEX routing
# loss. damex_demo.py, the recommended configuration, adds a shared expert.
_base_ = './dino_demo.py'

model = dict(
    type='DAMEX',
    num_experts=4,
    moe_layers=dict(encoder=[], decoder=[0, 2]),
    routing_loss=dict(type='DAMEXLoss', loss_weight=0.1),
    # A config inheriting this one replaces the map with
    # dataset_to_expert=dict(_delete_=True, ...): mmengine would merge it.
    dataset_to_expert=dict(photo=0, sketch=1, aerial=2, scan=3))
# RoutingMetric scores against the model's map.
val_evaluator = [dict(type='MixtureCocoMetric'), dict(type='RoutingMetric')]
test_evaluator = val_evaluator
