# damex_custom_mixture.py at the demo's size: the recommended demo DAMEX
# (configs/demo/damex_demo.py: ResNet-18 from scratch, 128 px images, 30
# queries, a shared expert) on your own COCO-format datasets, trained by
# iterations. For a laptop, or to check a mixture's files and config in
# minutes before training the full-size model; not for accuracy.
# docs/own_data.md goes from annotation files to this config.
_base_ = '../demo/damex_demo.py'

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
    num_experts=2,
    # _delete_: mmengine would merge this map into the demo's (photo, sketch,
    # aerial, scan) instead of replacing it.
    dataset_to_expert=dict(_delete_=True, pets=0, cars=1),
    # Disjoint label blocks: pets (2) + cars (3 categories in its file).
    # MixtureCheckHook stops with the right number if this is wrong.
    bbox_head=dict(num_classes=5))
train_dataloader = dict(
    sampler=dict(mode='temperature', temperature=2.0),
    dataset=dict(datasets=train_sets))
val_dataloader = dict(dataset=dict(datasets=val_sets))
test_dataloader = val_dataloader

# The demo's schedule: 500 iterations of 8 images (IterBasedTrainLoop), the
# learning rate x0.1 after 80% of them. A longer run sets max_iters,
# val_interval, the MultiStepLR milestone and the checkpoint interval, e.g.
# with --cfg-options; a config inheriting this one grows the model with
# grow_custom_mixture_demo_size.py's iteration-based schedule.
