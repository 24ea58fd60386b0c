"""Routing statistics, their plots and tools/analysis_tools/analyze_routing.py."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config

from damex_mmdet.analysis import RoutingAnalysisError, analyze_routing
from damex_mmdet.visualization import RoutingStatistics, plot_routing_heatmaps

from ..conftest import REPO_ROOT

TOOL = REPO_ROOT / 'tools' / 'analysis_tools' / 'analyze_routing.py'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
LAYERS = ['decoder.layers.0.ffn', 'decoder.layers.2.ffn']


def sample(dataset, counts, layers=LAYERS):
    return dict(dataset=dataset, routing_counts=np.asarray(counts), moe_layers=layers)


def test_statistics_match_hand_computed_values():
    stats = RoutingStatistics(['a', 'b'], dict(a=0, b=1))
    stats.update([sample('a', [[3, 1, 0], [2, 2, 0]]),
                  sample('a', [[1, 1, 2], [4, 0, 0]]),
                  sample('b', [[0, 4, 0], [1, 1, 2]])])
    np.testing.assert_array_equal(stats.counts[0], [[4, 2, 2], [0, 4, 0]])
    np.testing.assert_allclose(stats.shares()[1], [[0.75, 0.25, 0], [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(stats.accuracy(), [[0.5, 1.0], [0.75, 0.25]])
    np.testing.assert_allclose(stats.overall_accuracy(), [10 / 16, 5 / 8])
    np.testing.assert_allclose(stats.loads(), [[4 / 12, 6 / 12, 2 / 12],
                                               [7 / 12, 3 / 12, 2 / 12]])
    summary = json.loads(json.dumps(stats.summary()))
    assert summary['num_images'] == {'a': 2, 'b': 1}
    assert summary['layers'][LAYERS[1]]['counts']['a'] == [6, 2, 0]
    assert summary['layers'][LAYERS[0]]['accuracy'] == {'a': 0.5, 'b': 1.0}
    assert summary['mean_accuracy'] == pytest.approx((10 / 16 + 5 / 8) / 2)


def test_statistics_without_map_skip_accuracy_and_add_new_datasets():
    stats = RoutingStatistics(['a'])
    stats.update([sample('b', [[1, 1], [0, 2]])])
    assert stats.accuracy() is None
    summary = stats.summary()
    assert summary['datasets'] == ['b']  # 'a' had no image
    assert summary['accuracy'] is None and summary['mean_accuracy'] is None
    assert summary['layers'][LAYERS[0]]['shares'] == {'b': [0.5, 0.5]}


def test_statistics_reject_inconsistent_samples():
    stats = RoutingStatistics()
    stats.update([sample('a', [[1, 1], [0, 2]])])
    with pytest.raises(ValueError, match='disagree on the MoE layers'):
        stats.update([sample('a', [[1, 1, 0], [0, 2, 0]])])
    with pytest.raises(KeyError, match='DAMEX'):
        stats.update([dict(dataset='a')])
    with pytest.raises(KeyError, match='DatasetMixture'):
        stats.update([dict(routing_counts=np.ones((2, 2)), moe_layers=LAYERS)])


def test_heatmaps_are_png_files(tmp_path):
    stats = RoutingStatistics(['a', 'b'], dict(a=0, b=1))
    stats.update([sample('a', [[3, 1], [2, 2]]), sample('b', [[0, 4], [4, 0]])])
    paths = plot_routing_heatmaps(stats, str(tmp_path), 'unit test', prefix='x')
    assert [Path(p).name for p in paths] == [
        'x_decoder_layer_0.png', 'x_decoder_layer_2.png', 'x_expert_load.png']
    for path in paths:
        assert Path(path).read_bytes()[:8] == PNG_SIGNATURE


def test_tool_writes_json_and_heatmaps(tiny_checkpoint, tmp_path):
    config, checkpoint = tiny_checkpoint
    out_dir = tmp_path / 'routing'
    result = subprocess.run(
        [sys.executable, str(TOOL), str(config), str(checkpoint), '--out-dir', str(out_dir),
         '--max-images', '8', '--device', 'cpu', '--no-progress'],
        capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'mean accuracy' in result.stdout

    report = json.loads((out_dir / 'routing.json').read_text())
    assert report['model'] == 'DAMEX' and report['num_images'] == 8
    assert report['datasets'] == ['photo', 'sketch', 'aerial', 'scan']
    assert set(report['protocols']) == {'gate', 'dataset'}
    num_queries = Config.fromfile(str(config)).model.num_queries
    for protocol, result in report['protocols'].items():
        # --max-images takes images in turn from each dataset.
        assert result['num_images'] == dict(photo=2, sketch=2, aerial=2, scan=2)
        assert list(result['layers']) == report['layers']
        for layer in result['layers'].values():
            assert set(layer) == {'counts', 'shares', 'accuracy', 'load'}
            for name in report['datasets']:
                # Every decoder query of every image is routed once per layer.
                assert sum(layer['counts'][name]) == 2 * num_queries
                assert sum(layer['shares'][name]) == pytest.approx(1)
                assert 0 <= layer['accuracy'][name] <= 1
            assert sum(layer['load']) == pytest.approx(1)
        assert all(0 <= a <= 1 for a in result['accuracy'].values())
        assert 'mixture/mean/AP' in result['metrics']
        assert len(result['plots']) == len(report['layers']) + 1
        for plot in result['plots']:
            assert (out_dir / plot).read_bytes()[:8] == PNG_SIGNATURE
    # The oracle forces the mapped expert: a check of the bookkeeping.
    assert report['protocols']['dataset']['mean_accuracy'] == 1


def test_vanilla_moe_gets_loads_without_accuracy(tiny_checkpoint, tmp_path):
    config, checkpoint = tiny_checkpoint
    cfg = Config.fromfile(str(config))
    cfg.model.update(routing_loss=dict(type='LoadBalancingLoss', loss_weight=0.01),
                     dataset_to_expert=None)
    report = analyze_routing(cfg, str(checkpoint), str(tmp_path), max_images=4,
                             device='cpu', evaluate=False, progress=False)
    assert list(report['protocols']) == ['gate']
    assert 'vanilla MoE' in report['oracle_skipped']
    gate = report['protocols']['gate']
    assert gate['accuracy'] is None and gate['metrics'] == {}
    for layer in gate['layers'].values():
        assert layer['accuracy'] is None
        assert sum(layer['load']) == pytest.approx(1)
    assert (tmp_path / 'routing.json').is_file()


def test_dense_dino_and_missing_checkpoint_are_refused(tiny_checkpoint, tmp_path):
    config, checkpoint = tiny_checkpoint
    dino = Config.fromfile(str(REPO_ROOT / 'configs' / 'demo' / 'dino_demo.py'))
    with pytest.raises(RoutingAnalysisError, match='DINO model.*no routing'):
        analyze_routing(dino, str(checkpoint), str(tmp_path))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        analyze_routing(str(config), str(tmp_path / 'missing.pth'), str(tmp_path))
