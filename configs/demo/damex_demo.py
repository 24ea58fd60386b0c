# DAMEX on the demo mixture, the recommended configuration: the paper's DAMEX
# (damex_paper_demo.py) plus a shared expert in every MoE layer, a dense FFN
# of the full width that every token uses, summed with the token's dataset
# expert, trained with temperature sampling (each dataset drawn in proportion
# to the square root of its size). Training FLOPs: 1.034x dense DINO's. Whether
# it beats dense DINO, and the capacity-matched controls (dino_wide_demo.py,
# dino_params_demo.py, moe_shared_demo.py, damex_random_demo.py), are measured
# on the held-out test split: docs/results.md.
_base_ = './damex_paper_demo.py'

model = dict(moe_cfg=dict(shared_expert=True))
train_dataloader = dict(
    sampler=dict(_delete_=True, type='MixtureSampler', mode='temperature',
                 temperature=2.0))
