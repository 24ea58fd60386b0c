"""Run mmdet's own tools/test.py (same arguments) with this repository's configs.

`mim test mmdet CONFIG` does the same; this entry point also serves
`torchrun ... tools/test.py CONFIG --launcher pytorch`.
"""
import os.path as osp
import runpy

import mmdet

if __name__ == '__main__':
    runpy.run_path(
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'test.py'),
        run_name='__main__')
