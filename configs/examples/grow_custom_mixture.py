# Grow the model of damex_custom_mixture.py with a third dataset, birds,
# instead of retraining on all three from scratch. Train the old config, then
#   python tools/grow_checkpoint.py configs/examples/damex_custom_mixture.py \
#       work_dirs/damex_custom_mixture/epoch_12.pth \
#       configs/examples/grow_custom_mixture.py work_dirs/grown/init.pth
#   python tools/train.py configs/examples/grow_custom_mixture.py
# The new dataset's classes follow the old ones (old labels keep their
# indices), expert 2 is added to every MoE layer as a copy of the old expert
# that birds' val images route to most, with a gate row fitted to the old and
# new val images' tokens, the old experts stay frozen and the old datasets
# are replayed. grow_checkpoint.py stops with a message if this
# config cannot grow the old model (a dataset name already in use, old
# classes that would move, an expert out of range, ...).
_base_ = './damex_custom_mixture.py'

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
dataset_to_expert = dict(pets=0, cars=1, birds=2)
# Half of each epoch is new data, the rest replays the old datasets.
replay_ratios = dict(pets=1, cars=1, birds=2)
load_from = 'work_dirs/grown/init.pth'

model = dict(
    num_experts=3,
    dataset_to_expert=dataset_to_expert,
    # A stronger routing loss keeps every dataset's tokens at the experts
    # that grow_checkpoint.py's fitted gate rows start them at, while the
    # features under the gate train; weighting each expert's tokens by
    # 1 / its dataset's ratio (one dataset per expert) keeps the new data's
    # larger share from outweighing the old datasets' (the demo's measured
    # recipe, benchmarks/README.md#growing-a-trained-model).
    routing_loss=dict(
        loss_weight=1.0,
        expert_weight=[
            1 / replay_ratios[name]
            for name in sorted(dataset_to_expert, key=dataset_to_expert.get)
        ]),
    # pets 2 + cars 3 + birds' categories (4 in its file, say).
    bbox_head=dict(num_classes=9))
train_dataloader = dict(
    sampler=dict(_delete_=True, type='MixtureSampler', mode='ratios',
                 ratios=replay_ratios),
    dataset=dict(datasets=train_sets))
val_dataloader = dict(dataset=dict(datasets=val_sets))
test_dataloader = val_dataloader
# A fine-tuning schedule: a fraction of the original one at a lower rate, in
# epochs like damex_custom_mixture.py's. For a base trained by iterations
# (IterBasedTrainLoop) use grow_custom_mixture_demo_size.py's max_iters and
# by_epoch=False schedulers: max_epochs would stop mmengine there.
train_cfg = dict(max_epochs=4)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=4, by_epoch=True, milestones=[3],
         gamma=0.1)
]
# The gates' new rows at half the rate: at the full rate they learn to take
# some of the old datasets' tokens. 'gate' matches only the MoE layers'
# gate.weight in DINO's parameter names.
optim_wrapper = dict(
    optimizer=dict(lr=2e-5),
    paramwise_cfg=dict(custom_keys=dict(gate=dict(lr_mult=0.5))))
custom_hooks = [
    dict(type='MixtureCheckHook'),
    dict(type='FiniteLossHook'),
    dict(type='RNGStateHook'),
    dict(type='StrictLoadHook',
         hint='Write load_from with tools/grow_checkpoint.py.'),
    # lr_mult=0 freezes the old experts and their gate rows bit for bit;
    # 0 < lr_mult < 1 trains them at that fraction of the learning rate.
    dict(type='ExpertLrMultHook', experts=[0, 1], lr_mult=0.0,
         gate_rows=True)
]
