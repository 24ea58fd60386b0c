"""Generate the embedded demo mixture (small synthetic COCO datasets) and summarise it.

Examples::

    python tools/generate_demo_mixture.py --out data/demo_mixture --seed 0
    python tools/generate_demo_mixture.py --out data/demo8 --datasets photo sketch aerial \
        scan thermal comic microscopy underwater

Re-running with the same arguments reuses the files already there.
"""
import argparse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/demo_mixture', help='output directory')
    parser.add_argument('--seed', type=int, default=0, help='generation seed (>= 0)')
    parser.add_argument('--num-train', type=int, default=None,
                        help='training images per dataset (default: per-dataset sizes)')
    parser.add_argument('--num-val', type=int, default=None,
                        help='validation images per dataset (default: per-dataset sizes)')
    parser.add_argument('--num-test', type=int, default=None,
                        help='test images per dataset (default: per-dataset sizes)')
    parser.add_argument('--datasets', nargs='+', metavar='NAME', default=None,
                        help='the datasets to write, in this order, from the default four '
                        '(photo sketch aerial scan) and the extra four (thermal comic '
                        'microscopy underwater); default: the default four')
    parser.add_argument('--no-progress', action='store_true', help='hide progress bars')
    return parser.parse_args(argv)


def format_summary(description: dict) -> str:
    """A plain-text table: one row per dataset, then where its files are."""
    header = ('dataset', 'size (HxW)', 'train img/obj', 'val img/obj', 'test img/obj', 'classes')
    rows = [header]
    for name, entry in description.items():
        height, width = entry['image_size']
        rows.append((name, f'{height}x{width}',
                     f"{entry['train']['num_images']}/{entry['train']['num_objects']}",
                     f"{entry['val']['num_images']}/{entry['val']['num_objects']}",
                     f"{entry['test']['num_images']}/{entry['test']['num_objects']}",
                     ', '.join(entry['classes'])))
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    lines.insert(1, '  '.join('-' * width for width in widths))
    lines.append('')
    for name, entry in description.items():
        lines.append(f"{name}: data_root={entry['data_root']}  "
                     f"ann_file=annotations/{{train,val,test}}.json  "
                     f"img=images/{{train,val,test}}/")
    return '\n'.join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    # Imported after parsing, so that --help answers without loading torch.
    from damex_mmdet.demo import generate_demo_mixture
    try:
        description = generate_demo_mixture(args.out, seed=args.seed, num_train=args.num_train,
                                             num_val=args.num_val, num_test=args.num_test,
                                             progress=not args.no_progress,
                                             datasets=args.datasets)
    except ValueError as error:  # a name, count or seed the generator rejects
        raise SystemExit(f'error: {error}')
    print(format_summary(description))


if __name__ == '__main__':
    main()
