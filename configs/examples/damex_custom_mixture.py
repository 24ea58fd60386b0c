# DAMEX on a mixture of your own COCO-format datasets: list them with a name,
# an annotation file, an image folder and (optionally) their classes.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['damex_mmdet'], allow_failed_imports=False)
# --resume takes the seed of the checkpoint it resumes, so it continues exactly.
runner_type = 'ExactResumeRunner'

train_sets = [
    dict(name='pets', ann_file='data/pets/annotations/train.json',
         img_prefix='data/pets/images/', classes=('cat', 'dog')),
    # Without `classes`, every category of the file, in the file's order.
    dict(name='cars', ann_file='data/cars/annotations/train.json',
         img_prefix='data/cars/images/'),
]
val_sets = [
    dict(name='pets', ann_file='data/pets/annotations/val.json',
         img_prefix='data/pets/images/', classes=('cat', 'dog')),
    dict(name='cars', ann_file='data/cars/annotations/val.json',
         img_prefix='data/cars/images/'),
]

model = dict(
    type='DAMEX',
    num_experts=2,
    moe_layers=dict(encoder=[], decoder=[0, 2, 4]),
    routing_loss=dict(type='DAMEXLoss', loss_weight=0.1),
    # One key per training dataset, each expert used (or listed in
    # spare_experts); training stops before its first step otherwise.
    dataset_to_expert=dict(pets=0, cars=1),
    # The recommended DAMEX: a dense FFN that every token uses beside its
    # dataset's expert (at demo scale it ties dense DINO, and a dense DINO as
    # wide beats it: benchmarks/README.md#does-damex-win); it also keeps the
    # old datasets when the model grows (grow_custom_mixture.py).
    moe_cfg=dict(shared_expert=True),
    # Disjoint label blocks: pets (2) + cars (3 categories in its file).
    # MixtureCheckHook stops with the right number if this is wrong.
    bbox_head=dict(type='DatasetAwareDINOHead', num_classes=5))

train_dataloader = dict(
    sampler=dict(_delete_=True, type='MixtureSampler', mode='temperature',
                 temperature=2.0),
    dataset=dict(
        _delete_=True,
        type='DatasetMixture',
        datasets=train_sets,
        pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='DatasetMixture',
        datasets=val_sets,
        pipeline={{_base_.test_pipeline}},
        test_mode=True))
test_dataloader = val_dataloader
# RoutingMetric scores against the model's map.
val_evaluator = [dict(type='MixtureCocoMetric'), dict(type='RoutingMetric')]
test_evaluator = val_evaluator
default_hooks = dict(
    checkpoint=dict(save_best='mixture/mean/AP', rule='greater',
                    backend_args=dict(backend='atomic_local')))
custom_hooks = [
    dict(type='MixtureCheckHook'),
    dict(type='FiniteLossHook'),
    dict(type='RNGStateHook')
]
