"""Plan a DAMEX config's dataset -> expert map from dataset sizes and similarity.

Writes a config that inherits CONFIG and sets ``model.num_experts``,
``model.dataset_to_expert`` and ``model.spare_experts`` (experts the plan
leaves unused; RoutingMetric reads the model's map), plus OUT.json with the
shares, the dissimilarity matrix and both plans: the one-expert map the config
uses, and the split plan (a large dataset spanning several experts) for
reference. See damex_mmdet/analysis/expert_planner.py for the program solved.

Similarity sources (one):
  --features-config C --features-checkpoint CKPT   mean tokens entering the
      MoE layers' FFNs of a short dense DINO (or MoE) run of config C
  --routing-json routing.json   expert histograms of a vanilla MoE
      (tools/analysis_tools/analyze_routing.py)

    python tools/plan_experts.py configs/damex_udb.py \\
        --features-config configs/dino_udb.py \\
        --features-checkpoint work_dirs/dino_udb/iter_5000.pth \\
        --max-images 1200 --out configs/damex_udb_planned.py

From Python: damex_mmdet.analysis.plan_config_experts(...).
"""
import argparse
import sys
from pathlib import Path

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the DAMEX config to plan the map of')
    parser.add_argument('--out', required=True,
                        help='the planned config to write (OUT.json next to it)')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--features-checkpoint',
                        help='weights of --features-config (default: CONFIG)')
    source.add_argument('--routing-json',
                        help='routing.json of a vanilla MoE checkpoint')
    parser.add_argument('--features-config',
                        help='config of --features-checkpoint (default: CONFIG)')
    parser.add_argument('--split', default='val', choices=['val', 'test'],
                        help='dataloader whose images give the features')
    parser.add_argument('--max-images', type=int, default=None,
                        help='at most this many images for the features, '
                        'taken in turn from each dataset')
    parser.add_argument('--device', default=None)
    parser.add_argument('--num-experts', type=int, default=None,
                        help="default: CONFIG's model.num_experts")
    parser.add_argument('--capacity-factor', type=float, default=1.5,
                        help='an expert takes at most FACTOR / num_experts of '
                        'the training tokens (default: %(default)s)')
    parser.add_argument('--sizes', nargs='+', action=DictAction, default=None,
                        metavar='NAME=IMAGES',
                        help='training images per dataset, instead of reading '
                        "CONFIG's train annotations")
    parser.add_argument('--force', action='store_true',
                        help='overwrite OUT if it exists')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f'{out} exists; pass --force to overwrite it.')
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.analysis import (ExpertPlanError, format_expert_plans,
                                      plan_config_experts)
    try:
        summary = plan_config_experts(
            args.config, args.out, features_checkpoint=args.features_checkpoint,
            routing_json=args.routing_json, features_config=args.features_config,
            split=args.split, max_images=args.max_images, device=args.device,
            num_experts=args.num_experts, capacity_factor=args.capacity_factor,
            sizes=args.sizes)
    except ExpertPlanError as error:
        raise SystemExit(str(error)) from error
    print(format_expert_plans(summary))
    print(f'\nwrote {out} and {out.with_suffix(".json")}')


if __name__ == '__main__':
    sys.exit(main())
