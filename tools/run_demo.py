"""The demo behind `make demo`: DAMEX end to end on the embedded mixture.

Generates the demo mixture (data/demo_mixture), trains configs/demo/damex_demo.py
on it, evaluates every dataset with the gate routing by itself and with the
oracle routing by dataset, analyses the routing, and writes
work_dirs/demo/report.md with its heatmaps. Re-running reuses the mixture and
a finished training.

Training does not validate: the evaluation right after it scores the final
checkpoint, with the same routing and metric, once. To check a setup in
about a minute::

    python tools/run_demo.py --max-iters 20 --max-val-images 40
"""
import argparse
import copy
import json
import os.path as osp
import time
from pathlib import Path

from mmengine.config import Config
from mmengine.runner import Runner

from damex_mmdet.analysis import analyze_routing
from damex_mmdet.demo import generate_demo_mixture

REPO_ROOT = Path(__file__).resolve().parents[1]
# The targets of the demo on a 2-core CPU.
MAX_MINUTES = 10
MIN_MEAN_AP50 = 0.7


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config',
                        default=str(REPO_ROOT / 'configs/demo/damex_demo.py'))
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/demo_mixture')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the mixture and of training')
    parser.add_argument('--max-iters', type=int,
                        help='override the training length (smoke tests)')
    parser.add_argument('--num-train', type=int,
                        help='training images per dataset (smoke tests)')
    parser.add_argument('--num-val', type=int,
                        help='val images per dataset (smoke tests)')
    parser.add_argument('--max-val-images', type=int,
                        help='evaluate on at most this many val images, taken '
                             'in turn from each dataset (smoke tests)')
    parser.add_argument('--retrain', action='store_true',
                        help='train again even if a checkpoint exists')
    return parser.parse_args(argv)


def demo_config(args) -> Config:
    cfg = Config.fromfile(args.config)
    cfg.work_dir = args.work_dir
    cfg.randomness = dict(seed=args.seed)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for entry in cfg[loader].dataset.datasets:
            entry.data_root = osp.join(args.data_root, entry.name, '')
    if args.max_iters:
        cfg.train_cfg.max_iters = args.max_iters
        cfg.train_cfg.val_interval = args.max_iters
        cfg.default_hooks.checkpoint.interval = args.max_iters
        cfg.param_scheduler = []
    return cfg


def train(cfg: Config, retrain: bool) -> tuple:
    """Train unless the final checkpoint exists; return it and the time."""
    checkpoint = osp.join(cfg.work_dir, f'iter_{cfg.train_cfg.max_iters}.pth')
    if osp.isfile(checkpoint) and not retrain:
        print(f'Reusing {checkpoint} (pass --retrain to train again).')
        return checkpoint, None
    start = time.time()
    Runner.from_cfg(without_validation(cfg)).train()
    return checkpoint, time.time() - start


def without_validation(cfg: Config) -> Config:
    """``cfg`` without its validation after training, which would score the
    checkpoint that the routing analysis evaluates right after."""
    cfg = copy.deepcopy(cfg)
    cfg.update(val_cfg=None, val_dataloader=None, val_evaluator=None)
    cfg.default_hooks.checkpoint.save_best = None
    return cfg


def write_report(path: Path, analysis: dict, timings: dict) -> dict:
    """Write report.md; return the headline numbers."""
    gate = analysis['protocols']['gate']
    oracle = analysis['protocols'].get('dataset')
    datasets = analysis['datasets']
    metrics = gate['metrics']
    mean_ap50 = metrics['mixture/mean/AP50']
    total_minutes = sum(v for v in timings.values() if v) / 60
    lines = [
        '# DAMEX demo report', '',
        f'Config `{osp.relpath(analysis["config"], REPO_ROOT)}`, checkpoint '
        f'`{osp.basename(analysis["checkpoint"])}`, {analysis["num_images"]} '
        f'val images, {analysis["num_experts"]} experts, routing loss '
        f'{analysis["routing_loss"]}.', '',
        '## Detection (COCO box AP per dataset, own label space)', '',
        'Routed by the gate (dataset unknown, as at test time); the last '
        'column routes each image to its dataset\'s expert (oracle).', '',
        '| dataset | AP | AP50 | AP75 | AP50 (oracle routing) |',
        '|---|---|---|---|---|']
    for name in datasets + ['mean']:
        oracle_ap50 = (f'{oracle["metrics"][f"mixture/{name}/AP50"]:.3f}'
                       if oracle else 'n/a')
        lines.append(
            f'| {name} | {metrics[f"mixture/{name}/AP"]:.3f} | '
            f'{metrics[f"mixture/{name}/AP50"]:.3f} | '
            f'{metrics[f"mixture/{name}/AP75"]:.3f} | {oracle_ap50} |')
    lines += ['', '## Routing', '',
              'Share of each dataset\'s tokens the gate sends to its mapped '
              'expert (all MoE layers), without dataset ids at test time:',
              '', '| dataset | expert | routing accuracy |', '|---|---|---|']
    for name in datasets:
        accuracy = (gate['accuracy'] or {}).get(name)
        expert = (analysis['dataset_to_expert'] or {}).get(name, '-')
        shown = f'{accuracy:.3f}' if accuracy is not None else 'n/a'
        lines.append(f'| {name} | {expert} | {shown} |')
    lines += [''] + [f'![{plot}]({osp.join("routing", plot)})'
                     for plot in gate['plots']]
    lines += ['', '## Targets', '',
              f'- mean AP50 {mean_ap50:.3f} (target >= {MIN_MEAN_AP50}): '
              f'{"met" if mean_ap50 >= MIN_MEAN_AP50 else "NOT met"}',
              f'- wall time {total_minutes:.1f} min for the steps run now '
              f'(target <= {MAX_MINUTES} min on 2 cores, install excluded): '
              + ', '.join(f'{k} {v:.0f} s' if v else f'{k} reused'
                          for k, v in timings.items())]
    path.write_text('\n'.join(lines) + '\n')
    return dict(mean_AP50=mean_ap50, mean_AP=metrics['mixture/mean/AP'],
                routing_mean_accuracy=gate['mean_accuracy'],
                minutes=total_minutes)


def main(argv=None):
    args = parse_args(argv)
    timings = {}
    start = time.time()
    counts = {k: v for k, v in (('num_train', args.num_train),
                                ('num_val', args.num_val)) if v}
    generate_demo_mixture(args.data_root, seed=args.seed, **counts)
    timings['mixture'] = time.time() - start
    cfg = demo_config(args)
    checkpoint, timings['training'] = train(cfg, args.retrain)
    start = time.time()
    analysis = analyze_routing(cfg, checkpoint,
                               osp.join(args.work_dir, 'routing'),
                               max_images=args.max_val_images)
    timings['evaluation and routing analysis'] = time.time() - start
    report = Path(args.work_dir) / 'report.md'
    headline = write_report(report, analysis, timings)
    (Path(args.work_dir) / 'report.json').write_text(
        json.dumps(dict(headline, timings=timings), indent=2))
    print(f'\nReport: {report}\n' + json.dumps(headline, indent=2))


if __name__ == '__main__':
    main()
