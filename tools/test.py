"""Run mmdet's own tools/test.py (same arguments) with this repository's configs.

`mim test mmdet CONFIG` does the same; this entry point also serves
`torchrun --nproc_per_node N tools/test.py CONFIG --launcher pytorch`, on GPUs
and, through a gloo process group, on CPU-only machines.
"""
import os.path as osp
import runpy

import mmdet

from damex_mmdet.engine import init_cpu_process_group

if __name__ == '__main__':
    init_cpu_process_group()
    runpy.run_path(
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py'),
        run_name='__main__')
