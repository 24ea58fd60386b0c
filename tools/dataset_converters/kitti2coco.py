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


def type_mapping(text: str) -> tuple:
    kitti_type, separator, class_name = text.partition('=')
    if not separator or not kitti_type or not class_name:
        raise argparse.ArgumentTypeError(f"expected TYPE=CLASS such as Van=Car, got '{text}'")
    return kitti_type, class_name


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', type=Path, help='KITTI training folder with label_2/ and image_2/')
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')
    parser.add_argument('--image-list', type=Path,
                        help='frame ids of the split, one per line (default: every label file)')
    parser.add_argument('--classes',
                        help='comma-separated classes to keep (default: Car,Pedestrian,Cyclist)')
    parser.add_argument('--map', type=type_mapping, action='append', default=[],
                        metavar='TYPE=CLASS',
                        help='fold a KITTI type into a kept class, e.g. --map Van=Car; repeatable')
    parser.add_argument('--file-name-root', type=Path,
                        help='write image paths relative to this folder above the image '
                        'folder (e.g. data/uodb/<name>/images); default: the image folder')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.datasets.converters import KITTI_CLASSES, kitti_to_coco
    from damex_mmdet.datasets.converters.cli import run_conversion
    run_conversion(lambda: kitti_to_coco(
        label_dir=args.root / 'label_2',
        img_dir=args.root / 'image_2',
        file_name_root=args.file_name_root,
        image_list=args.image_list,
        classes=args.classes.split(',') if args.classes else KITTI_CLASSES,
        class_map=dict(args.map),
        progress=True), args.out)


if __name__ == '__main__':
    main()
