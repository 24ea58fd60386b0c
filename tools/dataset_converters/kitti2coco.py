r"""Convert KITTI object-detection labels (label_2 txt) to COCO json.

UODB keeps Car, Pedestrian and Cyclist; other types are dropped unless --map folds them
into a kept class. KITTI's test split has no labels, so splits come from image lists
over the training folder. Example:

    python tools/dataset_converters/kitti2coco.py data/uodb/kitti/training \
        --image-list data/uodb/kitti/trainval.txt \
        --out data/uodb/kitti/annotations/trainval.json
"""
import argparse
from pathlib import Path

from damex_mmdet.datasets.converters import KITTI_CLASSES, kitti_to_coco
from damex_mmdet.datasets.converters.cli import (add_file_name_root_argument, add_out_argument,
                                                 converter_parser, run_conversion)


def type_mapping(text: str) -> tuple:
    kitti_type, separator, class_name = text.partition('=')
    if not separator or not kitti_type or not class_name:
        raise argparse.ArgumentTypeError(f"expected TYPE=CLASS such as Van=Car, got '{text}'")
    return kitti_type, class_name


def parse_args() -> argparse.Namespace:
    parser = converter_parser(__doc__)
    parser.add_argument('root', type=Path, help='KITTI training folder with label_2/ and image_2/')
    add_out_argument(parser)
    parser.add_argument('--image-list', type=Path,
                        help='frame ids of the split, one per line (default: every label file)')
    parser.add_argument('--classes', default=','.join(KITTI_CLASSES),
                        help='comma-separated classes to keep (default: %(default)s)')
    parser.add_argument('--map', type=type_mapping, action='append', default=[],
                        metavar='TYPE=CLASS',
                        help='fold a KITTI type into a kept class, e.g. --map Van=Car; repeatable')
    add_file_name_root_argument(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_conversion(lambda: kitti_to_coco(
        label_dir=args.root / 'label_2',
        img_dir=args.root / 'image_2',
        file_name_root=args.file_name_root,
        image_list=args.image_list,
        classes=args.classes.split(','),
        class_map=dict(args.map),
        progress=True), args.out)


if __name__ == '__main__':
    main()
