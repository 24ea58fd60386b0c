# A DAMEX small enough for tests and smoke runs on a CPU in seconds: the
# paper's demo model (damex_paper_demo.py) with a narrow ResNet-18, one
# encoder and two decoder layers (both MoE), 10 queries and 64 px images. Not
# for accuracy.
_base_ = '../demo/damex_paper_demo.py'

model = dict(
    num_queries=10,
    backbone=dict(base_channels=16),
    neck=dict(in_channels=[32, 64, 128]),
    encoder=dict(num_layers=1, layer_cfg=dict(ffn_cfg=dict(
        feedforward_channels=64))),
    decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(
        feedforward_channels=64))),
    moe_layers=dict(decoder=[0, 1]),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=10)),
    test_cfg=dict(max_per_img=10))

image_size = (64, 64)
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='Resize', scale=image_size, keep_ratio=True),
        dict(type='PackDetInputs')
    ]))
val_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(pipeline=[
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=image_size, keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True),
        dict(type='PackDetInputs',
             meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                        'scale_factor'))
    ]))
test_dataloader = val_dataloader

max_iters = 2
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = []
default_hooks = dict(
    logger=dict(interval=1),
    checkpoint=dict(interval=max_iters))
