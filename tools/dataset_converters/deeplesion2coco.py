r"""Convert DeepLesion's DL_info.csv to COCO json (one class: lesion).

The split comes from the Train_Val_Test column. Example (UODB trains on trainval):

    python tools/dataset_converters/deeplesion2coco.py data/uodb/deeplesion/DL_info.csv \
        data/uodb/deeplesion/Images_png --split trainval \
        --out data/uodb/deeplesion/annotations/trainval.json
"""
import argparse
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('info_csv', type=Path, help='DL_info.csv')
    parser.add_argument('img_dir', type=Path, help='the Images_png folder')
    parser.add_argument('--split', choices=('test', 'train', 'trainval', 'val'), required=True)
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')
    parser.add_argument('--file-name-root', type=Path,
                        help='write image paths relative to this folder above the image '
                        'folder (e.g. data/uodb/<name>/images); default: the image folder')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.datasets.converters import deeplesion_to_coco
    from damex_mmdet.datasets.converters.cli import run_conversion
    run_conversion(lambda: deeplesion_to_coco(args.info_csv, args.img_dir, split=args.split,
                                              file_name_root=args.file_name_root,
                                              progress=True), args.out)


if __name__ == '__main__':
    main()
