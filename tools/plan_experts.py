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
"""
import argparse
import json
import os.path as osp
import sys
from pathlib import Path

import numpy as np
from mmengine.config import Config, DictAction

from damex_mmdet.analysis.expert_planner import (
    DEFAULT_CAPACITY_FACTOR, ExpertPlanError, dataset_token_features,
    dissimilarity_from_features, dissimilarity_from_routing, mixture_sizes,
    plan_experts, planned_config_text, sampling_shares)


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
    parser.add_argument('--capacity-factor', type=float,
                        default=DEFAULT_CAPACITY_FACTOR,
                        help='an expert takes at most FACTOR / num_experts of '
                        'the training tokens')
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
    cfg = Config.fromfile(args.config)
    num_experts = args.num_experts or cfg.model.get('num_experts')
    if not num_experts:
        raise SystemExit(f'{args.config} sets no model.num_experts: pass '
                         '--num-experts.')
    sizes = ({name: int(n) for name, n in args.sizes.items()} if args.sizes
             else mixture_sizes(cfg))
    shares = sampling_shares(sizes, cfg.train_dataloader.get('sampler'))
    if args.routing_json:
        report = json.loads(Path(args.routing_json).read_text())
        source_names = list(report.get('datasets', []))
        dissimilarity = dissimilarity_from_routing(report)
    else:
        features_cfg = args.features_config or args.config
        stats = dataset_token_features(
            features_cfg, args.features_checkpoint,
            layers=cfg.model.get('moe_layers'), split=args.split,
            max_images=args.max_images, device=args.device)
        source_names = list(stats)
        dissimilarity = dissimilarity_from_features(stats)
    missing = [n for n in shares if n not in source_names]
    if missing:
        raise SystemExit(
            f'the similarity source has no data for datasets {missing} of '
            f'{args.config} (it has {source_names}): use a run whose '
            f'{args.split} mixture holds every training dataset.')
    order = [source_names.index(n) for n in shares]
    dissimilarity = dissimilarity[np.ix_(order, order)]
    try:
        plan = plan_experts(shares, dissimilarity, num_experts,
                            args.capacity_factor)
        split_plan = plan_experts(shares, dissimilarity, num_experts,
                                  args.capacity_factor, allow_split=True)
    except ExpertPlanError as error:
        raise SystemExit(str(error)) from error

    out.parent.mkdir(parents=True, exist_ok=True)
    base = osp.relpath(osp.abspath(args.config), osp.abspath(out.parent))
    out.write_text(planned_config_text(base, plan, num_experts,
                                       cfg.get('val_evaluator')))
    summary = dict(
        config=args.config, num_experts=num_experts,
        capacity_factor=args.capacity_factor, sizes=sizes, shares=shares,
        datasets=list(shares), dissimilarity=dissimilarity.round(6).tolist(),
        plan=vars(plan), split_plan=vars(split_plan))
    out.with_suffix('.json').write_text(json.dumps(summary, indent=2))
    print(format_plans(shares, plan, split_plan))
    print(f'\nwrote {out} and {out.with_suffix(".json")}')


def format_plans(shares, plan, split_plan) -> str:
    lines = [f'{"dataset":<14}{"share":>8}{"expert":>8}   split plan']
    for name, share in shares.items():
        lines.append(f'{name:<14}{share:>8.3f}{plan.dataset_to_experts[name][0]:>8}'
                     f'   {split_plan.dataset_to_experts[name]}')
    for label, p in (('one-expert', plan), ('split', split_plan)):
        lines.append(f'{label} plan: cost {p.cost:.4f} (LP bound '
                     f'{p.lower_bound:.4f}), expert loads '
                     + ' '.join(f'{load:.3f}' for load in p.expert_loads))
    if plan.oversized:
        lines.append(
            f'over the capacity {plan.capacity:.3f} of one expert (experts they '
            f'would need): {plan.oversized}; model.dataset_to_expert takes one '
            'expert per dataset, so the config gives each of them one.')
    return '\n'.join(lines)


if __name__ == '__main__':
    sys.exit(main())
