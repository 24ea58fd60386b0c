# Dense DINO on the demo mixture, sized for a 2-core CPU: ResNet-18 from
# scratch, 128 px, 2 encoder and 3 decoder layers with 512-wide FFNs, 30
# queries (mmdet's DINO decoder hard-codes 256-d embeddings). The MoE twins
# (damex_demo.py, moe_demo.py) change only the model.
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    '../_base_/datasets/demo_mixture.py'
]
custom_imports = dict(imports=['damex_mmdet'], allow_failed_imports=False)
# No randomness.seed: every run draws its own; --resume takes the seed of the
# checkpoint it resumes, so a resumed run continues exactly.
runner_type = 'ExactResumeRunner'

embed_dims = 256
num_classes = 11  # photo 3 + sketch 4 + aerial 3 + scan 1, disjoint blocks
model = dict(
    num_queries=30,
    num_feature_levels=4,
    backbone=dict(
        depth=18,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[128, 256, 512]),
    encoder=dict(
        num_layers=2,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims),
            ffn_cfg=dict(embed_dims=embed_dims,
                         feedforward_channels=2 * embed_dims))),
    decoder=dict(
        num_layers=3,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims),
            cross_attn_cfg=dict(embed_dims=embed_dims),
            ffn_cfg=dict(embed_dims=embed_dims,
                         feedforward_channels=2 * embed_dims))),
    bbox_head=dict(type='DatasetAwareDINOHead', num_classes=num_classes),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=30)),
    test_cfg=dict(max_per_img=30))

image_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(_delete_=True, type='MixtureSampler', mode='proportional'),
    batch_sampler=None,
    dataset=dict(
        _delete_=True,
        type='DatasetMixture',
        datasets={{_base_.demo_train_datasets}},
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        _delete_=True,
        type='DatasetMixture',
        datasets={{_base_.demo_val_datasets}},
        pipeline=test_pipeline,
        test_mode=True))
# Val chooses, test reports: `tools/test.py` scores the held-out test split.
test_dataloader = dict(
    val_dataloader,
    dataset=dict(val_dataloader['dataset'],
                 datasets={{_base_.demo_test_datasets}}))
val_evaluator = dict(_delete_=True, type='MixtureCocoMetric')
test_evaluator = val_evaluator

max_iters = 500
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
    val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
         milestones=[int(max_iters * 0.8)], gamma=0.1)
]
# From scratch: the backbone learns at the full rate.
optim_wrapper = dict(
    optimizer=dict(lr=4e-4),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0)}))
default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1,
                    save_best='mixture/mean/AP50', rule='greater',
                    backend_args=dict(backend='atomic_local')))
custom_hooks = [
    dict(type='MixtureCheckHook'),
    dict(type='FiniteLossHook'),
    dict(type='RNGStateHook')
]
log_processor = dict(by_epoch=False)
# device_ids=None lets DDP wrap CPU models too (mmengine passes the local
# rank, which only CUDA models accept); for `--launcher pytorch` on CPU.
model_wrapper_cfg = dict(
    type='MMDistributedDataParallel', device_ids=None,
    broadcast_buffers=False)
auto_scale_lr = dict(enable=False)
