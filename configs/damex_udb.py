# DAMEX on UODB, the recommended configuration: the paper's DAMEX
# (damex_paper_udb.py) plus a shared expert in every MoE layer, a dense FFN of
# the full width that every token uses, summed with the token's dataset
# expert. On the demo mixture it beat dense DINO in each of 3 seeds where the
# paper's DAMEX lost (benchmarks/README.md#beating-dense-dino); on UODB
# neither gain is measured.
# Training FLOPs at this scale (counted, benchmarks/training_flops.py --size
# uodb): 1.012x dense DINO.
_base_ = './damex_paper_udb.py'

model = dict(moe_cfg=dict(shared_expert=True))
