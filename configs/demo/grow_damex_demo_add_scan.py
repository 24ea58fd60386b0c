# Grow the three-dataset demo DAMEX (grow_damex_demo_base.py) with the fourth
# demo dataset, scan, instead of retraining on all four from scratch:
#   python tools/grow_checkpoint.py configs/demo/grow_damex_demo_base.py \
#       work_dirs/grow_damex_demo_base/iter_500.pth \
#       configs/demo/grow_damex_demo_add_scan.py \
#       work_dirs/grow_damex_demo_base/grown_add_scan.pth
#   python tools/train.py configs/demo/grow_damex_demo_add_scan.py
# scan's class gets unified label 10 after the old 10 classes, expert 3 is
# added to every MoE layer (a copy of the old expert scan's images route to
# most) with a gate row fitted so that scan's tokens reach it and the old
# datasets' keep their experts, the old experts and their gate rows stay
# frozen, the gate's new row learns at half the rate and everything else
# (the shared expert included) at the full rate, under a routing loss of
# weight 1.0 that counts every expert's tokens alike, and training replays
# the old datasets on three fifths of the images.
# benchmarks/README.md#growing-a-trained-model measures it against joint
# training and the recipes it replaced.
_base_ = './grow_damex_demo_base.py'

data_root = 'data/demo_mixture/'
dataset_names = ['photo', 'sketch', 'aerial', 'scan']
dataset_to_expert = dict(photo=0, sketch=1, aerial=2, scan=3)
# Two fifths of the images are scan's (8x its share of joint training), the
# rest replays the old datasets alike. With a quarter scan's AP fell short of
# joint training's, with a half the old datasets lost AP and routing.
replay_ratios = dict(photo=1, sketch=1, aerial=1, scan=2)
load_from = 'work_dirs/grow_damex_demo_base/grown_add_scan.pth'

model = dict(
    num_experts=4,
    dataset_to_expert=dataset_to_expert,
    # Ten times the base model's weight: the fitted gate rows start with
    # every dataset's tokens at its expert, and the routing loss keeps them
    # there while the features under the gate train (at 0.3 photo's tokens
    # drifted to scan's expert). Each expert's tokens weigh 1 / its
    # dataset's ratio (one dataset per expert here), so scan's larger share
    # does not outweigh what holds the old datasets' tokens.
    routing_loss=dict(
        loss_weight=1.0,
        expert_weight=[
            1 / replay_ratios[name]
            for name in sorted(dataset_to_expert, key=dataset_to_expert.get)
        ]),
    bbox_head=dict(num_classes=11))  # the old 10 + scan 1
train_dataloader = dict(
    sampler=dict(mode='ratios', ratios=replay_ratios),
    dataset=dict(datasets=[
        dict(name=name, data_root=f'{data_root}{name}/',
             ann_file='annotations/train.json', img_prefix='images/train/')
        for name in dataset_names
    ]))
val_dataloader = dict(dataset=dict(datasets=[
    dict(name=name, data_root=f'{data_root}{name}/',
         ann_file='annotations/val.json', img_prefix='images/val/')
    for name in dataset_names
]))
# Val chooses, test reports: `tools/test.py` scores the held-out test split.
test_dataloader = dict(dataset=dict(datasets=[
    dict(name=name, data_root=f'{data_root}{name}/',
         ann_file='annotations/test.json', img_prefix='images/test/')
    for name in dataset_names
]))

# 150 iterations, 30% of training all four datasets from scratch, at the
# learning rate the base model ended its schedule with x5, then x0.1.
max_iters = 150
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.8)], gamma=0.1)
]
# With the shared expert (grow_damex_demo_base.py), slowing the trunk only
# slowed the new dataset: the old datasets held at the full rate, and at
# twice 1e-4 scan came within 0.02 AP of joint training. The gate's rate is
# what moves the old datasets' tokens: at the full rate its new row learns
# to take some of photo's, at half of it the old routing holds. 'gate'
# matches only the MoE layers' gate.weight in DINO's parameter names.
optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(custom_keys=dict(gate=dict(lr_mult=0.5))))
default_hooks = dict(checkpoint=dict(interval=max_iters))
custom_hooks = [
    dict(type='MixtureCheckHook'),
    dict(type='FiniteLossHook'),
    dict(type='RNGStateHook'),
    dict(type='StrictLoadHook',
         hint='Write load_from with tools/grow_checkpoint.py.'),
    # The old datasets' experts and gate rows keep their weights bit for
    # bit: the old datasets' tokens keep their experts.
    dict(type='ExpertLrMultHook', experts=[0, 1, 2], lr_mult=0.0,
         gate_rows=True)
]
