r"""Convert DeepLesion's DL_info.csv to COCO json (one class: lesion).

The split comes from the Train_Val_Test column. Example (UODB trains on trainval):

    python tools/dataset_converters/deeplesion2coco.py data/uodb/deeplesion/DL_info.csv \
        data/uodb/deeplesion/Images_png --split trainval \
        --out data/uodb/deeplesion/annotations/trainval.json
"""
import argparse
from pathlib import Path

from damex_mmdet.datasets.converters import DEEPLESION_SPLITS, deeplesion_to_coco
from damex_mmdet.datasets.converters.cli import (add_file_name_root_argument, add_out_argument,
                                                 converter_parser, run_conversion)


def parse_args() -> argparse.Namespace:
    parser = converter_parser(__doc__)
    parser.add_argument('info_csv', type=Path, help='DL_info.csv')
    parser.add_argument('img_dir', type=Path, help='the Images_png folder')
    parser.add_argument('--split', choices=sorted(DEEPLESION_SPLITS), required=True)
    add_out_argument(parser)
    add_file_name_root_argument(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_conversion(lambda: deeplesion_to_coco(args.info_csv, args.img_dir, split=args.split,
                                              file_name_root=args.file_name_root,
                                              progress=True), args.out)


if __name__ == '__main__':
    main()
