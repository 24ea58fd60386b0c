# The vanilla MoE baseline on UODB as the reference trains it: damex_paper_udb.py
# with tutel's load + importance loss (weight 0.1) on the queries matched to
# a ground-truth box, instead of the dataset-aware routing loss, and the
# reference's gate noise (std 1 / num_experts), which that loss's load term
# needs.
_base_ = './damex_paper_udb.py'

model = dict(
    routing_loss=dict(_delete_=True, type='LoadImportanceLoss',
                      loss_weight=0.1),
    routing_loss_queries='matched',
    moe_cfg=dict(gate_noise_std=1 / 8),
    dataset_to_expert=None)
