"""How often a detector labels one dataset's objects with another dataset's
classes (label-block confusion over a mixture).

Reads the predictions mmdet's test tool dumps on a DatasetMixture val/test
set and prints, per dataset, the share of confident detections and of the
objects' best detections that carry a class of another dataset's block.
Near zero means the mixture's colliding class names cost the model nothing.
Example::

    python tools/test.py configs/demo/dino_demo.py work_dirs/dino_demo/iter_500.pth \\
        --out work_dirs/dino_demo/predictions.pkl
    python tools/analysis_tools/label_confusion.py work_dirs/dino_demo/predictions.pkl
"""
import argparse
import json
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('predictions', help='the .pkl of tools/test.py --out')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections counted as confident (default: %(default)s)')
    parser.add_argument('--iou-thr', type=float, default=0.5,
                        help="a detection overlapping an object this much is "
                        "that object's (default: %(default)s)")
    parser.add_argument('--out', default=None, help='also write the report as JSON')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # Imported after parsing, so that --help answers without loading torch.
    import mmengine

    from damex_mmdet.analysis import (LabelConfusionError, format_label_confusion,
                                      label_block_confusion)
    if not Path(args.predictions).is_file():
        raise SystemExit(f'error: {args.predictions} is not a file; '
                         'write it with tools/test.py CONFIG CHECKPOINT --out FILE.pkl')
    results = mmengine.load(args.predictions)
    if not isinstance(results, list):
        raise SystemExit(f'error: {args.predictions} holds a {type(results).__name__}, '
                         'not the list of predictions tools/test.py --out writes')
    try:
        report = label_block_confusion(results, args.score_thr, args.iou_thr)
    except LabelConfusionError as error:
        raise SystemExit(f'error: {error}')
    print(format_label_confusion(report, args.score_thr, args.iou_thr))
    if args.out:
        Path(args.out).write_text(json.dumps(dict(
            predictions=args.predictions, score_thr=args.score_thr,
            iou_thr=args.iou_thr, datasets=report), indent=2))


if __name__ == '__main__':
    main()
