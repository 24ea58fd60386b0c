"""Measure and plot how a DAMEX checkpoint routes each dataset's tokens.

Runs the model over the val (or test) mixture of its config twice: routed by
the learned gate (dataset unknown, as at test time) and routed by dataset
(the oracle; only for models with dataset_to_expert). Writes routing.json and
one dataset x expert heatmap per MoE layer plus an expert-load chart per
protocol. Example::

    python tools/analysis_tools/analyze_routing.py configs/demo/damex_demo.py \\
        work_dirs/damex_demo/iter_500.pth --out-dir work_dirs/damex_demo/routing
"""
import argparse

from mmengine.config import Config, DictAction


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config of a DAMEX (or vanilla MoE) model')
    parser.add_argument('checkpoint', help='trained weights')
    parser.add_argument('--out-dir', default='routing_analysis',
                        help='folder for routing.json and the PNGs (default: %(default)s)')
    parser.add_argument('--split', choices=('val', 'test'), default='val',
                        help='which dataloader of the config (default: %(default)s)')
    parser.add_argument('--max-images', type=int, default=None,
                        help='analyse at most N images, taken in turn from each dataset')
    parser.add_argument('--device', default=None,
                        help='torch device (default: cuda when available, else cpu)')
    parser.add_argument('--no-eval', action='store_true',
                        help="skip the config's evaluator (detection AP per protocol)")
    parser.add_argument('--no-progress', action='store_true', help='hide progress bars')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. val_dataloader.batch_size=2')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.max_images is not None and args.max_images < 1:
        raise SystemExit('error: --max-images must be >= 1')
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.analysis import (RoutingAnalysisError, analyze_routing,
                                      format_routing_table)
    try:
        cfg = Config.fromfile(args.config)
    except FileNotFoundError as error:
        raise SystemExit(f'error: {error}')
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    try:
        report = analyze_routing(
            cfg, args.checkpoint, args.out_dir, split=args.split,
            max_images=args.max_images, device=args.device,
            evaluate=not args.no_eval, progress=not args.no_progress)
    except (FileNotFoundError, RoutingAnalysisError) as error:
        raise SystemExit(f'error: {error}')
    print(format_routing_table(report))
    files = ['routing.json'] + [p for r in report['protocols'].values() for p in r['plots']]
    print(f'\nwrote {", ".join(files)} to {args.out_dir}')


if __name__ == '__main__':
    main()
