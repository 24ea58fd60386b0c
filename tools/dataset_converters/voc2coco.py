r"""Convert PASCAL VOC XML annotations to COCO json.

For the UODB datasets that ship VOC XML: VOC07, VOC12, Clipart, Watercolor, Comic and
Kitchen. Example (VOC 2007 trainval):

    python tools/dataset_converters/voc2coco.py data/uodb/voc07/VOCdevkit/VOC2007 \
        --split trainval --out data/uodb/voc07/annotations/trainval.json
"""
import argparse
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('root', type=Path,
                        help='VOC-style folder with Annotations/, JPEGImages/, ImageSets/Main/')
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')
    parser.add_argument('--split', help='read ids from ImageSets/Main/<split>.txt; '
                        'all XMLs in the annotation folder when omitted')
    parser.add_argument('--ann-dir', type=Path,
                        help='annotation folder (default root/Annotations)')
    parser.add_argument('--img-dir', type=Path, help='image folder (default root/JPEGImages)')
    parser.add_argument('--classes', default='voc07',
                        help='the classes of a UODB dataset (clipart, comic, kitchen, voc07, '
                        'voc12, watercolor) or comma-separated names '
                        '(default: the 20 VOC classes)')
    parser.add_argument('--skip-unknown', action='store_true',
                        help='drop boxes of classes not in --classes instead of stopping')
    parser.add_argument('--zero-based', action='store_true',
                        help='coordinates are 0-based already (do not subtract 1 from xmin/ymin)')
    parser.add_argument('--fix-sizes', action='store_true',
                        help='when the image size written in an annotation differs from '
                        "the image file's, use the file's size and count it in the summary "
                        'instead of stopping')
    parser.add_argument('--file-name-root', type=Path,
                        help='write image paths relative to this folder above the image '
                        'folder (e.g. data/uodb/<name>/images); default: the image folder')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.datasets.converters import VOC_STYLE_CLASSES, voc_to_coco
    from damex_mmdet.datasets.converters.cli import run_conversion
    classes = VOC_STYLE_CLASSES.get(args.classes) or args.classes.split(',')
    run_conversion(lambda: voc_to_coco(
        ann_dir=args.ann_dir or args.root / 'Annotations',
        img_dir=args.img_dir or args.root / 'JPEGImages',
        file_name_root=args.file_name_root,
        image_set_file=args.root / 'ImageSets' / 'Main' / f'{args.split}.txt'
        if args.split else None,
        classes=classes,
        skip_unknown=args.skip_unknown,
        one_based=not args.zero_based,
        fix_sizes=args.fix_sizes,
        progress=True), args.out)


if __name__ == '__main__':
    main()
