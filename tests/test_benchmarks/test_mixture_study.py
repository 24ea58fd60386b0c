"""The accuracy study script: end to end at smoke-test size, and its parts."""
import filecmp
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import PARAM_SCHEDULERS

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
    row = next(line for line in lines if line.startswith('| dino_wide ('))
    assert row.startswith('| dino_wide (temp2) | +0.500 (seed 0) / +0.400 (seed 1) |')
    oracle = next(line for line in lines if line.startswith('| (oracle'))
    assert '+0.020 (seed 0) / -0.010 (seed 1)' in oracle


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
