"""Cost of DAMEX against DINO: training step, inference, peak memory, parameters.

Both detectors are built from the same config (DAMEX = the DINO config plus
its MoE layers) and measured side by side in one run, interleaved round by
round; each time is the median over the rounds. Sizes:

- demo: configs/demo/{dino,damex}_demo.py (ResNet-18, 128 px, batch 8);
- uodb: configs/{dino,damex}_udb.py (ResNet-50, 800x1333 px, 900 queries,
  batch 2, 167 classes; from scratch, no download).

Both DAMEX configs are the recommended ones, with a shared expert.

Peak memory is CUDA's max_memory_allocated on a GPU; on CPU each model is
measured in a fresh subprocess as the peak growth of the resident set during
one training step over the built model (sampled every millisecond). Parameters are also counted for the UODB
alternative the paper argues against: one DINO head per dataset.

Usage:
    python benchmarks/bench_detector.py [--sizes demo uodb] [--rounds 3]
        [--device cuda] [--threads 1 --cpu-time] [--json results.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

import damex_mmdet  # noqa: F401
from damex_mmdet.datasets.uodb_classes import UODB_CLASSES

REPO = Path(__file__).resolve().parents[1]
SIZES = {
    'demo': dict(configs=('configs/demo/dino_demo.py',
                          'configs/demo/damex_demo.py'),
                 image=(128, 128), batch=8),
    'uodb': dict(configs=('configs/dino_udb.py', 'configs/damex_udb.py'),
                 image=(800, 1333), batch=2),
}
TARGETS = dict(train=1.05, inference=1.03, memory=1.05)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', nargs='+', default=['demo', 'uodb'],
                        choices=sorted(SIZES))
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int)
    parser.add_argument('--cpu-time', action='store_true',
                        help='time process CPU time (CPU only)')
    parser.add_argument('--json', metavar='PATH',
                        help='also write the measurements and ratios here')
    parser.add_argument('--memory-probe', nargs=3,
                        metavar=('SIZE', 'MODEL', 'DEVICE'),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(size: str, which: int, device: str):
    init_default_scope('mmdet')
    cfg = Config.fromfile(str(REPO / SIZES[size]['configs'][which])).model
    cfg.backbone.init_cfg = None
    model = MODELS.build(cfg)
    model.init_weights()
    return model.to(device)


def make_batch(size: str, device: str, seed: int = 0):
    height, width = SIZES[size]['image']
    batch = SIZES[size]['batch']
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand(batch, 3, height, width, generator=generator) * 255
    samples = []
    for i in range(batch):
        sample = DetDataSample(metainfo=dict(
            img_shape=(height, width), ori_shape=(height, width),
            pad_shape=(height, width), batch_input_shape=(height, width),
            scale_factor=(1., 1.), img_path=f'bench_{i:02d}.png',
            dataset='coco' if size == 'uodb' else 'photo'))
        boxes = torch.rand(5, 2, generator=generator) * torch.tensor(
            [width / 2, height / 2])
        sample.gt_instances = InstanceData(
            bboxes=torch.cat([boxes, boxes + torch.tensor(
                [width / 4, height / 4])], dim=1),
            labels=torch.arange(5) % 3)
        samples.append(sample.to(device))
    return inputs.to(device), samples


def clock(cpu_time: bool):
    return time.process_time if cpu_time else time.perf_counter


def train_step(model, optimizer, inputs, samples):
    model.train()
    losses = model.loss(model.data_preprocessor(
        dict(inputs=list(inputs), data_samples=samples), True)['inputs'],
        samples)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()


def inference(model, inputs, samples):
    model.eval()
    with torch.no_grad():
        model.predict(model.data_preprocessor(
            dict(inputs=list(inputs), data_samples=samples),
            False)['inputs'], samples)


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def time_models(size, args):
    """Median times of DINO (0) and DAMEX (1), keyed by (kind, model).

    Training steps of both models alternate round by round, then inference
    passes do; timing each inference right after the same model's training
    step would charge it with that step's memory release.
    """
    models = [build(size, which, args.device) for which in (0, 1)]
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in models]
    inputs, samples = make_batch(size, args.device)
    now = clock(args.cpu_time)
    times = {}
    for kind in ('train', 'inference'):
        for round_ in range(args.rounds + 1):
            for i, (model, optimizer) in enumerate(zip(models, optimizers)):
                sync(args.device)
                start = now()
                if kind == 'train':
                    train_step(model, optimizer, inputs, samples)
                else:
                    inference(model, inputs, samples)
                sync(args.device)
                if round_:  # the first round warms up
                    times.setdefault((kind, i), []).append(now() - start)
    return {key: statistics.median(value) for key, value in times.items()}


class ResidentPeak:
    """Peak resident-set growth of this process while the block runs."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._running = True
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.growth = max(self.peak, self._rss()) - self.base

    @staticmethod
    def _rss():
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')

    def _poll(self):
        while self._running:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)


def memory_probe(size, which, device):
    """Peak memory of one training step, printed as JSON (subprocess)."""
    model = build(size, int(which), device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs, samples = make_batch(size, device)
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_step(model, optimizer, inputs, samples)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with ResidentPeak() as resident:
            train_step(model, optimizer, inputs, samples)
        peak = resident.growth
    print(json.dumps(dict(peak_bytes=peak)))


def measure_memory(size, args):
    peaks = []
    for which in (0, 1):
        result = subprocess.run(
            [sys.executable, __file__, '--memory-probe', size, str(which),
             args.device], capture_output=True, text=True, check=True)
        peaks.append(json.loads(result.stdout.strip().splitlines()[-1])
                     ['peak_bytes'])
    return peaks


def count_parameters(size):
    dino, damex = (build(size, which, 'cpu') for which in (0, 1))
    counts = dict(dino=sum(p.numel() for p in dino.parameters()),
                  damex=sum(p.numel() for p in damex.parameters()))
    if size == 'uodb':
        # One DINO head per dataset (its own classes), the rest shared.
        head_cfg = Config.fromfile(str(REPO / SIZES[size]['configs'][0]))
        shared = counts['dino'] - sum(
            p.numel() for p in dino.bbox_head.parameters())
        heads = 0
        for name, classes in UODB_CLASSES.items():
            if name == 'voc12':
                continue  # shares VOC07's head
            cfg = head_cfg.model.bbox_head.copy()
            cfg.update(num_classes=len(classes),
                       num_pred_layer=dino.bbox_head.num_pred_layer,
                       as_two_stage=True, share_pred_layer=False)
            heads += sum(p.numel() for p in MODELS.build(cfg).parameters())
        counts['dino_head_per_dataset'] = shared + heads
    return counts


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(*args.memory_probe)
        return
    summary, results = [], {}
    for size in args.sizes:
        timed = time_models(size, args)
        peaks = measure_memory(size, args)
        params = count_parameters(size)
        print(f'\n[{size}] device={args.device} rounds={args.rounds} '
              f'clock={"cpu" if args.cpu_time else "wall"}')
        for kind in ('train', 'inference'):
            print(f'  {kind:<9} DINO {timed[(kind, 0)] * 1e3:9.1f} ms   '
                  f'DAMEX {timed[(kind, 1)] * 1e3:9.1f} ms')
        print(f'  peak mem  DINO {peaks[0] / 2**20:9.1f} MiB  '
              f'DAMEX {peaks[1] / 2**20:9.1f} MiB')
        print('  params    ' + '  '.join(f'{k} {v / 1e6:.2f}M'
                                         for k, v in params.items()))
        summary.append((size, dict(
            train=timed[('train', 1)] / timed[('train', 0)],
            inference=timed[('inference', 1)] / timed[('inference', 0)],
            memory=peaks[1] / max(peaks[0], 1))))
        results[size] = dict(
            seconds={f'{kind}_{model}': timed[(kind, which)]
                     for kind in ('train', 'inference')
                     for which, model in enumerate(('dino', 'damex'))},
            peak_bytes=dict(dino=peaks[0], damex=peaks[1]),
            params=params, ratios=summary[-1][1])
    print('\nDAMEX / DINO ratios (targets: train <= 1.05x, inference <= '
          '1.03x, memory <= 1.05x):')
    for size, ratios in summary:
        print(f'  {size}: ' + '  '.join(
            f'{k} {v:.3f}x {"PASS" if v <= TARGETS[k] else "FAIL"}'
            for k, v in ratios.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(
            dict(device=args.device, rounds=args.rounds, targets=TARGETS,
                 sizes=results), indent=2))


if __name__ == '__main__':
    main()
