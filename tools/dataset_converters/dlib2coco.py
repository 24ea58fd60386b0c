r"""Convert a dlib imglab XML (<image file><box top left width height/>) to COCO json.

Boxes with ignore='1' become ignore regions (iscrowd=1). Example:

    python tools/dataset_converters/dlib2coco.py ../shared/realdata/faces/training.xml \
        --out data/faces/annotations/train.json
"""
import argparse
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('xml_file', type=Path, help='imglab dataset XML')
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')
    parser.add_argument('--img-dir', type=Path,
                        help='folder the file attributes are relative to '
                        '(default: the XML folder)')
    parser.add_argument('--classes',
                        help='comma-separated class names; boxes without <label> take the '
                        'only class (default: face)')
    parser.add_argument('--skip-unknown', action='store_true',
                        help='drop boxes whose label is not in --classes instead of stopping')
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
    from damex_mmdet.datasets.converters import DLIB_FACE_CLASSES, dlib_to_coco
    from damex_mmdet.datasets.converters.cli import run_conversion
    classes = args.classes.split(',') if args.classes else DLIB_FACE_CLASSES
    run_conversion(lambda: dlib_to_coco(args.xml_file, img_dir=args.img_dir,
                                        file_name_root=args.file_name_root,
                                        classes=classes,
                                        skip_unknown=args.skip_unknown,
                                        fix_sizes=args.fix_sizes, progress=True),
                   args.out)


if __name__ == '__main__':
    main()
