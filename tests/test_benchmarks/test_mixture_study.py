"""The accuracy study script: end to end at smoke-test size, and its parts."""
import filecmp
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import PARAM_SCHEDULERS, init_default_scope

from damex_mmdet.demo import generate_demo_mixture

from ..conftest import REPO_ROOT, load_script

study = load_script('benchmarks/mixture_study.py')


def run_study(tmp_path, *extra_args):
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / 'benchmarks' / 'mixture_study.py'),
         '--settings', 'labels', '--models', 'upcycled',
         '--samplers', 'temp2', '--seeds', '0',
         '--max-iters', '2', '--num-train', '4', '--num-val', '3',
         '--num-test', '2',
         '--work-dir', str(tmp_path / 'study'),
         '--data-dir', str(tmp_path / 'data'), *extra_args],
        capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)


def test_study_trains_upcycles_reports_and_reuses_finished_runs(tmp_path):
    results_file = tmp_path / 'study' / 'results.json'
    results_file.parent.mkdir(parents=True)
    earlier = {'default': {'dino/proportional': [{'mixture/mean/AP': 0.5}]}}
    results_file.write_text(json.dumps(earlier))

    first = run_study(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for name in ('upcycled50_temp2_dense_seed0', 'upcycled50_temp2_seed0'):
        assert f'training labels/{name}' in first.stdout
    runs = tmp_path / 'study' / 'labels'
    assert (runs / 'upcycled50_temp2_dense_seed0' / 'iter_1.pth').is_file()
    assert (runs / 'upcycled50_temp2_seed0_init.pth').is_file()
    damex_phase = Config.fromfile(str(runs / 'upcycled50_temp2_seed0.py'))
    assert damex_phase.load_from == str(runs.resolve() /
                                        'upcycled50_temp2_seed0_init.pth')
    assert damex_phase.model.moe_cfg.normalize_weights is True
    assert damex_phase.train_cfg.max_iters == 1
    assert damex_phase.train_dataloader.sampler.mode == 'temperature'

    results = json.loads(results_file.read_text())
    assert results['default'] == earlier['default']
    [upcycled] = results['labels']['upcycled50/temp2']
    assert upcycled['seed'] == 0
    assert {'mixture/photo/AP', 'mixture/sketch/AP', 'mixture/mean/AP',
            'routing/mean/acc', 'routing/expert0/load'} <= set(upcycled)
    row = next(line for line in first.stdout.splitlines()
               if line.startswith('| upcycled50 | temp2 |'))
    assert f'{upcycled["mixture/mean/AP"]:.3f}±0.000' in row
    # Scored once more on the held-out test split, stamped with the code.
    assert {'mixture/photo/AP', 'mixture/mean/AP', 'routing/mean/acc'} <= set(
        upcycled['test'])
    test_log = (runs / 'upcycled50_temp2_seed0' / 'test.log').read_text()
    assert 'DatasetMixture (test) of 2 datasets (photo: 2, sketch: 2)' in test_log
    assert upcycled['code'] == study.code_version()

    again = run_study(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'training' not in again.stdout

    other_sizes = run_study(tmp_path, '--num-val', '2')
    assert other_sizes.returncode != 0
    assert 'parameters differ' in other_sizes.stderr


def test_a_finished_run_is_not_reused_once_its_base_config_changed(tmp_path):
    base = tmp_path / 'base.py'
    base.write_text('model = dict(width=1)\n')
    text = f"_base_ = '{base}'\nrandomness = dict(seed=0)\n"
    args = study.parse_args([])
    header = study.config_header(text, args, [])
    base.write_text('# A comment changes nothing the run trains.\n'
                    'model = dict(width=1)\n')
    assert study.config_header(text, args, []) == header
    base.write_text('model = dict(width=2)\n')
    assert study.config_header(text, args, []) != header


def test_more_val_images_leave_the_training_images_unchanged(tmp_path):
    small = generate_demo_mixture(tmp_path / 'small', num_train=2, num_val=1, num_test=1,
                                  progress=False)
    large = generate_demo_mixture(tmp_path / 'large', num_train=2, num_val=3, num_test=1,
                                  progress=False)
    for name in small:
        train_small, train_large = small[name]['train'], large[name]['train']
        assert filecmp.cmp(train_small['ann_file'], train_large['ann_file'],
                           shallow=False)
        match, mismatch, errors = filecmp.cmpfiles(
            train_small['img_prefix'], train_large['img_prefix'],
            [f'{name}_train_{i:04d}.png' for i in range(2)], shallow=False)
        assert len(match) == 2 and not mismatch and not errors
        assert large[name]['val']['num_images'] == 3
        assert filecmp.cmp(small[name]['val']['img_prefix'] + f'{name}_val_0000.png',
                           large[name]['val']['img_prefix'] + f'{name}_val_0000.png',
                           shallow=False)


def learning_rates(schedulers, iterations):
    """The learning rate of each iteration under mmengine's own schedulers."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    built = [PARAM_SCHEDULERS.build(dict(s, optimizer=optimizer))
             for s in schedulers]
    rates = []
    for _ in range(iterations):
        rates.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        for scheduler in built:
            scheduler.step()
    return np.array(rates)


@pytest.mark.parametrize('offset', [20, 250, 450])
def test_continued_schedule_matches_the_uninterrupted_one(offset):
    schedule = study.base_schedule('dino')
    whole = learning_rates(schedule, 500)
    continued = learning_rates(
        study.continued_schedule(schedule, offset, 500 - offset), 500 - offset)
    np.testing.assert_allclose(continued, whole[offset:], rtol=1e-9)


def test_summary_picks_each_models_best_sampler_and_pairs_seeds():
    def record(seed, ap):
        return {'seed': seed, 'mixture/mean/AP': ap, 'mixture/mean/AP50': ap + .2,
                'mixture/photo/AP': ap, 'mixture/sketch/AP': ap}
    results = {'labels': {
        'dino/proportional': [record(0, .50), record(1, .40)],
        'dino/temp2': [record(0, .45), record(1, .47)],
        'damex/proportional': [record(1, .49), record(0, .53)],
        'damex/temp2': [record(0, .40), record(1, .40)],
    }}
    assert study.best_samplers(results['labels']) == dict(
        dino='temp2', damex='proportional')
    row = next(line for line in study.summarise(results).splitlines()
               if line.startswith('| damex (proportional) |'))
    # Paired by seed: 0.49 - 0.47 (seed 1) and 0.53 - 0.45 (seed 0).
    assert '+0.020 (seed 1) / +0.080 (seed 0)' in row
    assert f'0.050±{np.std([0.02, 0.08], ddof=1):.3f}' in row
    # Student's t with 1 degree of freedom: 12.706 x 0.0424 / sqrt(2).
    assert '[-0.331, +0.431]' in row


def test_test_split_compares_the_reference_with_every_model_by_seed():
    def record(seed, val_ap, test_ap, oracle_ap=None):
        def metrics(ap):
            return {'mixture/mean/AP': ap, 'mixture/mean/AP50': ap + .2,
                    'mixture/photo/AP': ap, 'mixture/sketch/AP': ap}
        entry = dict(metrics(val_ap), seed=seed, test=metrics(test_ap))
        if oracle_ap is not None:
            entry['oracle'] = metrics(oracle_ap)
        return entry
    results = {'labels': {
        'damex/temp2': [record(0, .5, .60, .62), record(1, .5, .50, .49)],
        'dino_wide/proportional': [record(0, .4, .58), record(1, .4, .45)],
        # Chosen on val (0.45 > 0.40), although it is worse on test.
        'dino_wide/temp2': [record(0, .45, .10), record(1, .45, .10)],
    }}
    lines = study.summarise(results, reference='damex').splitlines()
    # Each model's own test AP first, mean±std over seeds, the oracle's beside it.
    assert '| dino_wide (temp2) | 2 | 0.100±0.000 | 0.300±0.000 | 0.100±0.000 | ' \
        '0.100±0.000 |' in lines
    assert '| damex (temp2) with oracle routing | 2 | 0.555±0.092 | 0.755±0.092 | ' \
        '0.555±0.092 | 0.555±0.092 |' in lines
    row = next(line for line in lines if line.startswith('| dino_wide (temp2) | +'))
    assert row.startswith('| dino_wide (temp2) | +0.500 (seed 0) / +0.400 (seed 1) |')
    oracle = next(line for line in lines if line.startswith('| (oracle'))
    assert '+0.020 (seed 0) / -0.010 (seed 1)' in oracle


def test_val_and_test_tables_put_their_columns_in_the_same_order():
    def record(seed, ap):
        metrics = {'mixture/mean/AP': ap, 'mixture/mean/AP50': ap + .2,
                   'mixture/photo/AP': ap + .1, 'mixture/sketch/AP': ap - .1}
        return dict(metrics, seed=seed, test=metrics)
    results = {'labels': {'damex/temp2': [record(0, .5), record(1, .5)]}}
    lines = study.summarise(results, reference='damex').splitlines()
    val_header, test_header = (line for line in lines
                               if line.startswith('| model '))
    assert val_header.startswith(
        '| model | sampler | seeds | mean AP | mean AP50 | photo AP | sketch AP |')
    assert test_header == (
        '| model (sampler) | seeds | mean AP | mean AP50 | photo AP | sketch AP |')
    # The same runs give the same cells in the same places.
    assert '| damex | temp2 | 2 | 0.500±0.000 | 0.700±0.000 | 0.600±0.000 | ' \
        '0.400±0.000 | n/a | n/a |' in lines
    assert '| damex (temp2) | 2 | 0.500±0.000 | 0.700±0.000 | 0.600±0.000 | ' \
        '0.400±0.000 |' in lines


def test_paired_interval_narrows_with_seeds():
    assert study.paired_interval([0.01]) == 'n/a'
    # Mean 0.02, std 0.01: t(0.975, 4) = 2.776 over 5 seeds, 12.706 over 2.
    assert study.paired_interval([0.01, 0.02, 0.03, 0.01, 0.03]) == (
        '[+0.008, +0.032]')
    assert study.paired_interval([0.01, 0.03]) == '[-0.107, +0.147]'


def test_each_dense_fraction_is_a_model_of_its_own():
    args = study.parse_args(['--models', 'dino', 'upcycled', 'damex',
                             '--dense-fractions', '0.25', '0.5'])
    assert args.models == ['dino', 'upcycled25', 'upcycled50', 'damex']
    with pytest.raises(SystemExit):
        study.parse_args(['--models', 'upcycled', '--max-iters', '2',
                          '--dense-fractions', '0.1'])


def test_results_of_separate_invocations_merge_run_by_run(tmp_path):
    # Two processes, one per model, used to overwrite each other's setting.
    path = tmp_path / 'results.json'
    study.store_results(path, {'limited': {'dino/temp2': [
        dict(seed=0, ap=0.5), dict(seed=1, ap=0.6)]}})
    study.store_results(path, {'limited': {'damex/temp2': [
        dict(seed=0, ap=0.7)]}, 'labels': {'dino/temp2': [
            dict(seed=0, ap=0.8)]}})
    stored = study.store_results(path, {'limited': {'dino/temp2': [
        dict(seed=1, ap=0.65)]}})
    assert stored == json.loads(path.read_text())
    assert stored == {
        'limited': {'dino/temp2': [dict(seed=0, ap=0.5), dict(seed=1, ap=0.65)],
                    'damex/temp2': [dict(seed=0, ap=0.7)]},
        'labels': {'dino/temp2': [dict(seed=0, ap=0.8)]}}


def test_stored_runs_of_another_recipe_are_not_merged(tmp_path):
    path = tmp_path / 'results.json'
    study.store_results(path, {'limited': {'damex/temp2': [
        dict(seed=0, ap=0.5, recipe='a'), dict(seed=1, ap=0.6, recipe='a')]}})
    stored = study.store_results(path, {'limited': {'damex/temp2': [
        dict(seed=2, ap=0.7, recipe='a')]}})
    assert [r['seed'] for r in stored['limited']['damex/temp2']] == [0, 1, 2]
    # The config changed: seeds 0-2 are not seeds of the new recipe.
    stored = study.store_results(path, {'limited': {'damex/temp2': [
        dict(seed=3, ap=0.4, recipe='b')]}})
    assert stored['limited']['damex/temp2'] == [
        dict(seed=3, ap=0.4, recipe='b')]


def test_recipe_is_the_same_for_every_seed_and_changes_with_the_config(
        tmp_path):
    args = study.parse_args(['--settings', 'limited', '--data-dir',
                             str(tmp_path)])
    recipe = study.recipe_digest('limited', 'damex', 'temp2', args)
    assert recipe == study.recipe_digest('limited', 'damex', 'temp2', args)
    assert recipe != study.recipe_digest('limited', 'dino', 'temp2', args)
    assert recipe != study.recipe_digest('limited', 'damex', 'proportional',
                                         args)
    variant = study.parse_args(['--settings', 'limited', '--data-dir',
                                str(tmp_path), '--tag', 'x', '--cfg-options',
                                'model.routing_loss.loss_weight=0.3'])
    assert recipe != study.recipe_digest('limited', 'damex', 'temp2', variant)


def resolved_study_config(tmp_path, setting, model, max_iters=500):
    """The config a size setting's run trains, resolved by mmengine."""
    iters = study.setting_iters(setting, max_iters)
    text = study.study_config(setting, tmp_path / 'data', model, 0, iters, 'temp2',
                              study.schedule_length(setting, max_iters))
    path = tmp_path / f'{setting}_{model}.py'
    path.write_text(text)
    return Config.fromfile(str(path))


@pytest.mark.parametrize('setting, datasets, iters, num_classes', [
    ('size2', ['photo', 'aerial'], 250, 6),
    ('default', ['photo', 'sketch', 'aerial', 'scan'], 500, 11),
    ('size6', ['photo', 'sketch', 'aerial', 'scan', 'thermal', 'comic'], 750, 18),
    ('size8', ['photo', 'sketch', 'aerial', 'scan', 'thermal', 'comic', 'microscopy',
               'underwater'], 1000, 24),
])
def test_the_series_trains_each_dataset_as_long_as_default_does(tmp_path, setting, datasets,
                                                                 iters, num_classes):
    cfg = resolved_study_config(tmp_path, setting, 'dino')
    assert [d.name for d in cfg.train_dataloader.dataset.datasets] == datasets
    assert [d.ann_file for d in cfg.test_dataloader.dataset.datasets] == [
        'annotations/test.json'] * len(datasets)
    assert cfg.model.bbox_head.num_classes == num_classes
    assert cfg.train_cfg.max_iters == iters
    # The 50-iteration warm-up keeps its length; the decay comes at 80% of the run.
    rates = learning_rates(cfg.param_scheduler, iters)
    default_rates = learning_rates(study.base_schedule('dino'), 500)
    np.testing.assert_allclose(rates[:50], default_rates[:50], rtol=1e-9)
    np.testing.assert_allclose(rates[50:round(0.8 * iters)], 1.0, rtol=1e-9)
    np.testing.assert_allclose(rates[round(0.8 * iters):], 0.1, rtol=1e-9)


@pytest.mark.parametrize('setting', ['default', 'limited'])
def test_a_shorter_run_moves_its_decay_with_it(tmp_path, setting):
    """--max-iters 250: the LR decay comes at 80% of the run, not at the demo
    config's iteration 400; at the demo length the config keeps its own."""
    cfg = resolved_study_config(tmp_path, setting, 'damex', max_iters=250)
    assert cfg.train_cfg.max_iters == 250
    rates = learning_rates(cfg.param_scheduler, 250)
    np.testing.assert_allclose(rates[50:200], 1.0, rtol=1e-9)
    np.testing.assert_allclose(rates[200:], 0.1, rtol=1e-9)
    assert study.schedule_length(setting, 500) is None


def test_size_settings_give_every_dataset_its_expert(tmp_path):
    size2 = resolved_study_config(tmp_path, 'size2', 'damex')
    assert size2.model.num_experts == 4
    assert size2.model.dataset_to_expert == dict(photo=0, aerial=2)
    assert size2.model.spare_experts == [1, 3]
    size8 = resolved_study_config(tmp_path, 'size8', 'damex')
    assert size8.model.num_experts == 8
    assert size8.model.dataset_to_expert == dict(
        photo=0, sketch=1, aerial=2, scan=3, thermal=4, comic=5, microscopy=6,
        underwater=7)
    assert size8.model.spare_experts == []
    # The controls follow: vanilla MoE has as many experts, the parameter-matched
    # dense model as many hidden units as the shared expert and 8 experts, the
    # width-matched one the active width of a shared expert plus one expert.
    assert resolved_study_config(tmp_path, 'size6', 'moe_shared').model.num_experts == 6
    dino_params = resolved_study_config(tmp_path, 'size8', 'dino_params')
    assert dino_params.model.ffn_channels == dict(decoder={0: 9 * 512, 2: 9 * 512})
    init_default_scope('mmdet')
    damex, dense = MODELS.build(size8.model), MODELS.build(dino_params.model)
    assert {m.num_experts for m in damex.modules() if hasattr(m, 'num_experts')} == {8}

    def parameters(model):
        return sum(p.numel() for p in model.parameters())
    # As many parameters but, in each of the two MoE layers, DAMEX's gate (256 x 8
    # weights) and its 8 experts' output biases (256 each; the dense FFN has one).
    assert parameters(damex) - parameters(dense) == 2 * (256 * 8 + 8 * 256)
    assert resolved_study_config(tmp_path, 'size8', 'dino_wide').model.ffn_channels == \
        dict(decoder={0: 1024, 2: 1024})
    # The paper's settings keep their configs: no line about experts or schedules.
    default = study.study_config('default', tmp_path, 'dino_params', 0, 500, 'temp2')
    assert 'num_experts' not in default and 'ffn_channels' not in default
    assert 'param_scheduler' not in default


def test_upcycled_runs_of_a_size_setting_continue_its_scaled_schedule(capsys):
    iters = study.setting_iters('size8', 500)
    whole = learning_rates(study.run_schedule('dino', iters), iters)
    continued = study.continued_schedule(study.run_schedule('dino', iters), 300,
                                         iters - 300)
    np.testing.assert_allclose(learning_rates(continued, iters - 300), whole[300:],
                               rtol=1e-9)
    # 3 iterations of 4 datasets are 2 of 2: a fifth of 3 rounds to 1, of 2 to 0.
    study.parse_args(['--settings', 'default', '--models', 'upcycled', '--max-iters', '3',
                      '--dense-fractions', '0.2'])
    with pytest.raises(SystemExit):
        study.parse_args(['--settings', 'default', 'size2', '--models', 'upcycled',
                          '--max-iters', '3', '--dense-fractions', '0.2'])
    assert "0.2 of size2's 2 iterations leaves no dense or no DAMEX phase" in \
        capsys.readouterr().err


def growth_results():
    """Fake stored results of two settings of the series: damex, dino with two
    samplers (val picks temp2), and moe_shared at four datasets only."""
    def metrics(ap):
        return {'mixture/mean/AP': ap, 'mixture/mean/AP50': ap,
                **{f'mixture/{name}/AP': ap for name in study.EXPERT_OF}}

    def record(seed, val_ap, test_ap):
        return dict(metrics(val_ap), seed=seed, test=metrics(test_ap))
    return {
        'size2': {
            'damex/temp2': [record(0, .5, .60), record(1, .5, .50), record(2, .5, .55)],
            'dino/temp2': [record(0, .4, .58), record(1, .4, .45), record(2, .4, .52)],
            'dino/proportional': [record(0, .3, .90), record(1, .3, .90)],
        },
        'default': {
            'damex/temp2': [record(0, .5, .40), record(1, .5, .42)],
            'dino/temp2': [record(0, .4, .30), record(1, .4, .36)],
            'moe_shared/temp2': [record(1, .4, .41)],
        },
        # Not in the series: left out.
        'labels': {'damex/temp2': [record(0, .5, .9)], 'dino/temp2': [record(0, .4, .1)]},
    }


def test_growth_pairs_seeds_per_size_with_the_samplers_chosen_on_val():
    gains = study.growth(growth_results(), 'damex')
    assert set(gains) == {'dino', 'moe_shared'}
    np.testing.assert_allclose(gains['dino'][2], [0.02, 0.05, 0.03], atol=1e-12)
    np.testing.assert_allclose(gains['dino'][4], [0.10, 0.06], atol=1e-12)
    np.testing.assert_allclose(gains['moe_shared'][4], [0.01], atol=1e-12)
    assert 2 not in gains['moe_shared']
    lines = study.growth_table(gains, 'damex')
    assert lines[1] == '| minus | 2 datasets | 4 datasets |'
    # Mean 0.0333, std 0.0153, t(0.975, 2) = 4.303 over 3 seeds: 0.0333 -+ 0.0380.
    assert '| dino | +0.033 [-0.005, +0.071] (3) | +0.080 [-0.174, +0.334] (2) |' in lines
    assert '| moe_shared |  | +0.010 n/a (1) |' in lines


def test_growth_plot_draws_each_models_gain_and_interval(tmp_path):
    gains = study.growth(growth_results(), 'damex')
    path = tmp_path / 'plots' / 'gain.png'
    figure = study.plot_growth(gains, 'damex', path)
    with open(path, 'rb') as image:
        assert image.read(8) == b'\x89PNG\r\n\x1a\n'
    [axes] = figure.axes
    drawn = {container.get_label(): container.lines for container in axes.containers}
    assert set(drawn) == {'damex minus dino', 'damex minus moe_shared'}
    line, _, (bars, ) = drawn['damex minus dino']
    x, y = line.get_data()
    np.testing.assert_allclose(x, [1.97, 3.97])  # side by side with moe_shared
    np.testing.assert_allclose(y, [0.1 / 3, 0.08])
    # Each bar spans the 95% interval of the table.
    [(low_2, high_2), (low_4, high_4)] = [segment[:, 1] for segment in bars.get_segments()]
    np.testing.assert_allclose([low_2, high_2, low_4, high_4],
                               [-0.0046, 0.0713, -0.1741, 0.3341], atol=1e-4)
    line, _, (bars, ) = drawn['damex minus moe_shared']
    np.testing.assert_allclose(np.array(line.get_data()).ravel(), [4.03, 0.01])
    np.testing.assert_allclose(bars.get_segments()[0][:, 1], [0.01, 0.01])
    assert list(axes.get_xticks()) == [2, 4]


def test_the_plot_leaves_out_models_measured_at_one_size(tmp_path):
    args = study.parse_args(['--report', '--plot', str(tmp_path / 'gain.png')])
    figure = study.draw_growth(growth_results(), args)
    [axes] = figure.axes
    assert [c.get_label() for c in axes.containers] == ['damex minus dino']
    # Only models at one size: each is drawn, as a point.
    one_size = {'default': growth_results()['default']}
    figure = study.draw_growth(one_size, args)
    assert {c.get_label() for c in figure.axes[0].containers} == {
        'damex minus dino', 'damex minus moe_shared'}


def test_the_study_plots_the_stored_size_results(tmp_path, capsys):
    results_file = tmp_path / 'study' / 'results.json'
    results_file.parent.mkdir(parents=True)
    results_file.write_text(json.dumps(growth_results()))
    study.main(['--report', '--work-dir', str(tmp_path / 'study'), '--plot',
                str(tmp_path / 'gain.png')])
    assert (tmp_path / 'gain.png').read_bytes().startswith(b'\x89PNG')
    study.main(['--report', '--work-dir', str(tmp_path / 'study'), '--plot',
                str(tmp_path / 'none.png'), '--reference', 'moe'])
    assert not (tmp_path / 'none.png').exists()
    assert 'No plot' in capsys.readouterr().out


def test_the_pages_show_the_report_of_the_committed_runs():
    """benchmarks/README.md pastes the test-split tables of the committed
    control runs (default and domains) and the size study's table, and the
    README quotes the width-matched model's gain and each model's test AP: a
    number edited on a page, or runs re-stored without the page, fails."""
    runs = REPO_ROOT / 'benchmarks' / 'results' / 'demo_study_2026-12-03'
    stored = json.loads((runs / 'results.json').read_text())

    def test_split_rows(reference, setting='default'):
        tables = study.test_comparison(setting, stored[setting], reference)
        return [line for line in tables
                if line.startswith('| ') and not line.startswith('| minus')]

    evidence = (REPO_ROOT / 'benchmarks' / 'README.md').read_text()
    rows = test_split_rows('damex')
    assert len(rows) >= 6
    assert [row for row in rows if row not in evidence] == []
    # The controls on the domains setting.
    domains_rows = test_split_rows('damex', 'domains')
    assert len(domains_rows) >= 4
    assert [row for row in domains_rows if row not in evidence] == []
    # The size study's table, every setting of the series.
    growth = study.growth_table(study.growth(stored, 'damex'), 'damex')
    assert growth[1] == '| minus | 2 datasets | 4 datasets | 6 datasets | 8 datasets |'
    assert [row for row in growth[1:] if row not in evidence] == []
    [width_row] = [row for row in test_split_rows('dino_wide')
                   if row.startswith('| dino (temp2) | +')]
    interval = width_row.split(' | ')[3]
    assert interval == '[+0.017, +0.055]'
    readme = (REPO_ROOT / 'README.md').read_text()
    assert f'**{interval}**' in readme
    # The README's test mean AP column: each model's mean over its seeds.
    quoted = 0
    for row in rows:
        model, seeds, mean_ap = row.split(' | ')[:3]
        if 'oracle' in model or seeds != '5':
            continue
        config = f"configs/demo/{model.lstrip('| ').split(' ')[0]}_demo.py"
        for line in readme.splitlines():
            if line.startswith('| ') and f'(`{config}`)' in line:
                assert f' {mean_ap.split("±")[0]} ' in line.replace('*', ' '), line
                quoted += 1
    assert quoted == 6
