# The embedded demo mixture written by `tools/generate_demo_mixture.py`
# (damex_mmdet.demo): four small COCO-format datasets with disparate
# domains, divergent label sets and one limited-data set ("scan"). Three
# splits: train, val to choose (configurations, checkpoints), test to report.
demo_data_root = 'data/demo_mixture/'
demo_dataset_names = ['photo', 'sketch', 'aerial', 'scan']
demo_train_datasets = [
    dict(name=name, data_root=f'{demo_data_root}{name}/',
         ann_file='annotations/train.json', img_prefix='images/train/')
    for name in demo_dataset_names
]
demo_val_datasets = [
    dict(name=name, data_root=f'{demo_data_root}{name}/',
         ann_file='annotations/val.json', img_prefix='images/val/')
    for name in demo_dataset_names
]
demo_test_datasets = [
    dict(name=name, data_root=f'{demo_data_root}{name}/',
         ann_file='annotations/test.json', img_prefix='images/test/')
    for name in demo_dataset_names
]
