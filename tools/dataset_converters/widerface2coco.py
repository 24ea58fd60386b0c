r"""Convert WIDER FACE ground truth (wider_face_<split>_bbx_gt.txt) to COCO json.

Faces flagged invalid become ignore regions (iscrowd=1). Example:

    python tools/dataset_converters/widerface2coco.py \
        data/uodb/widerface/wider_face_split/wider_face_train_bbx_gt.txt \
        data/uodb/widerface/WIDER_train/images --out data/uodb/widerface/annotations/train.json
"""
import argparse
from pathlib import Path

from damex_mmdet.datasets.converters import widerface_to_coco
from damex_mmdet.datasets.converters.cli import (add_file_name_root_argument, add_out_argument,
                                                 converter_parser, run_conversion)


def parse_args() -> argparse.Namespace:
    parser = converter_parser(__doc__)
    parser.add_argument('gt_file', type=Path, help='wider_face_<split>_bbx_gt.txt')
    parser.add_argument('img_dir', type=Path, help='WIDER_<split>/images')
    add_out_argument(parser)
    add_file_name_root_argument(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_conversion(lambda: widerface_to_coco(args.gt_file, args.img_dir,
                                             file_name_root=args.file_name_root,
                                             progress=True), args.out)


if __name__ == '__main__':
    main()
