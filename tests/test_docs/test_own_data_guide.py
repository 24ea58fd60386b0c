"""docs/own_data.md, run as written on the real sample files of shared/realdata: every
command of its ``bash`` blocks, in order, from a working folder outside the checkout.

bash runs the shell lines (the configs the guide writes with ``cat <<EOF``) and expands
every ``python SCRIPT ARGS`` command (variables, ``$(cat ...)``); the script then runs
in this process with exactly that argv and working folder, so that torch and mmdet are
imported once instead of once per command.
"""
import io
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from ..conftest import REALDATA, REPO_ROOT

GUIDE = REPO_ROOT / 'docs' / 'own_data.md'
pytestmark = pytest.mark.skipif(
    not REALDATA.is_dir(), reason=f'{REALDATA} not found: the real samples live in '
    'shared/ beside the repo')


def guide_commands(text: str):
    """The guide's commands in order: ('python', command) for a python command (its
    continuation lines joined), ('shell', lines) for anything else."""
    commands = []
    for block in re.findall(r'^```bash\n(.*?)^```', text, re.S | re.M):
        lines = iter(block.splitlines())
        for line in lines:
            if not line.strip():
                continue
            if '<<EOF' in line:
                body = [line]
                for body_line in lines:
                    body.append(body_line)
                    if body_line == 'EOF':
                        break
                commands.append(('shell', '\n'.join(body)))
                continue
            while line.endswith('\\'):
                line = line[:-1] + next(lines).strip()
            kind = 'python' if line.startswith('python ') else 'shell'
            commands.append((kind, line))
    return commands


def bash(script: str, cwd: Path, env: dict) -> str:
    result = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f'{script}\n{result.stderr}'
    return result.stdout


def run_python_command(command: str, cwd: Path, env: dict, monkeypatch) -> None:
    """Expand ``command`` with bash and run its script in this process."""
    expanded = bash(f"printf '%s\\0' {command[len('python '):]}", cwd, env)
    argv = expanded.split('\0')[:-1]
    monkeypatch.setattr(sys, 'argv', argv)
    try:
        runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as stop:
        assert stop.code in (None, 0), f'{command}\nexited with {stop.code}'


@pytest.fixture(scope='module')
def guide_run(tmp_path_factory):
    """Run the guide in a fresh folder; returns the folder and what it printed."""
    folder = tmp_path_factory.mktemp('own_data')
    env = dict(os.environ, DAMEX=str(REPO_ROOT), RAW=str(REALDATA))
    printed = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(folder)
        for kind, command in guide_commands(GUIDE.read_text()):
            if kind == 'shell':
                bash(command, folder, env)
                continue
            # Never closed: mmengine's loggers keep the stream they were made with.
            stdout = io.StringIO()
            with monkeypatch.context() as inner:
                inner.setattr(sys, 'stdout', stdout)
                run_python_command(command, folder, env, monkeypatch)
            printed.append((command, stdout.getvalue()))
    return folder, printed


def test_every_command_ran_and_wrote_below_the_working_folder(guide_run):
    folder, printed = guide_run
    scripts = [Path(command.split()[1]).name for command, _ in printed]
    assert scripts == ['voc2coco.py', 'dlib2coco.py', 'dlib2coco.py', 'dota2coco.py',
                       'coco_merge.py', 'train.py', 'test.py', 'infer.py',
                       'analyze_routing.py', 'grow_checkpoint.py', 'train.py']
    for name in ('my_mixture', 'my_mixture_grown', 'grown'):
        assert not (REPO_ROOT / 'work_dirs' / name).exists()
    assert not (REPO_ROOT / 'my_mixture.py').exists()
    checkpoint = Path((folder / 'work_dirs' / 'my_mixture' / 'last_checkpoint').read_text())
    assert checkpoint == folder / 'work_dirs' / 'my_mixture' / 'iter_4.pth'
    predictions = json.loads(
        (folder / 'work_dirs' / 'my_mixture' / 'infer' / 'predictions.json').read_text())
    assert predictions[0]['image'] == str(REALDATA / 'terrain' / 'terrain2.png')
    routing = json.loads(
        (folder / 'work_dirs' / 'my_mixture' / 'routing' / 'routing.json').read_text())
    assert 'voc' in json.dumps(routing) and 'terrain' in json.dumps(routing)


def test_the_converted_files_hold_the_real_boxes(guide_run):
    folder, _ = guide_run

    def load(name):
        return json.loads((folder / 'data' / name).read_text())
    voc, faces = load('voc/train.json'), load('faces/train.json')
    assert [c['name'] for c in voc['categories']] == ['person', 'car', 'bus']
    assert (len(voc['images']), len(voc['annotations'])) == (3, 9)
    assert (len(faces['images']), len(faces['annotations'])) == (4, 18)
    assert len(load('faces/val.json')['annotations']) == 25
    assert len(load('dota/train.json')['annotations']) == 1
    terrain = load('terrain/train.json')
    assert [c['name'] for c in terrain['categories']] == ['human', 'car']
    assert len(terrain['annotations']) == 12
    # The drone tool's whole-image areas are replaced by the boxes'.
    assert all(a['area'] == a['bbox'][2] * a['bbox'][3] for a in terrain['annotations'])


def test_the_grown_model_has_the_printed_settings(guide_run):
    folder, printed = guide_run
    grow_output = next(out for command, out in printed if 'grow_checkpoint.py' in command)
    lines = grow_output.split('the lines of the new config that this checkpoint fits:\n')[1]
    lines = [line[4:] for line in lines.splitlines()[:6]]
    assert 'set load_from' not in grow_output
    pasted = folder / 'pasted.py'
    pasted.write_text('\n'.join([f"_base_ = '{folder / 'my_mixture.py'}'", *lines]) + '\n')
    written, grown = Config.fromfile(str(pasted)), Config.fromfile(
        str(folder / 'my_mixture_grown.py'))
    for key in ('num_experts', 'dataset_to_expert'):
        assert written.model[key] == grown.model[key]
    assert written.model.spare_experts == []
    assert written.model.bbox_head.num_classes == grown.model.bbox_head.num_classes == 7
    assert written.load_from == grown.load_from == str(folder / 'work_dirs' / 'grown' /
                                                       'init.pth')
    trained = torch.load(folder / 'work_dirs' / 'my_mixture_grown' / 'iter_4.pth',
                         map_location='cpu', weights_only=False)
    classes = trained['meta']['dataset_meta']['classes']
    assert list(classes) == ['voc:person', 'voc:car', 'voc:bus', 'faces:face',
                             'terrain:human', 'terrain:car', 'dota:plane']
