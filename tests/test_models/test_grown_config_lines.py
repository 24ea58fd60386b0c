"""The config lines tools/grow_checkpoint.py prints for the grown model: pasted into a
config that inherits a base with another expert map, they give exactly the grown
model's settings (the map replaced, not merged)."""
import os

import pytest
from mmengine.config import Config

from damex_mmdet.models.grow_checkpoint import format_growth, grown_config_lines

from ..conftest import REPO_ROOT


@pytest.mark.parametrize('expert_map, spare', [
    (dict(voc=0, faces=1, terrain=2, dota=3), []),
    # Not Python names: written as a dict literal.
    ({'voc-2011': 0, 'faces': 1, 'class': 2, '3d': 3}, []),
    # The old model kept expert 1 spare; growing appended expert 3 for dota.
    (dict(voc=0, terrain=2, dota=3), [1]),
])
def test_printed_lines_replace_the_base_settings(expert_map, spare, tmp_path):
    info = dict(new_datasets=['dota'], num_classes=[6, 7], num_experts=[3, 4],
                dataset_to_expert=expert_map, source_experts={}, gate_fit=None)
    out = 'work_dirs/grown/init.pth'
    base = REPO_ROOT / 'configs' / 'examples' / 'damex_custom_mixture_demo_size.py'
    config = tmp_path / 'grown.py'
    # A base whose spare experts do not fit the grown model.
    config.write_text('\n'.join([f'_base_ = {str(base)!r}',
                                 'model = dict(spare_experts=[2])',
                                 *grown_config_lines(info, out)]) + '\n')
    cfg = Config.fromfile(str(config))
    assert cfg.model.num_experts == 4
    assert cfg.model.dataset_to_expert == expert_map
    assert cfg.model.spare_experts == spare
    assert cfg.model.bbox_head.num_classes == 7
    assert cfg.model.bbox_head.type == 'DatasetAwareDINOHead'
    assert cfg.load_from == os.path.abspath(out)
    printed = format_growth(info, out).splitlines()
    assert printed[-6:] == [f'    {line}' for line in grown_config_lines(info, out)]
