# The paper's DAMEX on UODB: dino_udb.py with MoE FFNs (8 experts, top-1) in decoder
# layers 0, 2, 4 and the DAMEX routing loss. The dataset -> expert map is the
# reference's: VOC07, VOC12 and Comic share the COCO expert, KITTI shares
# the LISA expert.
_base_ = './dino_udb.py'

model = dict(
    type='DAMEX',
    num_experts=8,
    moe_layers=dict(encoder=[], decoder=[0, 2, 4]),
    routing_loss=dict(type='DAMEXLoss', loss_weight=0.1),
    dataset_to_expert=dict(
        coco=0, voc07=0, voc12=0, comic=0,
        kitti=1, lisa=1,
        widerface=2, dota=3, watercolor=4, clipart=5, kitchen=6,
        deeplesion=7))
# RoutingMetric scores against the model's map (the test mixture has no
# voc12: VOC07's test set scores the shared VOC block).
val_evaluator = [dict(type='MixtureCocoMetric'), dict(type='RoutingMetric')]
test_evaluator = val_evaluator
