# DAMEX on UODB, the recommended configuration: the paper's DAMEX
# (damex_paper_udb.py) plus a shared expert in every MoE layer, a dense FFN of
# the full width that every token uses, summed with the token's dataset
# expert. On the demo mixture, both models sampling with temperature 2, it
# was ahead of dense DINO in each of 3 seeds, where the paper's DAMEX was
# behind at the one seed it ran (benchmarks/README.md#beating-dense-dino).
# On UODB (proportional sampling, as the reference) neither is measured.
# Training FLOPs at this scale (counted, benchmarks/training_flops.py --size
# uodb): 1.012x dense DINO.
_base_ = './damex_paper_udb.py'

model = dict(moe_cfg=dict(shared_expert=True))
