# The recommended demo DAMEX (damex_demo.py: the paper's plus a shared
# expert; benchmarks/README.md#growing-a-trained-model) trained on three of
# the four demo datasets (photo, sketch, aerial), one expert each: the model
# that grow_damex_demo_add_scan.py grows with the fourth dataset, scan. Train
# it like any config:
#   python tools/train.py configs/demo/grow_damex_demo_base.py
_base_ = './damex_demo.py'

data_root = 'data/demo_mixture/'
dataset_names = ['photo', 'sketch', 'aerial']

model = dict(
    num_experts=3,
    dataset_to_expert=dict(_delete_=True, photo=0, sketch=1, aerial=2),
    bbox_head=dict(num_classes=10))  # photo 3 + sketch 4 + aerial 3
train_dataloader = dict(dataset=dict(datasets=[
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
