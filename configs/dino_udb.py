# Dense DINO (ResNet-50, 4 scales, 900 queries) on the 11 UODB datasets: the
# baseline of DAMEX. damex_udb.py, damex_paper_udb.py and moe_udb.py change
# only the model.
_base_ = [
    'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
    './_base_/datasets/uodb.py'
]
custom_imports = dict(imports=['damex_mmdet'], allow_failed_imports=False)
# --resume takes the seed of the checkpoint it resumes (see dino_demo.py).
runner_type = 'ExactResumeRunner'

model = dict(
    bbox_head=dict(type='DatasetAwareDINOHead', num_classes=167),
    test_cfg=dict(class_protocol='unified'))

train_dataloader = dict(
    batch_size=1,  # x 8 GPUs, the reference's run (see the schedule below)
    sampler=dict(_delete_=True, type='MixtureSampler', mode='proportional'),
    dataset=dict(
        _delete_=True,
        type='DatasetMixture',
        datasets={{_base_.uodb_train_datasets}},
        label_space={{_base_.uodb_train_label_space}},
        pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(
    dataset=dict(
        _delete_=True,
        type='DatasetMixture',
        datasets={{_base_.uodb_test_datasets}},
        pipeline={{_base_.test_pipeline}},
        test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='MixtureCocoMetric')
test_evaluator = val_evaluator

# The reference's run: 8 GPUs x 1 image, lr 1.4e-4, 36 epochs, and
# StepLR(step_size=11), which divides the lr by 10 after epochs 11, 22 and 33.
optim_wrapper = dict(optimizer=dict(lr=1.4e-4))
auto_scale_lr = dict(base_batch_size=8)
max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones=[11, 22, 33], gamma=0.1)
]
default_hooks = dict(
    checkpoint=dict(save_best='mixture/mean/AP', rule='greater',
                    backend_args=dict(backend='atomic_local')))
custom_hooks = [
    dict(type='MixtureCheckHook'),
    dict(type='FiniteLossHook'),
    dict(type='RNGStateHook')
]
