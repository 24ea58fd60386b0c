"""Training FLOPs of detectors relative to the first one, counted, not estimated.

Each model is built from its config (plus optional overrides), its
parameters are counted (all that training holds, a training-only head
included), and it runs one training step (loss forward and backward, no
optimizer) on the same batch (bench_detector's: ``--size demo``, 8 images
at 128 px; ``--size uodb``, 2 images at 800 x 1333, the scale of the UODB
configs) under torch's ``FlopCounterMode``, which counts the matrix
multiplications and convolutions as they run. An MoE layer is therefore
charged for what its tokens did: with top-1 dropless routing each token runs
exactly one expert, whatever the gate chose. Ops without a FLOP formula in
torch (grid sampling in the deformable attention, element-wise ops) are not
counted; they are the same in every model compared here. Issue 13's rule:
a candidate must stay within 5% of dense DINO.

Usage:
    python benchmarks/training_flops.py \\
        --model configs/demo/dino_demo.py \\
        --model configs/demo/damex_paper_demo.py \\
        --model configs/demo/damex_paper_demo.py model.moe_cfg.shared_expert=True \\
            model.moe_cfg.shared_feedforward_channels=256 \\
            model.moe_cfg.expert_feedforward_channels=256
    python benchmarks/training_flops.py --size uodb \\
        --model configs/dino_udb.py --model configs/damex_udb.py
"""
import argparse
import sys
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from torch.utils.flop_counter import FlopCounterMode

import damex_mmdet  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detector import SIZES, make_batch  # noqa: E402

TOLERANCE = 0.05


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', nargs='+', action='append', required=True,
                        metavar=('CONFIG', 'KEY=VALUE'),
                        help='a config and its overrides; the first --model '
                        'is the reference')
    parser.add_argument('--size', choices=sorted(SIZES), default='demo',
                        help='the batch: demo (8 x 128 px) or uodb '
                        '(2 x 800 x 1333)')
    return parser.parse_args(argv)


def build(config: str, options) -> torch.nn.Module:
    cfg = Config.fromfile(config)
    if options:
        parser = argparse.ArgumentParser()
        parser.add_argument('options', nargs='+', action=DictAction)
        cfg.merge_from_dict(parser.parse_args(options).options)
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def training_flops(model: torch.nn.Module, size: str = 'demo') -> int:
    """FLOPs of one training forward and backward on bench_detector's
    ``size`` batch."""
    inputs, samples = make_batch(size, 'cpu')
    model.train()
    with FlopCounterMode(display=False) as counter:
        data = model.data_preprocessor(
            dict(inputs=list(inputs), data_samples=samples), True)
        losses = model.loss(data['inputs'], data['data_samples'])
        sum(v for k, v in losses.items() if 'loss' in k).backward()
    return counter.get_total_flops()


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for config, *options in args.model:
        model = build(config, options)
        parameters = sum(p.numel() for p in model.parameters())
        rows.append((' '.join([Path(config).name, *options]),
                     training_flops(model, args.size), parameters))
    reference = rows[0][1]
    print(f'| model | GFLOPs per training step | parameters | '
          f'ratio to the first | within {TOLERANCE:.0%} |\n|---|---|---|---|---|')
    for name, flops, parameters in rows:
        ratio = flops / reference
        print(f'| {name} | {flops / 1e9:.1f} | {parameters / 1e6:.2f}M | '
              f'{ratio:.3f} | {"yes" if abs(ratio - 1) <= TOLERANCE else "no"} |')


if __name__ == '__main__':
    main()
