r"""Convert DOTA labelTxt polygons to COCO json with horizontal boxes.

Works on whole images and on split patches (e.g. from mmrotate's img_split). Objects of
difficulty 1 become ignore regions (iscrowd=1) unless --keep-difficult. Example:

    python tools/dataset_converters/dota2coco.py data/uodb/dota/train \
        --out data/uodb/dota/annotations/train.json
"""
import argparse
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', type=Path, help='DOTA split folder with labelTxt/ and images/')
    parser.add_argument('--label-dir', type=Path,
                        help='label folder (default root/labelTxt; mmrotate\'s img_split '
                        'writes root/annfiles)')
    parser.add_argument('--img-dir', type=Path, help='image folder (default root/images)')
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')
    parser.add_argument('--classes',
                        help='comma-separated class names (default: the 15 DOTA v1.0 classes)')
    parser.add_argument('--keep-difficult', action='store_true',
                        help='keep difficult objects as ordinary boxes instead of ignore regions')
    parser.add_argument('--skip-unknown', action='store_true',
                        help='drop objects of classes not in --classes instead of stopping')
    parser.add_argument('--file-name-root', type=Path,
                        help='write image paths relative to this folder above the image '
                        'folder (e.g. data/uodb/<name>/images); default: the image folder')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.datasets.converters import DOTA_CLASSES, dota_to_coco
    from damex_mmdet.datasets.converters.cli import run_conversion
    classes = args.classes.split(',') if args.classes else DOTA_CLASSES
    run_conversion(lambda: dota_to_coco(args.label_dir or args.root / 'labelTxt',
                                        args.img_dir or args.root / 'images',
                                        file_name_root=args.file_name_root,
                                        classes=classes,
                                        difficult_as_ignore=not args.keep_difficult,
                                        skip_unknown=args.skip_unknown, progress=True),
                   args.out)


if __name__ == '__main__':
    main()
