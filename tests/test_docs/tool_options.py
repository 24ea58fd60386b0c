"""Print, as JSON, the option strings of each command-line tool given.

Run as a script (``python tool_options.py tools/infer.py ...``), one process
for all tools so that torch and mmdet are imported once. Each tool runs as
``__main__`` with ``--help``; the first ``ArgumentParser`` that starts parsing
is captured and the tool is stopped there, so nothing but the tool's imports
and its parser's construction runs. This reads the parser the tool really
uses, including options added by helper functions (the converters' shared
``--out``) and by mmdet's own ``tools/train.py`` behind ``tools/train.py``.
"""
import argparse
import json
import runpy
import sys
import traceback


MARKER = 'TOOL_OPTIONS_JSON '


class ParserCaptured(BaseException):
    """Stops a tool at its first parse; a BaseException so that a tool's own
    ``except Exception`` cannot swallow it."""

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def capture(parser, args=None, namespace=None):
    raise ParserCaptured(parser)


def tool_options(path: str) -> list:
    """The option strings (``--out``, ``-h``, ...) of the tool at ``path``."""
    sys.argv = [path, '--help']
    try:
        runpy.run_path(path, run_name='__main__')
    except ParserCaptured as captured:
        return sorted(captured.parser._option_string_actions)
    raise RuntimeError(f'{path} finished without parsing arguments with argparse')


def main() -> None:
    argparse.ArgumentParser.parse_known_args = capture
    options, errors = {}, {}
    for path in sys.argv[1:]:
        try:
            options[path] = tool_options(path)
        except BaseException:  # noqa: B902 - a tool may exit or raise anything
            errors[path] = traceback.format_exc(limit=3)
    # A marker, in case a tool prints while it is imported.
    print(MARKER + json.dumps(dict(options=options, errors=errors)))


if __name__ == '__main__':
    main()
