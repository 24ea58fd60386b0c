"""`make demo`'s runner (damex_mmdet/demo/run.py through tools/run_demo.py)
end to end, at smoke-test size, from a folder outside the checkout."""
import json
import subprocess
import sys
from pathlib import Path

import mmcv

from ..conftest import REPO_ROOT


def test_run_demo_writes_a_report(tmp_path):
    work_dir = tmp_path / 'demo'
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / 'run_demo.py'),
         '--work-dir', str(work_dir), '--data-root', str(tmp_path / 'data'),
         '--max-iters', '2', '--num-train', '4', '--num-test', '3',
         '--max-test-images', '8'],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # One evaluation, after training, on 8 of the 12 held-out test images.
    assert '(val)' not in result.stdout + result.stderr
    assert '(test) of 4 datasets (photo: 3, sketch: 3' in result.stdout + result.stderr
    report = (work_dir / 'report.md').read_text()
    assert ', 8 test images (held out),' in report
    config = REPO_ROOT / 'configs' / 'demo' / 'damex_demo.py'
    assert report.startswith(f'# DAMEX demo report\n\nConfig `{config}`, ')
    for name in ('photo', 'sketch', 'aerial', 'scan', 'mean'):
        assert f'| {name} |' in report
    pngs = sorted((work_dir / 'routing').glob('*.png'))
    assert pngs and all(f'routing/{p.name}' in report for p in pngs
                        if p.name.startswith('routing_gate'))
    # The predictions on each dataset's first test image, side by side.
    assert '![predictions](predictions.png)' in report
    predictions = json.loads(
        (work_dir / 'predictions' / 'predictions.json').read_text())
    assert [Path(p['image']).name for p in predictions] == [
        f'{name}_test_0000.png' for name in ('photo', 'sketch', 'aerial', 'scan')]
    drawn = mmcv.imread(str(work_dir / 'predictions.png'))
    widths = [mmcv.imread(p['vis']).shape[1] * 2 for p in predictions]
    assert drawn.shape[1] == sum(widths) + 8 * 3
    headline = json.loads((work_dir / 'report.json').read_text())
    assert 0 <= headline['mean_AP50'] <= 1
    assert set(headline['timings']) == {
        'mixture', 'training', 'evaluation and routing analysis'}
    # A second run reuses the mixture and the trained checkpoint.
    again = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / 'run_demo.py'),
         '--work-dir', str(work_dir), '--data-root', str(tmp_path / 'data'),
         '--max-iters', '2', '--num-train', '4', '--num-test', '3'],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'Reusing' in again.stdout
