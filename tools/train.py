"""Run mmdet's own tools/train.py (same arguments) with this repository's configs.

`mim train mmdet CONFIG` does the same; this entry point also serves
`torchrun ... tools/train.py CONFIG --launcher pytorch`.
"""
import os.path as osp
import runpy

import mmdet

if __name__ == '__main__':
    runpy.run_path(
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py'),
        run_name='__main__')
