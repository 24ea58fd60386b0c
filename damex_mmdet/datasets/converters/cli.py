"""How the command-line converters in ``tools/dataset_converters`` end.

Every script ends the same way: the COCO json is written, then the stats summary and the
written path are printed, or ``error: <message>`` without a traceback. The scripts spell
out their own options and import this package only after parsing them, so that ``--help``
answers without loading torch (tests/test_tools/test_cli_help.py checks that the options
they share read the same in every script).
"""
from pathlib import Path
from typing import Callable

from .coco_builder import Conversion, ConversionError, check_out_file, write_coco_json


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
