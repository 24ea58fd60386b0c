r"""Convert WIDER FACE ground truth (wider_face_<split>_bbx_gt.txt) to COCO json.

Faces flagged invalid become ignore regions (iscrowd=1). Example:

    python tools/dataset_converters/widerface2coco.py \
        data/uodb/widerface/wider_face_split/wider_face_train_bbx_gt.txt \
        data/uodb/widerface/WIDER_train/images --out data/uodb/widerface/annotations/train.json
"""
import argparse
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('gt_file', type=Path, help='wider_face_<split>_bbx_gt.txt')
    parser.add_argument('img_dir', type=Path, help='WIDER_<split>/images')
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')
    parser.add_argument('--file-name-root', type=Path,
                        help='write image paths relative to this folder above the image '
                        'folder (e.g. data/uodb/<name>/images); default: the image folder')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.datasets.converters import widerface_to_coco
    from damex_mmdet.datasets.converters.cli import run_conversion
    run_conversion(lambda: widerface_to_coco(args.gt_file, args.img_dir,
                                             file_name_root=args.file_name_root,
                                             progress=True), args.out)


if __name__ == '__main__':
    main()
