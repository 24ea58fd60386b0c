"""Detect objects in images with a checkpoint trained on a dataset mixture.

Boxes are labelled with the unified, dataset-qualified class names stored in
the checkpoint ('photo:car'). With --dataset only that dataset's classes
compete for the model's detections, as when the domain of the images is
known. The DAMEX gate routes by itself (no dataset id is needed). Writes one
drawn image per input under OUT_DIR/vis/ and OUT_DIR/predictions.json. Only
the config and the checkpoint are needed, not the training data. Example::

    python tools/infer.py demo/photos configs/demo/damex_demo.py \\
        work_dirs/damex_demo/iter_500.pth --out-dir infer_out --dataset photo

From Python: damex_mmdet.apis.infer(...), or damex_mmdet.apis.MixtureDetInferencer,
mmdet's DetInferencer with the dataset option.
"""
import argparse
import os.path as osp


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', help='an image or a folder of images')
    parser.add_argument('config', help='model config')
    parser.add_argument('checkpoint', help='trained weights')
    parser.add_argument('--out-dir', default='infer_out',
                        help='output folder (default: %(default)s)')
    parser.add_argument('--dataset', help="keep only this dataset's classes")
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='drawn and saved boxes score at least this (default: %(default)s)')
    parser.add_argument('--device', default=None,
                        help='torch device (default: cuda when available, else cpu)')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward')
    parser.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.apis import infer
    try:
        predictions = infer(args.inputs, args.config, args.checkpoint, args.out_dir,
                            dataset=args.dataset, score_thr=args.score_thr, device=args.device,
                            batch_size=args.batch_size, progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f'error: {error}')
    boxes = sum(len(p['instances']) for p in predictions)
    print(f'{len(predictions)} images, {boxes} boxes with score >= {args.score_thr}; '
          f'drawn images in {osp.join(args.out_dir, "vis")}, '
          f'predictions in {osp.join(args.out_dir, "predictions.json")}')


if __name__ == '__main__':
    main()
