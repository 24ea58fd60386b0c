r"""Merge COCO detection files into one json, with image, annotation and category ids
remapped (categories matched by name).

Inputs are json files, folders of them, or quoted glob patterns: several splits or
sources of one dataset, or the one-file-per-image jsons some labelling and drone tools
write. An image listed twice, or an area larger than its box, stops the merge with the
file and the ids; --recompute-area sets every area to its box's width x height.
Example (the per-image drone files of ../shared/realdata/terrain):

    python tools/dataset_converters/coco_merge.py ../shared/realdata/terrain \
        --recompute-area --out data/terrain/annotations/train.json
"""
import argparse
from pathlib import Path


def parse_args() -> argparse.Namespace:
    # Only the standard library before parsing, so that --help answers at once.
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+',
                        help='COCO json files, folders of them, or quoted globs')
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')
    parser.add_argument('--recompute-area', action='store_true',
                        help="set every annotation's area to its box's width x height "
                        '(for files whose areas are wrong or missing)')
    parser.add_argument('--file-name-root', type=Path,
                        help="each input's file names are relative to its own folder "
                        '(per-image files beside their images); write them relative to '
                        'this folder instead. Default: keep the file names as written')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    from damex_mmdet.datasets.converters import (ConversionError, expand_coco_inputs,
                                                 merge_coco_files)
    from damex_mmdet.datasets.converters.cli import run_conversion

    def merge():
        # A folder or glob would pick up the json of an earlier run as an input.
        if args.out.resolve() in [path.resolve() for path in expand_coco_inputs(args.inputs)]:
            raise ConversionError(f'--out {args.out} is also one of the inputs: write the '
                                  'merged json to another file or folder.')
        return merge_coco_files(args.inputs, args.recompute_area, args.file_name_root)

    run_conversion(merge, args.out)


if __name__ == '__main__':
    main()
