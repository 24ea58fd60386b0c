r"""Convert a dlib imglab XML (<image file><box top left width height/>) to COCO json.

Boxes with ignore='1' become ignore regions (iscrowd=1). Example:

    python tools/dataset_converters/dlib2coco.py ../shared/realdata/faces/training.xml \
        --out data/faces/annotations/train.json
"""
import argparse
from pathlib import Path

from damex_mmdet.datasets.converters import (DLIB_FACE_CLASSES, ConversionError, dlib_to_coco,
                                             write_coco_json)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('xml_file', type=Path, help='imglab dataset XML')
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')
    parser.add_argument('--img-dir', type=Path,
                        help='folder the file attributes are relative to '
                        '(default: the XML folder)')
    parser.add_argument('--classes', default=','.join(DLIB_FACE_CLASSES),
                        help='comma-separated class names; boxes without <label> take the '
                        'only class (default: %(default)s)')
    parser.add_argument('--skip-unknown', action='store_true',
                        help='drop boxes whose label is not in --classes instead of stopping')
    parser.add_argument('--file-name-root', type=Path,
                        help='write image paths relative to this folder above the image '
                        'folder (e.g. data/uodb/<name>/images); default: the image folder')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:
        conversion = dlib_to_coco(args.xml_file, img_dir=args.img_dir,
                                  file_name_root=args.file_name_root,
                                  classes=args.classes.split(','),
                                  skip_unknown=args.skip_unknown, progress=True)
        write_coco_json(conversion.coco, args.out)
    except ConversionError as error:
        raise SystemExit(f'error: {error}')
    print(conversion.stats.summary())
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
