"""Class lists of the Universal Object Detection Benchmark (UODB).

``UODB_CLASSES`` maps each UODB training set to its local class list (local
label ``i`` = index ``i``), in the benchmark's usual dataset order. With VOC07
and VOC12 sharing one block, the disjoint union has 167 classes::

    space = UnifiedLabelSpace(UODB_CLASSES,
                              shared_blocks=[['voc07', 'voc12']])
    assert space.num_classes == 167

Sources, as far as they could be checked:

* VOC07 / VOC12 / Clipart and COCO: identical to mmdet's ``VOCDataset`` and
  ``CocoDataset`` ``METAINFO['classes']`` (the 80 COCO categories, not the 91
  id slots); ``tests/test_datasets/test_label_space.py`` checks this.
* KITTI, LISA: the UODB code (frank-xwang/towards-universal-object-detection,
  ``lib/datasets/kitti_voc.py`` and ``LISA_voc.py``) lowercases the names
  and orders them ``pedestrian, cyclist, car`` and ``warning, noturn,
  speedlimit, stop``. Here KITTI keeps the official KITTI label spelling and
  order, and LISA the camel case of LISA's own tags (``speedLimit25``,
  ``noLeftTurn``, ``stop``), because the UODB-converted annotations are no
  longer distributed and the converters are to write these names. How UODB
  grouped LISA's ~47 sign tags into its four classes is not documented in
  its code; the converter must state the grouping it uses.
* DOTA v1.0: the 15 official categories, in the order of the DOTA devkit
  and of UODB's ``dota_voc.py``.
* Watercolor / Comic: the six classes of the cross-domain detection sets
  (Inoue et al., CVPR 2018), in alphabetical order.
* Kitchen: the 11 Active Vision Dataset instances used by UODB, copied in
  order from UODB's ``lib/datasets/kitchen_voc.py``.
* WiderFace and DeepLesion: a single class each.
"""

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus',
               'car', 'cat', 'chair', 'cow', 'diningtable', 'dog', 'horse',
               'motorbike', 'person', 'pottedplant', 'sheep', 'sofa',
               'train', 'tvmonitor')

COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train',
    'truck', 'boat', 'traffic light', 'fire hydrant', 'stop sign',
    'parking meter', 'bench', 'bird', 'cat', 'dog', 'horse', 'sheep', 'cow',
    'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard',
    'sports ball', 'kite', 'baseball bat', 'baseball glove', 'skateboard',
    'surfboard', 'tennis racket', 'bottle', 'wine glass', 'cup', 'fork',
    'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
    'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair',
    'couch', 'potted plant', 'bed', 'dining table', 'toilet', 'tv', 'laptop',
    'mouse', 'remote', 'keyboard', 'cell phone', 'microwave', 'oven',
    'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush')

CROSS_DOMAIN_CLASSES = ('bicycle', 'bird', 'car', 'cat', 'dog', 'person')

UODB_CLASSES = {
    'kitti': ('Car', 'Pedestrian', 'Cyclist'),
    'widerface': ('face', ),
    'voc07': VOC_CLASSES,
    'voc12': VOC_CLASSES,
    'lisa': ('speedLimit', 'warning', 'noTurn', 'stop'),
    'dota': ('plane', 'baseball-diamond', 'bridge', 'ground-track-field',
             'small-vehicle', 'large-vehicle', 'ship', 'tennis-court',
             'basketball-court', 'storage-tank', 'soccer-ball-field',
             'roundabout', 'harbor', 'swimming-pool', 'helicopter'),
    'coco': COCO_CLASSES,
    'watercolor': CROSS_DOMAIN_CLASSES,
    'clipart': VOC_CLASSES,
    'comic': CROSS_DOMAIN_CLASSES,
    'kitchen': ('coca_cola_glass_bottle', 'coffee_mate_french_vanilla',
                'honey_bunches_of_oats_honey_roasted', 'hunts_sauce',
                'mahatma_rice',
                'nature_valley_soft_baked_oatmeal_squares_cinnamon_'
                'brown_sugar', 'nature_valley_sweet_and_salty_nut_almond',
                'palmolive_orange', 'pop_secret_light_butter',
                'pringles_bbq', 'red_bull'),
    'deeplesion': ('lesion', ),
}

# VOC07 and VOC12 annotate the same 20 classes: one block, not two.
UODB_SHARED_BLOCKS = (('voc07', 'voc12'), )
