"""Label-block confusion and tools/analysis_tools/label_confusion.py."""
import json
import subprocess
import sys

import mmengine
import pytest
import torch

from damex_mmdet.analysis import LabelConfusionError, label_block_confusion

from ..conftest import REPO_ROOT

TOOL = REPO_ROOT / 'tools' / 'analysis_tools' / 'label_confusion.py'


def prediction(dataset, classes, objects, detections):
    """One sample as tools/test.py --out dumps it: ``objects`` are
    (box, ignored), ``detections`` (box, label, score)."""
    return dict(
        dataset=dataset, dataset_classes=classes,
        instances=[dict(bbox=box, bbox_label=classes[0], ignore_flag=int(ignored))
                   for box, ignored in objects],
        pred_instances=dict(
            bboxes=torch.tensor([box for box, _, _ in detections],
                                dtype=torch.float32).reshape(-1, 4),
            labels=torch.tensor([label for _, label, _ in detections], dtype=torch.long),
            scores=torch.tensor([score for _, _, score in detections])))


def test_counts_match_a_hand_worked_mixture():
    photo, sketch = [0, 1], [2, 3]
    results = [
        # The object's best detection is the sketch block's class; the
        # photo class on the same box scores lower; a far detection is below
        # the score threshold.
        prediction('photo', photo, [([0, 0, 10, 10], False)],
                   [([0, 0, 10, 10], 2, 0.9), ([1, 0, 10, 10], 0, 0.5),
                    ([50, 50, 60, 60], 1, 0.2)]),
        # The ignored object is not counted; the other is found in its own block.
        prediction('sketch', sketch, [([0, 0, 10, 10], True), ([20, 20, 30, 30], False)],
                   [([20, 20, 30, 30], 3, 0.4)]),
        # An object no detection overlaps enough.
        prediction('photo', photo, [([0, 0, 10, 10], False)], [([5, 5, 15, 15], 0, 0.8)]),
    ]
    report = label_block_confusion(results, score_thr=0.3, iou_thr=0.5)
    assert list(report) == ['photo', 'sketch']
    assert report['photo'] == dict(detections=3, wrong_block=pytest.approx(1 / 3),
                                   wrong_block_by_owner=dict(sketch=1), objects=2,
                                   found=1, top_wrong_block=1.0)
    assert report['sketch'] == dict(detections=1, wrong_block=0.0, wrong_block_by_owner={},
                                    objects=1, found=1, top_wrong_block=0.0)


def test_shared_blocks_and_empty_predictions():
    voc = [0, 1]
    results = [prediction('voc07', voc, [], []), prediction('voc12', voc, [], []),
               prediction('clipart', [2], [([0, 0, 4, 4], False)], [([0, 0, 4, 4], 1, 0.6)]),
               prediction('clipart', [2], [([0, 0, 4, 4], False)], [])]
    report = label_block_confusion(results)
    assert report['clipart']['wrong_block_by_owner'] == {'voc07+voc12': 1}
    assert report['clipart']['objects'] == 2 and report['clipart']['found'] == 1
    assert report['voc07'] == dict(detections=0, wrong_block=None, wrong_block_by_owner={},
                                   objects=0, found=0, top_wrong_block=None)


def test_predictions_without_a_mixture_are_refused():
    plain = prediction('photo', [0], [], [])
    del plain['dataset_classes']
    with pytest.raises(LabelConfusionError, match='dataset_classes.*tools/test.py'):
        label_block_confusion([plain])


def test_tool_on_predictions_of_mmdets_test_tool(tiny_checkpoint, tiny_mixture, tmp_path):
    config, checkpoint = tiny_checkpoint
    predictions = tmp_path / 'predictions.pkl'
    tested = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / 'test.py'), str(config), str(checkpoint),
         '--work-dir', str(tmp_path / 'test'), '--out', str(predictions)],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert tested.returncode == 0, tested.stderr[-3000:]
    out = tmp_path / 'confusion.json'
    result = subprocess.run([sys.executable, str(TOOL), str(predictions), '--score-thr',
                             '0', '--out', str(out)],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "in another dataset's block" in result.stdout
    report = json.loads(out.read_text())['datasets']
    assert list(report) == ['photo', 'sketch', 'aerial', 'scan']
    num_detections = len(mmengine.load(str(predictions))[0]['pred_instances']['labels'])
    for name, stats in report.items():
        annotations = json.loads((tiny_mixture / name / 'annotations' / 'test.json').read_text())
        assert stats['objects'] == sum(not a.get('iscrowd', 0)
                                       for a in annotations['annotations'])
        # Score threshold 0: every detection of the dataset's 4 test images counts (tools/test.py
        # scores the test split).
        assert stats['detections'] == 4 * num_detections
        assert 0 <= stats['wrong_block'] <= 1
        assert stats['found'] <= stats['objects']


def test_tool_names_a_missing_file(tmp_path):
    result = subprocess.run([sys.executable, str(TOOL), str(tmp_path / 'none.pkl')],
                            capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode != 0 and 'tools/test.py' in result.stderr
