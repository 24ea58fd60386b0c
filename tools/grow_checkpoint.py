"""Grow a trained DAMEX checkpoint for a config that adds datasets.

The new config inherits the trained model's config, appends the new datasets
to the training mixture, raises ``model.num_experts`` and
``bbox_head.num_classes``, maps the new datasets in ``dataset_to_expert`` and
sets ``load_from`` to this tool's output (see configs/demo/grow_*.py):

    python tools/grow_checkpoint.py OLD_CONFIG OLD_CKPT NEW_CONFIG OUT

Old classes keep their indices and names; the classification branches and
the denoising label embedding gain rows for the new classes; each new expert
starts as a copy of the old expert that the new data's images (the new
config's val_dataloader, at most --max-images of them) route to most in
that layer, measured with the old model (or of --source-expert); the new
gate rows are fitted so that the new data's tokens reach the new experts
while the old datasets' measured tokens keep theirs (or --gate-init mean);
see damex_mmdet/models/grow.py for every initialisation. Every check runs
before anything is written, so a config that cannot grow stops here, not in
training. OUT's meta carries the new class names and the growth history.
From Python: damex_mmdet.models.grow_checkpoint(...).
"""
import argparse
import os.path as osp

# Only argparse and mmengine's light config module load before the arguments
# are parsed, so that --help answers at once; the package imports torch.
from mmengine.config import Config, DictAction


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('old_config', help='config of the trained model')
    parser.add_argument('old_checkpoint', help='its trained weights')
    parser.add_argument('new_config', help='the config that adds datasets')
    parser.add_argument('out', help='where to write the grown checkpoint')
    parser.add_argument('--source-expert', type=int, default=None,
                        help='start every new expert from this old expert '
                        'instead of measuring where the new data routes')
    parser.add_argument('--gate-init', choices=('fit', 'mean'), default='fit',
                        help='new gate rows: fitted to the old and new '
                        'datasets\' tokens, or the mean of the old rows '
                        '(default: %(default)s; see '
                        'damex_mmdet/models/grow.py)')
    parser.add_argument('--expert-init', choices=('copy', 'zero_output'),
                        default='copy',
                        help='new experts: a copy of the source expert, or '
                        'that copy with its output projection zeroed '
                        '(default: %(default)s)')
    parser.add_argument('--max-images', type=int, default=50,
                        help='new-data images for the routing measurement, '
                        'and as many of each old dataset for fitting the '
                        'gate rows (default: %(default)s)')
    parser.add_argument('--device', default=None,
                        help='torch device of the measurement (default: cuda '
                        'when available, else cpu)')
    parser.add_argument('--force', action='store_true',
                        help='overwrite OUT if it exists')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the new config')
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if osp.exists(args.out) and not args.force:
        raise SystemExit(f'{args.out} exists; pass --force to overwrite it.')
    from damex_mmdet.models import GrowError, format_growth, grow_checkpoint
    try:
        info = grow_checkpoint(args.old_config, args.old_checkpoint,
                               args.new_config, args.out, args.source_expert,
                               args.max_images, args.device,
                               args.cfg_options, args.gate_init,
                               args.expert_init)
    except GrowError as error:
        raise SystemExit(f'error: {error}')
    print(format_growth(info, args.out))
    new_cfg = Config.fromfile(args.new_config)
    # Relative paths count from the working folder, as training reads them.
    load_from = new_cfg.get('load_from')
    if load_from is None or osp.abspath(load_from) != osp.abspath(args.out):
        print(f'set load_from = {osp.abspath(args.out)!r} in '
              f'{args.new_config} (it has {load_from!r}), then train it.')


if __name__ == '__main__':
    main()
