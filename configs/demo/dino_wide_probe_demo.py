# dino_wide_demo.py (DAMEX's active FFN width) with the dataset probe of
# dino_probe_demo.py: the dense control with both DAMEX's width and its
# dataset supervision. benchmarks/README.md#does-damex-win
_base_ = './dino_wide_demo.py'

model = dict(
    dataset_probe=dict(datasets=['photo', 'sketch', 'aerial', 'scan'],
                       layers=dict(decoder=[0, 2]), loss_weight=0.1))
