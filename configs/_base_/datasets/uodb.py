# The Universal Object Detection Benchmark (UODB): 11 datasets, VOC as two
# training entries (VOC07 trainval, VOC12 train) sharing one label block.
# Each dataset lives in data/uodb/<name>/ as COCO json written by
# tools/dataset_converters/ (see docs/uodb_data.md):
#   data/uodb/<name>/annotations/<split>.json, images under images/.
# Class lists come from the files' categories (the converters write the
# lists of damex_mmdet.datasets.uodb_classes, 167 unified classes).
uodb_data_root = 'data/uodb/'
uodb_splits = [
    # (name, train split, test split); voc12 trains only, VOC is tested on
    # voc07 test as in the reference.
    ('kitti', 'trainval', 'test'),
    ('widerface', 'train', 'val'),
    ('voc07', 'trainval', 'test'),
    ('voc12', 'train', None),
    ('lisa', 'train', 'test'),
    ('dota', 'train', 'val'),
    ('coco', 'train', 'minival'),
    ('watercolor', 'train', 'test'),
    ('clipart', 'train', 'test'),
    ('comic', 'train', 'test'),
    ('kitchen', 'train', 'test'),
    ('deeplesion', 'trainval', 'test'),
]
uodb_train_datasets = [
    dict(name=name, data_root=f'{uodb_data_root}{name}/',
         ann_file=f'annotations/{train}.json', img_prefix='images/')
    for name, train, _ in uodb_splits
]
uodb_test_datasets = [
    dict(name=name, data_root=f'{uodb_data_root}{name}/',
         ann_file=f'annotations/{test}.json', img_prefix='images/')
    for name, _, test in uodb_splits if test is not None
]
uodb_train_label_space = dict(shared_blocks=[['voc07', 'voc12']])
