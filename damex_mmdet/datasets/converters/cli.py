"""What the command-line converters in ``tools/dataset_converters`` share.

Every script takes the same ``--out`` and ``--file-name-root`` options and ends the same
way: the COCO json is written, then the stats summary and the written path are printed.
Defining them once keeps the options, their help and the messages identical across the
formats, so that a script only states what is specific to its format.
"""
import argparse
from pathlib import Path
from typing import Callable

from .coco_builder import Conversion, ConversionError, check_out_file, write_coco_json


def converter_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser for a converter script; pass the script's ``__doc__``.

    The description is printed as written so that the example command in the docstring
    keeps its line breaks in ``--help``.
    """
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


# The shared options are added by two calls rather than by converter_parser itself:
# argparse lists options in --help, and names missing required arguments, in the order
# they were added, and each script keeps the order its users have always seen.
def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """Add the required ``--out``, the COCO json to write."""
    parser.add_argument('--out', type=Path, required=True, help='COCO json to write')


def add_file_name_root_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--file-name-root``, the ``file_name_root`` of every ``*_to_coco`` function."""
    parser.add_argument('--file-name-root', type=Path,
                        help='write image paths relative to this folder above the image '
                        'folder (e.g. data/uodb/<name>/images); default: the image folder')


def add_fix_sizes_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--fix-sizes``, the ``fix_sizes`` of the converters of formats that write
    the image size into the annotation."""
    parser.add_argument('--fix-sizes', action='store_true',
                        help='when the image size written in an annotation differs from '
                        "the image file's, use the file's size and count it in the summary "
                        'instead of stopping')


def run_conversion(convert: Callable[[], Conversion], out: Path) -> None:
    """Run ``convert``, write its COCO json to ``out`` and print what was kept and skipped.

    A :class:`ConversionError`, from checking ``out``, the conversion or validating the
    json, ends the program with ``error: <message>`` and no traceback: the message
    already names the file, the line and the fix.
    """
    try:
        check_out_file(out)
        conversion = convert()
        write_coco_json(conversion.coco, out)
    except ConversionError as error:
        raise SystemExit(f'error: {error}')
    print(conversion.stats.summary())
    print(f'wrote {out}')
