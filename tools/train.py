"""Run mmdet's own tools/train.py (same arguments) with this repository's configs.

`mim train mmdet CONFIG` does the same; this entry point also serves
`torchrun --nproc_per_node N tools/train.py CONFIG --launcher pytorch`, on GPUs
and, through a gloo process group, on CPU-only machines.
"""
from damex_mmdet.engine import run_mmdet_tool

if __name__ == '__main__':
    run_mmdet_tool('train')
