# DAMEX on the demo mixture, the recommended configuration: the paper's DAMEX
# (damex_paper_demo.py) plus a shared expert in every MoE layer, a dense FFN
# of the full width that every token uses, summed with the token's dataset
# expert. With temperature sampling it beat dense DINO by +0.053 / +0.017 /
# +0.012 AP (seeds 0-2, 200 val images per dataset) where the paper's DAMEX
# lost; benchmarks/README.md#beating-dense-dino. Training FLOPs: 1.034x.
_base_ = './damex_paper_demo.py'

model = dict(moe_cfg=dict(shared_expert=True))
