"""The demo behind `make demo`: DAMEX end to end on the embedded mixture.

Generates the demo mixture (data/demo_mixture), trains configs/demo/damex_demo.py
on it, evaluates every dataset with the gate routing by itself and with the
oracle routing by dataset, analyses the routing, and writes
work_dirs/demo/report.md with its heatmaps. Re-running reuses the mixture and
a finished training.

Training does not validate: the evaluation right after it scores the final
checkpoint, with the same routing and metric, once. To check a setup in
about a minute::

    python tools/run_demo.py --max-iters 20 --max-test-images 40

From Python: damex_mmdet.demo.run.run_demo(...).
"""
import argparse
import json
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


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
    parser.add_argument('--num-test', type=int,
                        help='held-out test images per dataset (smoke tests)')
    parser.add_argument('--max-test-images', type=int,
                        help='evaluate on at most this many test images, taken '
                             'in turn from each dataset (smoke tests)')
    parser.add_argument('--retrain', action='store_true',
                        help='train again even if a checkpoint exists')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.demo.run import run_demo
    headline = run_demo(args.config, args.work_dir, args.data_root, args.seed,
                        args.max_iters, args.num_train, args.num_test,
                        args.max_test_images, args.retrain)
    report = Path(args.work_dir) / 'report.md'
    print(f'\nReport: {report}\n' + json.dumps(headline, indent=2))


if __name__ == '__main__':
    main()
