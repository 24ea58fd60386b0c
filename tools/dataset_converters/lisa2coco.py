r"""Convert the LISA Traffic Sign annotation csv to COCO json with UODB's 4 classes.

The fine LISA tags are mapped to speedLimit, warning, noTurn and stop (see
damex_mmdet/datasets/converters/lisa.py); --map overrides single tags. LISA has no
official split: pass --image-list to convert one. Example:

    python tools/dataset_converters/lisa2coco.py data/uodb/lisa/allAnnotations.csv \
        --image-list data/uodb/lisa/train.txt --out data/uodb/lisa/annotations/train.json
"""
import argparse
from pathlib import Path


def tag_mapping(text: str) -> tuple:
    tag, separator, class_name = text.partition('=')
    if not separator or not tag:
        raise argparse.ArgumentTypeError(f"expected TAG=CLASS or TAG= , got '{text}'")
    return tag, class_name or None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('csv_file', type=Path, help="allAnnotations.csv (';'-separated)")
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')
    parser.add_argument('--img-dir', type=Path,
                        help="folder the csv's file names are relative to (default: its folder)")
    parser.add_argument('--image-list', type=Path,
                        help='image file names of the split as written in the csv, one per line')
    parser.add_argument('--map', type=tag_mapping, action='append', default=[],
                        metavar='TAG=CLASS',
                        help='map a LISA tag to one of the classes speedLimit, warning, '
                        'noTurn, stop, or drop it with TAG= ; repeatable')
    parser.add_argument('--file-name-root', type=Path,
                        help='write image paths relative to this folder above the image '
                        'folder (e.g. data/uodb/<name>/images); default: the image folder')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.datasets.converters import lisa_to_coco
    from damex_mmdet.datasets.converters.cli import run_conversion
    run_conversion(lambda: lisa_to_coco(args.csv_file, img_dir=args.img_dir,
                                        file_name_root=args.file_name_root,
                                        image_list=args.image_list, tag_map=dict(args.map),
                                        progress=True), args.out)


if __name__ == '__main__':
    main()
