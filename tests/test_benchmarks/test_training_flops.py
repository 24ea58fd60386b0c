"""The FLOP counter of benchmarks/training_flops.py charges MoE layers for
what their tokens ran."""
import sys

import pytest

from ..conftest import REPO_ROOT, load_script

DAMEX = str(REPO_ROOT / 'configs' / 'demo' / 'damex_paper_demo.py')
SHARED = ['model.moe_cfg.shared_expert=True']


@pytest.fixture(scope='module')
def flops_tool():
    sys.path.insert(0, str(REPO_ROOT / 'benchmarks'))
    yield load_script('benchmarks/training_flops.py')
    sys.path.remove(str(REPO_ROOT / 'benchmarks'))


@pytest.fixture(scope='module')
def paper_damex(flops_tool):
    return flops_tool.build(DAMEX, [])


def test_shared_expert_costs_one_dense_ffn_per_moe_token(flops_tool,
                                                         paper_damex):
    """A full-width shared expert adds the dense FFN's FLOPs on the decoder
    tokens of the MoE layers; halving both widths brings DAMEX back to
    its own cost."""
    damex = flops_tool.training_flops(paper_damex)
    full = flops_tool.training_flops(flops_tool.build(DAMEX, SHARED))
    narrow = flops_tool.training_flops(flops_tool.build(DAMEX, SHARED + [
        'model.moe_cfg.shared_feedforward_channels=256',
        'model.moe_cfg.expert_feedforward_channels=256']))
    moe_layers = len(list(paper_damex.named_moe_layers()))
    # Training tokens of one decoder layer: the batch's matching and
    # denoising queries (their number depends on the boxes, so it is read
    # back from the FLOPs rather than assumed).
    per_token = 3 * 2 * 2 * 256 * 512  # forward + 2 backward, 2 matmuls
    tokens = (full - damex) / (moe_layers * per_token)
    assert tokens == int(tokens) and 8 * 30 <= tokens <= 8 * 30 * 4
    assert abs(narrow - damex) < 1e-3 * damex


def test_reports_ratios_to_the_first_model(flops_tool, paper_damex, capsys):
    flops_tool.main(['--model', DAMEX, '--model', DAMEX, *SHARED])
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert rows[0].endswith('| 1.000 | yes |')
    # The shared expert's two 256 x 512 weights and their biases in each MoE layer.
    moe_layers = len(list(paper_damex.named_moe_layers()))
    counts = [float(row.split(' | ')[2].rstrip('M')) * 1e6 for row in rows]
    assert counts[1] - counts[0] == pytest.approx(
        moe_layers * (2 * 256 * 512 + 512 + 256), abs=1e4)  # printed to 0.01M
    assert 'shared_expert=True' in rows[1] and '| yes |' in rows[1]
