# Grow the model of damex_custom_mixture_demo_size.py with a third dataset,
# birds: grow_custom_mixture.py for a base that trains by iterations
# (IterBasedTrainLoop: max_iters, schedulers with by_epoch=False), where
# grow_custom_mixture.py's epoch schedule (max_epochs) would stop mmengine
# with "unexpected keyword 'max_epochs'". Train the old config, then
#   python tools/grow_checkpoint.py \
#       configs/examples/damex_custom_mixture_demo_size.py \
#       work_dirs/damex_custom_mixture_demo_size/iter_500.pth \
#       configs/examples/grow_custom_mixture_demo_size.py \
#       work_dirs/grown_demo_size/init.pth
#   python tools/train.py configs/examples/grow_custom_mixture_demo_size.py
# grow_checkpoint.py prints the num_classes, num_experts, dataset_to_expert
# and load_from lines this config needs. What grows and why:
# grow_custom_mixture.py and configs/demo/grow_damex_demo_add_scan.py.
_base_ = './damex_custom_mixture_demo_size.py'

train_sets = [
    dict(name='pets', ann_file='data/pets/annotations/train.json',
         img_prefix='data/pets/images/', classes=('cat', 'dog')),
    dict(name='cars', ann_file='data/cars/annotations/train.json',
         img_prefix='data/cars/images/'),
    # New datasets go after the old ones.
    dict(name='birds', ann_file='data/birds/annotations/train.json',
         img_prefix='data/birds/images/'),
]
val_sets = [
    dict(name='pets', ann_file='data/pets/annotations/val.json',
         img_prefix='data/pets/images/', classes=('cat', 'dog')),
    dict(name='cars', ann_file='data/cars/annotations/val.json',
         img_prefix='data/cars/images/'),
    dict(name='birds', ann_file='data/birds/annotations/val.json',
         img_prefix='data/birds/images/'),
]
# Two fifths of the images are the new dataset's, the rest replays the old.
replay_ratios = dict(pets=1, cars=1, birds=4 / 3)
load_from = 'work_dirs/grown_demo_size/init.pth'

model = dict(
    num_experts=3,
    dataset_to_expert=dict(_delete_=True, pets=0, cars=1, birds=2),
    # Each expert's tokens weigh 1 / its dataset's ratio (one dataset per
    # expert, in expert order), so the new data's larger share does not
    # outweigh what holds the old datasets' tokens at their experts.
    routing_loss=dict(
        loss_weight=1.0,
        expert_weight=[1 / replay_ratios[name]
                       for name in ('pets', 'cars', 'birds')]),
    # pets 2 + cars 3 + birds' categories (4 in its file, say).
    bbox_head=dict(num_classes=9))
train_dataloader = dict(
    sampler=dict(_delete_=True, type='MixtureSampler', mode='ratios',
                 ratios=replay_ratios),
    dataset=dict(datasets=train_sets))
val_dataloader = dict(dataset=dict(datasets=val_sets))
test_dataloader = val_dataloader

# A fine-tuning schedule by iterations: 150, 30% of the base's, the rate x0.1
# after 80% of them.
max_iters = 150
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.8)], gamma=0.1)
]
# The gates' new rows at half the rate: at the full rate they learn to take
# some of the old datasets' tokens. 'gate' matches only the MoE layers'
# gate.weight in DINO's parameter names.
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
    # lr_mult=0 freezes the old experts and their gate rows bit for bit.
    dict(type='ExpertLrMultHook', experts=[0, 1], lr_mult=0.0,
         gate_rows=True)
]
