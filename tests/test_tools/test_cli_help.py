"""Every command-line tool answers ``--help`` at once: it parses its arguments
before importing torch, mmdet or this package (a user types ``--help`` first;
importing torch alone takes seconds)."""
import argparse
import re
import resource
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest

from damex_mmdet.datasets.converters import (DEEPLESION_SPLITS, DLIB_FACE_CLASSES,
                                             DOTA_CLASSES, KITTI_CLASSES, LISA_CLASSES,
                                             VOC_STYLE_CLASSES)

from ..conftest import REPO_ROOT

TOOLS = sorted(path for pattern in ('tools/*.py', 'tools/*/*.py')
               for path in REPO_ROOT.glob(pattern)
               if "if __name__ == '__main__':" in path.read_text())
HEAVY = ('torch', 'mmdet', 'damex_mmdet', 'mmcv')
MAX_SECONDS = 2.0
CONVERTERS = sorted(REPO_ROOT.glob('tools/dataset_converters/*2coco.py'))


def ids(paths):
    return [str(path.relative_to(REPO_ROOT)) for path in paths]


def imported_modules(stderr: str) -> set:
    """The modules ``python -X importtime`` reports, one a line."""
    return {line.rsplit('|', 1)[1].strip() for line in stderr.splitlines()
            if line.startswith('import time:') and '|' in line}


def run(tool: Path, *args: str, cwd: Path, importtime: bool = False
        ) -> subprocess.CompletedProcess:
    """``python TOOL ARGS`` from ``cwd``, a folder outside the checkout, as a
    user may run it."""
    python = [sys.executable] + (['-X', 'importtime'] if importtime else [])
    return subprocess.run([*python, str(tool), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_every_tool_is_found():
    assert {'train.py', 'test.py', 'grow_checkpoint.py', 'infer.py', 'voc2coco.py',
            'analyze_routing.py'} <= {path.name for path in TOOLS}


@pytest.mark.parametrize('tool', TOOLS, ids=ids(TOOLS))
def test_help_imports_nothing_heavy(tool, tmp_path):
    result = run(tool, '--help', cwd=tmp_path, importtime=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f'usage: {tool.name} ')
    heavy = sorted(name for name in imported_modules(result.stderr)
                   if name.split('.')[0] in HEAVY)
    assert not heavy, f'{tool.name} --help imports {heavy[:5]}'


@pytest.mark.parametrize('tool', TOOLS, ids=ids(TOOLS))
def test_help_answers_within_two_seconds(tool, tmp_path):
    # The processor time the tool takes: other processes on a loaded machine
    # stretch the wall time, not this. The wall time gets a generous bound.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = run(tool, '--help', cwd=tmp_path)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr[-3000:]
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    assert cpu < MAX_SECONDS, f'{tool.name} --help took {cpu:.1f} s of processor time'
    assert wall < 5 * MAX_SECONDS, f'{tool.name} --help took {wall:.1f} s'


@pytest.mark.parametrize('name', ['train', 'test'])
def test_mmdet_tools_show_mmdets_options_and_stop_on_a_wrong_one(name, tmp_path):
    """tools/train.py and tools/test.py run mmdet's parser alone first."""
    tool = REPO_ROOT / 'tools' / f'{name}.py'
    result = run(tool, '--help', cwd=tmp_path)
    assert '--launcher {none,pytorch,slurm,mpi}' in result.stdout
    assert '--cfg-options' in result.stdout
    wrong = run(tool, cwd=tmp_path, importtime=True)
    assert wrong.returncode == 2
    assert f'{name}.py: error: the following arguments are required: config' in wrong.stderr
    assert 'torch' not in imported_modules(wrong.stderr)


class ParserCaptured(Exception):

    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def parser_of(tool: Path, monkeypatch) -> argparse.ArgumentParser:
    """The parser the tool builds, stopped when it starts parsing."""

    def capture(parser, args=None, namespace=None):
        raise ParserCaptured(parser)

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_known_args', capture)
    monkeypatch.setattr(sys, 'argv', [str(tool), '--help'])
    with pytest.raises(ParserCaptured) as captured:
        runpy.run_path(str(tool), run_name='__main__')
    return captured.value.parser


def option(parser: argparse.ArgumentParser, name: str) -> argparse.Action:
    return parser._option_string_actions[name]


@pytest.mark.parametrize('name', ['--out', '--file-name-root', '--fix-sizes'])
def test_converters_share_their_common_options(name, monkeypatch):
    """Each converter spells out the options they share (it cannot import the
    package before parsing): they must read the same everywhere."""
    seen = {}
    for tool in CONVERTERS:
        parser = parser_of(tool, monkeypatch)
        if name in parser._option_string_actions:
            action = option(parser, name)
            seen[tool.name] = (type(action).__name__, action.type, action.required,
                               action.default, action.help)
    assert len(seen) >= 2 and len(set(seen.values())) == 1, seen


def test_converter_help_names_the_package_classes(monkeypatch):
    """The converters name the package's class lists and splits in their help
    without importing them."""
    parsers = {tool.stem: parser_of(tool, monkeypatch) for tool in CONVERTERS}
    assert tuple(option(parsers['deeplesion2coco'], '--split').choices) == tuple(
        sorted(DEEPLESION_SPLITS))
    voc_help = option(parsers['voc2coco'], '--classes').help
    assert set(re.search(r'\((.*?)\)', voc_help).group(1).split(', ')) == set(
        VOC_STYLE_CLASSES)
    assert f"default: {','.join(KITTI_CLASSES)})" in option(parsers['kitti2coco'],
                                                            '--classes').help
    assert f"default: {','.join(DLIB_FACE_CLASSES)})" in option(parsers['dlib2coco'],
                                                                '--classes').help
    assert f'the {len(DOTA_CLASSES)} DOTA v1.0 classes' in option(parsers['dota2coco'],
                                                                  '--classes').help
    lisa_help = ' '.join(option(parsers['lisa2coco'], '--map').help.split())
    assert f"one of the classes {', '.join(LISA_CLASSES)}," in lisa_help
