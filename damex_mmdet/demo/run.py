"""The ``make demo`` run: DAMEX end to end on the embedded mixture.

:func:`run_demo` generates the demo mixture, trains a demo config on it,
evaluates every dataset of the held-out test split with the gate routing by
itself and with the oracle routing by dataset, analyses the routing, draws
the predictions on each dataset's first test image, and writes ``report.md``
(with its heatmaps and ``predictions.png``) and ``report.json`` into the
work dir. Re-running reuses the mixture and a finished training. ``tools/run_demo.py`` is its command line.

Training does not validate: the evaluation right after it scores the final
checkpoint, with the same routing and metric, once.
"""
import copy
import json
import os.path as osp
import time
from pathlib import Path
from typing import List, Optional, Tuple

import mmcv
import numpy as np
from mmengine.config import Config
from mmengine.fileio import load
from mmengine.runner import Runner

from ..analysis import analyze_routing
from ..apis import infer
from .generator import generate_demo_mixture

# The targets of the demo on a 2-core CPU.
MAX_MINUTES = 10
MIN_MEAN_AP50 = 0.7


def demo_config(config: str, work_dir: str, data_root: str, seed: int,
                max_iters: Optional[int] = None) -> Config:
    """``config`` on the mixture at ``data_root``, writing into ``work_dir``;
    ``max_iters`` shortens training (smoke runs) and drops its schedule."""
    cfg = Config.fromfile(config)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for entry in cfg[loader].dataset.datasets:
            entry.data_root = osp.join(data_root, entry.name, '')
    if max_iters:
        cfg.train_cfg.max_iters = max_iters
        cfg.train_cfg.val_interval = max_iters
        cfg.default_hooks.checkpoint.interval = max_iters
        cfg.param_scheduler = []
    return cfg


def train_unless_trained(cfg: Config,
                         retrain: bool) -> Tuple[str, Optional[float]]:
    """Train unless the final checkpoint exists; return it and the time."""
    checkpoint = osp.join(cfg.work_dir, f'iter_{cfg.train_cfg.max_iters}.pth')
    if osp.isfile(checkpoint) and not retrain:
        print(f'Reusing {checkpoint} (pass --retrain, or retrain=True, to '
              'train again).')
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


def first_test_images(cfg: Config) -> List[str]:
    """The first image of each dataset of the test split."""
    images = []
    for entry in cfg.test_dataloader.dataset.datasets:
        coco = load(osp.join(entry.data_root, entry.ann_file))
        images.append(osp.join(entry.data_root, entry.img_prefix,
                               coco['images'][0]['file_name']))
    return images


def draw_predictions(cfg: Config, checkpoint: str, out_dir: str,
                     score_thr: float = 0.3) -> str:
    """Draw the detections on each dataset's first test image, side by side
    in ``out_dir/predictions.png`` (enlarged: the demo's images are small);
    return its path."""
    config = osp.join(out_dir, 'predictions', 'config.py')
    Path(config).parent.mkdir(parents=True, exist_ok=True)
    cfg.dump(config)
    predictions = infer(first_test_images(cfg), config, checkpoint,
                        osp.dirname(config), score_thr=score_thr,
                        progress=False)
    drawn = [mmcv.imrescale(mmcv.imread(p['vis']), 2.0) for p in predictions]
    height = max(image.shape[0] for image in drawn)
    gap = np.full((height, 8, 3), 255, np.uint8)
    row = []
    for image in drawn:
        padded = np.full((height, image.shape[1], 3), 255, np.uint8)
        padded[:image.shape[0]] = image
        row += [padded, gap]
    path = osp.join(out_dir, 'predictions.png')
    mmcv.imwrite(np.concatenate(row[:-1], axis=1), path)
    return path


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
        f'Config `{_shown_path(analysis["config"])}`, checkpoint '
        f'`{osp.basename(analysis["checkpoint"])}`, {analysis["num_images"]} '
        f'test images (held out), {analysis["num_experts"]} experts, routing loss '
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
    lines += ['', '## Predictions', '',
              'Each dataset\'s first test image, detections scoring at '
              'least 0.3 with their dataset-qualified class names:', '',
              '![predictions](predictions.png)']
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


def _shown_path(path: str) -> str:
    """``path`` relative to the working folder when it lies inside it (the
    checkout, for ``make demo``), else absolute."""
    relative = osp.relpath(path)
    return osp.abspath(path) if relative.startswith('..') else relative


def run_demo(config: str,
             work_dir: str = 'work_dirs/demo',
             data_root: str = 'data/demo_mixture',
             seed: int = 0,
             max_iters: Optional[int] = None,
             num_train: Optional[int] = None,
             num_test: Optional[int] = None,
             max_test_images: Optional[int] = None,
             retrain: bool = False) -> dict:
    """Generate, train, evaluate, analyse and report.

    Args:
        config: The demo config, e.g. ``configs/demo/damex_demo.py``.
        work_dir: Where the checkpoint, the routing analysis and the report
            go.
        data_root: Where the demo mixture is generated (or reused).
        seed: Seed of the mixture and of training.
        max_iters: Shorter training (smoke runs).
        num_train, num_test: Images per dataset (smoke runs; default: the
            generator's sizes).
        max_test_images: Evaluate on at most this many images of the
            held-out test split, taken in turn from each dataset (smoke
            runs).
        retrain: Train again even if the final checkpoint exists.

    Returns:
        dict: The headline numbers written to ``report.json``: mean AP50
        and AP, mean routing accuracy, minutes and per-step seconds.
    """
    timings = {}
    start = time.time()
    counts = {k: v for k, v in (('num_train', num_train),
                                ('num_test', num_test)) if v}
    generate_demo_mixture(data_root, seed=seed, **counts)
    timings['mixture'] = time.time() - start
    cfg = demo_config(config, work_dir, data_root, seed, max_iters)
    checkpoint, timings['training'] = train_unless_trained(cfg, retrain)
    start = time.time()
    analysis = analyze_routing(cfg, checkpoint, osp.join(work_dir, 'routing'),
                               split='test', max_images=max_test_images)
    draw_predictions(cfg, checkpoint, work_dir)
    timings['evaluation and routing analysis'] = time.time() - start
    headline = write_report(Path(work_dir) / 'report.md', analysis, timings)
    headline = dict(headline, timings=timings)
    (Path(work_dir) / 'report.json').write_text(json.dumps(headline, indent=2))
    return headline
