# DAMEX on UODB, the recommended configuration: the paper's DAMEX
# (damex_paper_udb.py) plus a shared expert in every MoE layer, a dense FFN of
# the full width that every token uses, summed with the token's dataset
# expert. On the demo mixture's held-out test split (temperature sampling, 5
# seeds) it ties dense DINO, and a dense DINO as wide in the same layers beats
# both (benchmarks/README.md#does-damex-win). On UODB (proportional sampling,
# as the reference) none of them is measured; dino_wide_udb.py is that dense
# control at this scale.
# Training FLOPs at this scale (counted, benchmarks/training_flops.py --size
# uodb): 1.012x dense DINO.
_base_ = './damex_paper_udb.py'

model = dict(moe_cfg=dict(shared_expert=True))
