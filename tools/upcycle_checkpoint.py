"""Upcycle a dense DINO checkpoint into a DAMEX checkpoint.

Every expert of every MoE layer starts from the dense FFN at its place; gates
start fresh. Use the result as ``load_from`` of a DAMEX config:

    python tools/upcycle_checkpoint.py configs/damex_udb.py dino.pth \
        damex_init.pth
    python tools/upcycle_checkpoint.py configs/damex_paper_udb.py dino.pth \
        damex_init.pth --cfg-options model.moe_cfg.normalize_weights=True

With a shared expert (damex_udb.py) the shared expert starts as the dense FFN
and the routed experts' outputs at zero, exact whatever the routing weights;
without one (the paper's DAMEX) every expert starts as the dense FFN, and
top-1 needs the routing weight renormalised to 1.

CONFIG must be the config you train from the result: the tool refuses one
with which the upcycled model would not predict what the dense model predicts
(routing weights that do not sum to 1, e.g. top-1 with normalize_weights unset,
a capacity, other expert activations), naming the fix; ``--inexact`` accepts
such a start.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    parser.add_argument('config', help='the DAMEX config to upcycle into')
    parser.add_argument('dense_checkpoint', help='a DINO checkpoint')
    parser.add_argument('out', help='where to write the DAMEX checkpoint')
    parser.add_argument('--force', action='store_true',
                        help='overwrite OUT if it exists')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, as in mmdet tools')
    parser.add_argument('--inexact', action='store_true',
                        help='accept a config whose upcycled model does not '
                        'compute what the dense model computes')
    return parser.parse_args()


def main():
    args = parse_args()
    if osp.exists(args.out) and not args.force:
        raise SystemExit(f'{args.out} exists; pass --force to overwrite it.')
    # Imported after parsing, so that --help answers without loading torch.
    import torch
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    from damex_mmdet.models import DAMEX, upcycle_dense_state_dict
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    if not isinstance(model, DAMEX):
        raise SystemExit(f'{args.config} builds a {type(model).__name__}, '
                         f'not a DAMEX model: nothing to upcycle into.')
    model.init_weights()
    checkpoint = torch.load(args.dense_checkpoint, map_location='cpu')
    dense_state = checkpoint.get('state_dict', checkpoint)
    try:
        state = upcycle_dense_state_dict(model, dense_state,
                                         exact=not args.inexact)
    except ValueError as error:
        raise SystemExit(f'{args.config}: {error}') from error
    model.load_state_dict(state, strict=True)
    meta = dict(checkpoint.get('meta', {}),
                upcycled_from=args.dense_checkpoint)
    # Write next to the target and rename, so an interrupted run never
    # leaves a truncated checkpoint behind.
    tmp_path = f'{args.out}.tmp'
    torch.save(dict(state_dict=state, meta=meta), tmp_path)
    os.replace(tmp_path, args.out)
    print(f'wrote {args.out}: {len(list(model.named_moe_layers()))} MoE '
          f'layers upcycled with {model.num_experts} experts each')


if __name__ == '__main__':
    main()
