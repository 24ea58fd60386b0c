"""The accuracy study script end to end, at smoke-test size."""
import json
import subprocess
import sys

from ..conftest import REPO_ROOT


def run_study(tmp_path, *extra_args):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / 'benchmarks' / 'mixture_study.py'),
         '--settings', 'labels', '--models', 'damex', '--seeds', '0',
         '--max-iters', '2', '--num-train', '4', '--num-val', '3',
         '--work-dir', str(tmp_path / 'study'),
         '--data-dir', str(tmp_path / 'data'), *extra_args],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)


def test_study_trains_reports_and_reuses_finished_runs(tmp_path):
    results_file = tmp_path / 'study' / 'results.json'
    results_file.parent.mkdir(parents=True)
    earlier = {'default': {'dino': [{'mixture/mean/AP50': 0.5}]}}
    results_file.write_text(json.dumps(earlier))

    first = run_study(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert 'training labels/damex_seed0' in first.stdout
    results = json.loads(results_file.read_text())
    assert results['default'] == earlier['default']
    [record] = results['labels']['damex']
    assert {'mixture/photo/AP50', 'mixture/sketch/AP50', 'mixture/mean/AP',
            'routing/mean/acc', 'routing/expert0/load'} <= set(record)
    table_row = next(line for line in first.stdout.splitlines()
                     if line.startswith('| damex |'))
    assert f'{record["mixture/mean/AP50"]:.3f}' in table_row

    again = run_study(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'training' not in again.stdout

    other_sizes = run_study(tmp_path, '--num-val', '2')
    assert other_sizes.returncode != 0
    assert 'parameters differ' in other_sizes.stderr
