r"""Convert a dlib imglab XML (<image file><box top left width height/>) to COCO json.

Boxes with ignore='1' become ignore regions (iscrowd=1). Example:

    python tools/dataset_converters/dlib2coco.py ../shared/realdata/faces/training.xml \
        --out data/faces/annotations/train.json
"""
import argparse
from pathlib import Path

from damex_mmdet.datasets.converters import DLIB_FACE_CLASSES, dlib_to_coco
from damex_mmdet.datasets.converters.cli import (add_file_name_root_argument,
                                                 add_fix_sizes_argument, add_out_argument,
                                                 converter_parser, run_conversion)


def parse_args() -> argparse.Namespace:
    parser = converter_parser(__doc__)
    parser.add_argument('xml_file', type=Path, help='imglab dataset XML')
    add_out_argument(parser)
    parser.add_argument('--img-dir', type=Path,
                        help='folder the file attributes are relative to '
                        '(default: the XML folder)')
    parser.add_argument('--classes', default=','.join(DLIB_FACE_CLASSES),
                        help='comma-separated class names; boxes without <label> take the '
                        'only class (default: %(default)s)')
    parser.add_argument('--skip-unknown', action='store_true',
                        help='drop boxes whose label is not in --classes instead of stopping')
    add_fix_sizes_argument(parser)
    add_file_name_root_argument(parser)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    run_conversion(lambda: dlib_to_coco(args.xml_file, img_dir=args.img_dir,
                                        file_name_root=args.file_name_root,
                                        classes=args.classes.split(','),
                                        skip_unknown=args.skip_unknown,
                                        fix_sizes=args.fix_sizes, progress=True),
                   args.out)


if __name__ == '__main__':
    main()
