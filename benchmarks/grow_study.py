"""The growth study: add the fourth demo dataset to a trained three-dataset
DAMEX instead of training on all four from scratch.

For every seed:

1. joint: the DAMEX that grow_damex_demo_base.py inherits (JOINT_MODEL)
   trained on all four demo datasets from scratch for --max-iters
   iterations; the mixture study's own run of it
   (benchmarks/mixture_study.py, reused when it already ran with the same
   parameters);
2. before: DAMEX on photo, sketch and aerial (configs/demo/
   grow_damex_demo_base.py), --max-iters iterations;
3. step 0: that checkpoint grown with scan by tools/grow_checkpoint.py,
   evaluated before any training (how much growing itself changes);
4. grown: configs/demo/grow_damex_demo_add_scan.py trained from step 0 for
   --grow-iters iterations (old experts frozen, the old datasets replayed).

Goals (issue 14): each old dataset's AP within 0.01 of "before"; scan's AP
within 0.02 of "joint"; growing costs at most 30% of joint's iterations; the
old datasets' tokens still reach their experts (routing accuracy without
dataset ids >= 0.95).

Usage:
    python benchmarks/grow_study.py [--seeds 0 1] [--max-iters 500]
        [--grow-iters 150] [--num-val 200]
        [--num-train N]   # smoke runs on smaller mixtures
        [--tag NAME --cfg-options KEY=VALUE ...]   # a variant of the grown
        # run's training, e.g. --tag rows --cfg-options
        # custom_hooks.4.gate_rows=False (joint, before and step 0 are shared)
        [--tag NAME --gate-init mean]   # grown with the old gate rows' mean
Results: work_dirs/study/grow/results.json (a variant's: results_NAME.json)
and a markdown table on stdout.
"""
import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from damex_mmdet.demo import generate_demo_mixture
from damex_mmdet.models import GATE_INITS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mixture_study import (DEFAULT_NUM_VAL, NAMES, REPO, final_metrics,  # noqa: E402,E501
                           mean_std, merge_seeds, resolved_digest, run,
                           train, update_json, variant_suffix)

SETTING = 'default'  # the four demo datasets; its data serve every run
STUDY = 'grow'  # the folder of this study's runs under --work-dir
BASE_CONFIG = REPO / 'configs/demo/grow_damex_demo_base.py'
GROWN_CONFIG = REPO / 'configs/demo/grow_damex_demo_add_scan.py'
OLD, NEW = NAMES[:3], NAMES[3]
# The mixture study's model that BASE_CONFIG inherits.
JOINT_MODEL = 'damex'
GOALS = dict(old_ap_drop=0.01, new_ap_gap=0.02, iteration_share=0.3,
             old_routing=0.95)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    parser.add_argument('--max-iters', type=int, default=500,
                        help='iterations of joint and of the model before '
                        'growing')
    parser.add_argument('--grow-iters', type=int, default=150,
                        help='iterations of the grown model')
    parser.add_argument('--num-train', type=int, default=None,
                        help='training images per dataset, for smoke runs')
    parser.add_argument('--num-val', type=int, default=DEFAULT_NUM_VAL,
                        help='validation images per dataset')
    parser.add_argument('--work-dir', default='work_dirs/study')
    parser.add_argument('--data-dir', default='data/study')
    parser.add_argument('--tag', dest='variant', default='',
                        help='name of a variant of the grown run; its runs '
                        'and results are kept apart')
    parser.add_argument('--gate-init', choices=GATE_INITS,
                        default='fit',
                        help='how tools/grow_checkpoint.py starts the new '
                        'gate rows; every variant grows from the same '
                        'checkpoint, which is grown again when this changes '
                        '(default: %(default)s)')
    parser.add_argument('--cfg-options', dest='variant_options', nargs='+',
                        default=[], metavar='KEY=VALUE',
                        help='config overrides of the variant\'s grown run, '
                        'passed to tools/train.py')
    args = parser.parse_args(argv)
    if (args.variant_options or args.gate_init != 'fit') \
            and not args.variant:
        parser.error('--cfg-options and --gate-init need a --tag to keep '
                     'their runs apart')
    # The joint run is the mixture study's plain, untagged one.
    args.tag, args.cfg_options = '', []
    return args


def run_config(base: Path, names, data_root: Path, seed: int,
               iters: int) -> str:
    """``base`` on the study's data, seed and iterations."""

    def entries(split):
        return [dict(name=n, data_root=f'{data_root.resolve()}/{n}/',
                     ann_file=f'annotations/{split}.json',
                     img_prefix=f'images/{split}/') for n in names]
    return '\n'.join([
        f"_base_ = '{base}'",
        f'randomness = dict(seed={seed})',
        f'max_iters = {iters}',
        'train_cfg = dict(max_iters=max_iters, val_interval=max_iters)',
        'default_hooks = dict(logger=dict(interval=50), '
        'checkpoint=dict(interval=max_iters))',
        f'train_dataloader = dict(dataset=dict(datasets={entries("train")}))',
        f'val_dataloader = dict(dataset=dict(datasets={entries("val")}))',
        'test_dataloader = val_dataloader',
    ]) + '\n'


def test_metrics(work_dir: Path):
    """The metrics tools/test.py logged last in ``work_dir``, or None."""
    for path in sorted(work_dir.glob('*/*.json'), reverse=True):
        if path.stem == path.parent.name:
            record = json.loads(path.read_text().splitlines()[-1])
            if any(k.startswith('mixture/') for k in record):
                return record
    return None


def file_digest(path: Path) -> str:
    """A digest of the file's content."""
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()[:16]


def growth_stamp(base_checkpoint: Path, grown_text: str,
                 gate_init: str) -> str:
    """A comment naming what the grown checkpoint is made of: the content of
    the checkpoint before growing, the resolved grow config and how the new
    gate rows start (tools/grow_checkpoint.py --gate-init). It heads the
    grow config and the grown runs' configs, so that a run grown from another
    model or recipe is never taken for this one."""
    if not base_checkpoint.is_file():
        raise SystemExit(f'{base_checkpoint} is missing: delete its run '
                         'folder to train the model before growing again.')
    return (f'# grows {base_checkpoint.name} '
            f'sha256={file_digest(base_checkpoint)} '
            f'with resolved={resolved_digest(grown_text)} '
            f'gate_init={gate_init}\n')


def is_stale(init: Path, grown_config: Path, stamped_text: str) -> bool:
    """Whether the grown checkpoint ``init`` must be made again: it is
    missing (or its growth failed), or was grown from another model or
    recipe than ``stamped_text`` (:func:`growth_stamp`) says."""
    return (not init.is_file() or not grown_config.is_file()
            or grown_config.read_text() != stamped_text)


def grow_seed(seed: int, args, progress) -> dict:
    """Train before, grow, evaluate step 0, train grown; their metrics."""
    data_root = Path(args.data_dir) / SETTING
    study_dir = Path(args.work_dir) / STUDY

    def finished(work_dir):
        return final_metrics(work_dir) is not None
    base_text = run_config(BASE_CONFIG, OLD, data_root, seed, args.max_iters)
    base_dir = train(STUDY, f'before_seed{seed}', base_text, args, progress,
                     finished, [])
    init = study_dir / f'grown_seed{seed}_init.pth'
    grown_text = run_config(GROWN_CONFIG, NAMES, data_root, seed,
                            args.grow_iters) + (
        f"load_from = '{init.resolve()}'\n")
    # The config's final learning-rate step, at 80% of --grow-iters.
    schedule = [f'param_scheduler.1.end={args.grow_iters}',
                f'param_scheduler.1.milestones=[{int(0.8 * args.grow_iters)}]']
    base_checkpoint = base_dir / f'iter_{args.max_iters}.pth'
    grown_text = growth_stamp(base_checkpoint, grown_text,
                              args.gate_init) + grown_text
    step0_dir = study_dir / f'grown_seed{seed}_step0'
    grown_config = study_dir / f'grown_seed{seed}_grow.py'
    # Every variant trains from the same grown checkpoint.
    if is_stale(init, grown_config, grown_text) or test_metrics(
            step0_dir) is None:
        # Without it a failed growth would leave the old one looking fresh.
        init.unlink(missing_ok=True)
        grown_config.write_text(grown_text)
        progress.write(f'growing {base_dir} with {NEW} -> {init}')
        for tool, tool_args, log in (
                ('grow_checkpoint.py',
                 [str(study_dir / f'before_seed{seed}.py'),
                  str(base_checkpoint),
                  str(grown_config), str(init), '--force',
                  '--gate-init', args.gate_init], 'grow'),
                ('test.py', [str(grown_config), str(init), '--work-dir',
                             str(step0_dir)], 'step0')):
            with open(study_dir / f'grown_seed{seed}_{log}.log', 'w') as out:
                subprocess.run([sys.executable, str(REPO / 'tools' / tool),
                                *tool_args], stdout=out,
                               stderr=subprocess.STDOUT, check=True)
    grown_name = f'grown{variant_suffix(args.variant)}_seed{seed}'
    grown_dir = train(STUDY, grown_name, grown_text, args, progress, finished,
                      schedule + args.variant_options)
    return dict(before=final_metrics(base_dir),
                step0=test_metrics(step0_dir),
                grown=final_metrics(grown_dir))


def summarise(results, args) -> str:
    """Markdown: AP per dataset and routing accuracy (mean±std over seeds)
    of every stage, then each goal per seed."""
    lines = ['| run | iterations | ' + ' | '.join(f'{n} AP' for n in NAMES)
             + ' | old routing acc | ' + f'{NEW} routing acc |',
             '|---' * (len(NAMES) + 4) + '|']
    iterations = dict(joint=args.max_iters, before=args.max_iters,
                      step0=0, grown=args.grow_iters)
    for stage in ('joint', 'before', 'step0', 'grown'):
        runs = [r[stage] for r in results]

        def stat(key):
            values = [r[key] for r in runs if r and key in r]
            return mean_std(values) if values else 'n/a'
        old_routing = [np.mean([r[f'routing/{n}/acc'] for n in OLD])
                       for r in runs if r and f'routing/{OLD[0]}/acc' in r]
        lines.append(
            f'| {stage} | {iterations[stage]} | '
            + ' | '.join(stat(f'mixture/{n}/AP') for n in NAMES)
            + f' | {mean_std(old_routing) if old_routing else "n/a"} | '
            f'{stat(f"routing/{NEW}/acc")} |')
    lines += ['', '| seed | max old AP drop (<= 0.01) | '
              f'{NEW} AP grown - joint (>= -0.02) | '
              'iterations grown / joint (<= 0.3) | '
              'min old routing acc (>= 0.95) | '
              'max old routing drop from before |', '|---' * 6 + '|']
    for r in results:
        drop = max(r['before'][f'mixture/{n}/AP']
                   - r['grown'][f'mixture/{n}/AP'] for n in OLD)
        gap = (r['grown'][f'mixture/{NEW}/AP']
               - r['joint'][f'mixture/{NEW}/AP'])
        routing = min(r['grown'][f'routing/{n}/acc'] for n in OLD)
        # A model whose own routing was below the goal before growing
        # cannot meet it by keeping its routing; the drop tells the two
        # apart.
        routing_drop = max(r['before'][f'routing/{n}/acc']
                           - r['grown'][f'routing/{n}/acc'] for n in OLD)
        lines.append(f'| {r["seed"]} | {drop:+.3f} | {gap:+.3f} | '
                     f'{args.grow_iters / args.max_iters:.2f} | '
                     f'{routing:.3f} | {routing_drop:+.3f} |')
    return '\n'.join(lines)


def store_results(path: Path, parameters: dict, results: list) -> list:
    """Merge the seeds ``results`` into the JSON file at ``path``; seeds
    stored there by other invocations stay if they ran with the same
    ``parameters``. Returns every stored seed's results."""
    def merge(stored):
        same = {k: v for k, v in stored.items() if k != 'seeds'} == parameters
        return dict(parameters, seeds=merge_seeds(
            stored.get('seeds', []) if same else [], results))
    return update_json(path, merge)['seeds']


def main(argv=None):
    args = parse_args(argv)
    generate_demo_mixture(Path(args.data_dir) / SETTING,
                          num_train=args.num_train, num_val=args.num_val)
    results = []
    with tqdm(args.seeds, desc='growth study seeds', unit='seed') as progress:
        for seed in progress:
            joint = run(SETTING, JOINT_MODEL, 'proportional', seed, args,
                        progress)
            results.append(dict(seed=seed, joint=joint,
                                **grow_seed(seed, args, progress)))
    out = (Path(args.work_dir) / STUDY
           / f'results{variant_suffix(args.variant)}.json')
    # The configs' digests keep seeds grown by an edited recipe out.
    seeds = store_results(out, dict(
        max_iters=args.max_iters, grow_iters=args.grow_iters,
        num_train=args.num_train, num_val=args.num_val, goals=GOALS,
        joint_model=JOINT_MODEL, cfg_options=args.variant_options, configs={
            config.name: resolved_digest(f"_base_ = '{config}'\n")
            for config in (BASE_CONFIG, GROWN_CONFIG)}), results)
    print(f'\nResults ({len(seeds)} seeds, this run\'s and those stored '
          f'before; {args.num_val} val images per dataset, mean±std over '
          f'seeds): {out}\n')
    print(summarise(seeds, args))


if __name__ == '__main__':
    main()
