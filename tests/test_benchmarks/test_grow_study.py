"""The growth study script's bookkeeping (its training runs are the mixture
study's and tools/grow_checkpoint.py's, tested there)."""
import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ..conftest import load_script


def test_seeds_of_separate_invocations_merge_unless_parameters_differ(
        tmp_path):
    study = load_script('benchmarks/grow_study.py')
    path = tmp_path / 'results.json'
    parameters = dict(max_iters=500, grow_iters=150, num_train=None,
                      num_val=200, goals=study.GOALS)
    study.store_results(path, parameters, [dict(seed=1, grown=0.5)])
    seeds = study.store_results(path, parameters, [dict(seed=0, grown=0.4)])
    assert seeds == [dict(seed=0, grown=0.4), dict(seed=1, grown=0.5)]
    assert json.loads(path.read_text()) == dict(parameters, seeds=seeds)
    # Seeds grown for another number of iterations are not comparable.
    shorter = dict(parameters, grow_iters=100)
    assert study.store_results(path, shorter, [dict(seed=0, grown=0.3)]) == [
        dict(seed=0, grown=0.3)]


def test_joint_run_trains_the_model_the_grown_one_starts_from():
    """The joint baseline must be the mixture study's model that
    grow_damex_demo_base.py inherits, or the table compares two models."""
    study = load_script('benchmarks/grow_study.py')
    tree = ast.parse(study.BASE_CONFIG.read_text())
    base, = [ast.literal_eval(node.value) for node in tree.body
             if isinstance(node, ast.Assign)
             and [t.id for t in node.targets] == ['_base_']]
    mixture_study = load_script('benchmarks/mixture_study.py')
    joint_config = study.REPO / mixture_study.CONFIGS[study.JOINT_MODEL]
    assert (study.BASE_CONFIG.parent / base).resolve() == joint_config


def test_a_variant_needs_a_tag_and_leaves_the_joint_run_untagged():
    study = load_script('benchmarks/grow_study.py')
    with pytest.raises(SystemExit):
        study.parse_args(['--cfg-options', 'optim_wrapper.optimizer.lr=1e-4'])
    args = study.parse_args(['--tag', 'slow', '--cfg-options',
                             'optim_wrapper.optimizer.lr=1e-4'])
    assert study.variant_suffix(args.variant) == '_slow'
    assert args.variant_options == ['optim_wrapper.optimizer.lr=1e-4']
    assert (args.tag, args.cfg_options) == ('', [])


def test_the_grown_checkpoint_is_made_again_only_when_stale(tmp_path):
    study = load_script('benchmarks/grow_study.py')
    init, base = tmp_path / 'init.pth', tmp_path / 'iter_500.pth'
    config = tmp_path / 'grow.py'
    recipe = "_base_ = []\nmax_iters = 150\n"
    base.write_bytes(b'before')
    stamped = study.growth_stamp(base, recipe, 'fit') + recipe
    assert study.is_stale(init, config, stamped)
    init.write_bytes(b'grown')
    assert study.is_stale(init, config, stamped)  # no config: never grown
    config.write_text(stamped)
    assert not study.is_stale(init, config, stamped)
    # Another recipe, other gate rows, or the model before growing trained
    # again.
    edited = "_base_ = []\nmax_iters = 100\n"
    assert study.is_stale(init, config,
                          study.growth_stamp(base, edited, 'fit') + edited)
    assert study.is_stale(init, config,
                          study.growth_stamp(base, recipe, 'mean') + recipe)
    base.write_bytes(b'retrained')
    assert study.is_stale(init, config,
                          study.growth_stamp(base, recipe, 'fit') + recipe)
    base.unlink()
    with pytest.raises(SystemExit, match='iter_500.pth is missing'):
        study.growth_stamp(base, recipe, 'fit')


def test_a_variant_trains_its_own_run_from_the_shared_grown_checkpoint(
        tmp_path, monkeypatch):
    """grow_seed with the training and the tools replaced by stand-ins that
    record what they were asked: the growth runs once, then each variant
    trains its own run with the schedule plus its options."""
    study = load_script('benchmarks/grow_study.py')
    trained, tools = [], []

    def train(setting, name, text, args, progress, finished, cfg_options):
        trained.append((name, text, cfg_options))
        work_dir = tmp_path / 'study' / setting / name
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / 'iter_500.pth').write_bytes(b'before')
        return work_dir

    def run_tool(command, **kwargs):
        tools.append(Path(command[1]).name)
        if Path(command[1]).name == 'grow_checkpoint.py':
            Path(command[5]).write_bytes(b'grown')
    monkeypatch.setattr(study, 'train', train)
    monkeypatch.setattr(study.subprocess, 'run', run_tool)
    monkeypatch.setattr(study, 'final_metrics', lambda work_dir: {})
    monkeypatch.setattr(study, 'test_metrics', lambda work_dir: {})

    def grow(*options):
        args = study.parse_args(['--work-dir', str(tmp_path / 'study'),
                                 *options])
        study.grow_seed(0, args, SimpleNamespace(write=lambda text: None))
    grow()
    assert tools == ['grow_checkpoint.py', 'test.py']
    grow('--tag', 'slow', '--cfg-options', 'optim_wrapper.optimizer.lr=1e-4')
    assert tools == ['grow_checkpoint.py', 'test.py']  # not grown again
    names = [name for name, _, _ in trained]
    assert names == ['before_seed0', 'grown_seed0', 'before_seed0',
                     'grown_slow_seed0']
    schedule = ['param_scheduler.1.end=150',
                'param_scheduler.1.milestones=[120]']
    assert trained[1][2] == schedule
    assert trained[3][2] == schedule + ['optim_wrapper.optimizer.lr=1e-4']
    # Both grown runs' configs carry the stamp of what they grow from.
    assert trained[1][1] == trained[3][1]
    assert trained[1][1].startswith('# grows iter_500.pth sha256=')
    # A variant on other gate rows grows again, with the tool told so.
    grow('--tag', 'mean', '--gate-init', 'mean')
    assert tools[2:] == ['grow_checkpoint.py', 'test.py']
    assert 'gate_init=mean' in trained[-1][1].splitlines()[0]
    with pytest.raises(SystemExit):
        study.parse_args(['--gate-init', 'mean'])  # the config's runs: fit


def test_goal_table_tells_a_routing_drop_from_a_low_start():
    """Aerial routed 0.937 before growing at seed 0 of the study: the lowest
    old routing alone cannot tell whether growing changed it."""
    study = load_script('benchmarks/grow_study.py')

    def metrics(ap, routing):
        return {**{f'mixture/{n}/AP': ap for n in study.NAMES},
                **{f'routing/{n}/acc': r
                   for n, r in zip(study.OLD, routing)}}
    result = dict(seed=0, joint=metrics(0.5, [1.0] * 3),
                  before=metrics(0.5, [0.99, 0.97, 0.93]), step0=None,
                  grown=metrics(0.5, [0.96, 0.97, 0.93]))
    args = SimpleNamespace(max_iters=500, grow_iters=150)
    row = study.summarise([result], args).splitlines()[-1]
    assert row == '| 0 | +0.000 | +0.000 | 0.30 | 0.930 | +0.030 |'
