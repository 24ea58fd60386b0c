"""The accuracy study: dense DINO vs vanilla MoE vs DAMEX on demo mixtures.

For every setting, model and seed it trains the demo config in its own
process (tools/train.py), reads the final validation metrics (per-dataset
AP/AP50 in each dataset's own label space, routing accuracy and expert load)
and prints a table of means and spreads over seeds. Runs that already
finished are reused, so an interrupted study continues where it stopped.

Settings (the paper's three, at demo scale):
- default: the 4-dataset demo mixture (disparate domains, divergent label
  sets, one limited-data set);
- limited: every dataset cut to 30 training images;
- domains: the three most different domains only (sketch, aerial, scan);
- labels: photo and sketch, which share class names but not label blocks.

Usage:
    python benchmarks/mixture_study.py [--settings default] [--seeds 0 1]
        [--models dino moe damex] [--max-iters 500]
        [--num-train N --num-val N]   # smoke runs on smaller mixtures
        [--tag NAME --cfg-options KEY=VALUE ...]   # a variant, e.g.
        # --tag weight1 --cfg-options model.routing_loss.loss_weight=1.0
Results: work_dirs/study/results.json and a markdown table on stdout.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from damex_mmdet.datasets.demo import DEMO_DATASETS, generate_demo_mixture

REPO = Path(__file__).resolve().parents[1]
CONFIGS = dict(dino='configs/demo/dino_demo.py', moe='configs/demo/moe_demo.py',
               damex='configs/demo/damex_demo.py')
NAMES = [spec.name for spec in DEMO_DATASETS]
CLASSES = {spec.name: spec.classes for spec in DEMO_DATASETS}
SETTINGS = dict(
    default=dict(datasets=NAMES, num_train=None),
    limited=dict(datasets=NAMES, num_train=30),
    domains=dict(datasets=['sketch', 'aerial', 'scan'], num_train=None),
    labels=dict(datasets=['photo', 'sketch'], num_train=None),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--settings', nargs='+', default=['default'],
                        choices=sorted(SETTINGS))
    parser.add_argument('--models', nargs='+', default=list(CONFIGS),
                        choices=sorted(CONFIGS))
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    parser.add_argument('--max-iters', type=int, default=500)
    parser.add_argument('--num-train', type=int, default=None,
                        help='training images per dataset in every setting, '
                        'for smoke runs (default: the setting\'s own)')
    parser.add_argument('--num-val', type=int, default=None,
                        help='validation images per dataset, for smoke runs '
                        '(default: the generator\'s)')
    parser.add_argument('--work-dir', default='work_dirs/study')
    parser.add_argument('--data-dir', default='data/study')
    parser.add_argument('--tag', default='',
                        help='name of a variant; its runs are kept apart')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        metavar='KEY=VALUE',
                        help='config overrides of the variant, passed to '
                        'tools/train.py')
    return parser.parse_args(argv)


def study_config(setting: str, data_root: Path, model: str, seed: int,
                 max_iters: int) -> str:
    """A config restricting the demo config to a setting's datasets."""
    names = SETTINGS[setting]['datasets']

    def entries(split):
        return [dict(name=n, data_root=f'{data_root.resolve()}/{n}/',
                     ann_file=f'annotations/{split}.json',
                     img_prefix=f'images/{split}/') for n in names]
    experts = {n: NAMES.index(n) for n in names}
    lines = [
        f"_base_ = '{REPO / CONFIGS[model]}'",
        f'randomness = dict(seed={seed})',
        f'train_cfg = dict(max_iters={max_iters}, val_interval={max_iters})',
        f'default_hooks = dict(logger=dict(interval=100), '
        f'checkpoint=dict(interval={max_iters}))',
        f'model = dict(bbox_head=dict(num_classes='
        f'{sum(len(CLASSES[n]) for n in names)}))',
        f'train_dataloader = dict(dataset=dict(datasets={entries("train")}))',
        f'val_dataloader = dict(dataset=dict(datasets={entries("val")}))',
        'test_dataloader = val_dataloader',
    ]
    if model == 'damex':
        lines += [
            f'model.update(dataset_to_expert=dict(_delete_=True, '
            f'**{experts}))',
            "val_evaluator = [dict(type='MixtureCocoMetric'), dict("
            f"type='RoutingMetric', dataset_to_expert={experts})]",
            'test_evaluator = val_evaluator']
    return '\n'.join(lines) + '\n'


def final_metrics(work_dir: Path):
    scalars = sorted(work_dir.glob('*/vis_data/scalars.json'))
    for path in reversed(scalars):
        for line in reversed(path.read_text().splitlines()):
            record = json.loads(line)
            if any(k.startswith('mixture/') for k in record):
                return record
    return None


def variant_suffix(args) -> str:
    """What a variant's run and result file names carry after the model."""
    return f'_{args.tag}' if args.tag else ''


def run(setting, model, seed, args, progress):
    data_root = Path(args.data_dir) / setting
    run_name = f'{model}{variant_suffix(args)}_seed{seed}'
    work_dir = Path(args.work_dir) / setting / run_name
    config = work_dir.parent / f'{run_name}.py'
    # The first line records what the config cannot show, so a finished run
    # is reused only for the same mixture sizes and overrides.
    text = (f'# mixture_study.py: num_train={args.num_train} '
            f'num_val={args.num_val} cfg_options={args.cfg_options}\n'
            + study_config(setting, data_root, model, seed, args.max_iters))
    metrics = final_metrics(work_dir)
    if metrics is not None:
        if config.exists() and config.read_text() == text:
            return metrics
        raise SystemExit(
            f'{work_dir} holds a finished run whose parameters differ from '
            f'this study\'s (compare {config}). Pass another --work-dir or '
            '--tag, or delete that run to retrain it.')
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)
    command = [sys.executable, str(REPO / 'tools' / 'train.py'), str(config),
               '--work-dir', str(work_dir)]
    if args.cfg_options:
        command += ['--cfg-options', *args.cfg_options]
    progress.write(f'training {setting}/{run_name} -> {work_dir}')
    log = work_dir.parent / f'{run_name}.log'
    with open(log, 'w') as out:
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT,
                       check=True)
    return final_metrics(work_dir)


def summarise(results):
    """Markdown tables: mean (and spread over seeds) per model."""
    lines = []
    for setting, by_model in results.items():
        names = SETTINGS[setting]['datasets']
        lines += [f'\n### {setting}: {", ".join(names)}\n',
                  '| model | ' + ' | '.join(f'{n} AP50' for n in names)
                  + ' | mean AP50 | mean AP | routing acc | max expert load |',
                  '|---' * (len(names) + 5) + '|']
        for model, runs in by_model.items():
            def stat(key):
                values = [r[key] for r in runs if key in r]
                if not values:
                    return 'n/a'
                spread = (max(values) - min(values)) / 2
                return f'{np.mean(values):.3f}±{spread:.3f}'
            loads = [max(v for k, v in r.items() if k.startswith(
                'routing/expert') and k.endswith('/load')) for r in runs
                if any(k.startswith('routing/expert') for k in r)]
            load = f'{np.mean(loads):.2f}' if loads else 'n/a'
            lines.append(
                f'| {model} | ' + ' | '.join(
                    stat(f'mixture/{n}/AP50') for n in names)
                + f' | {stat("mixture/mean/AP50")} | {stat("mixture/mean/AP")}'
                f' | {stat("routing/mean/acc")} | {load} |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    # Seed-major order: an interrupted study has every model at the first
    # seed before any model at the second.
    jobs = [(s, m, seed) for s in args.settings for seed in args.seeds
            for m in args.models]
    for setting in args.settings:
        num_train = args.num_train or SETTINGS[setting]['num_train']
        generate_demo_mixture(Path(args.data_dir) / setting,
                              num_train=num_train, num_val=args.num_val)
    results = {s: {m: [] for m in args.models} for s in args.settings}
    with tqdm(jobs, desc='study runs', unit='run') as progress:
        for setting, model, seed in progress:
            results[setting][model].append(
                run(setting, model, seed, args, progress))
    out = Path(args.work_dir) / f'results{variant_suffix(args)}.json'
    # Settings studied by earlier invocations stay in the file.
    stored = json.loads(out.read_text()) if out.exists() else {}
    stored.update(results)
    out.write_text(json.dumps(stored, indent=2))
    print(f'\nResults ({len(args.seeds)} seeds, {args.max_iters} iterations, '
          f'±half the range over seeds): {out}')
    print(summarise(results))


if __name__ == '__main__':
    main()
