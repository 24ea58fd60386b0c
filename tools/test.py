"""Run mmdet's own tools/test.py (same arguments) with this repository's configs.

`mim test mmdet CONFIG` does the same; this entry point also serves
`torchrun --nproc_per_node N tools/test.py CONFIG --launcher pytorch`, on GPUs
and, through a gloo process group, on CPU-only machines.
"""
import argparse
import ast
import importlib.util
import os
import os.path as osp

from mmengine.config import DictAction


def parse_mmdet_tool_args(name: str) -> argparse.Namespace:
    """Run only the ``parse_args`` of mmdet's ``tools/<name>.py``.

    The tool imports torch and mmdet before it parses; running its parser
    alone first answers --help, and stops on a wrong argument, at once.
    """
    mmdet_dir = importlib.util.find_spec('mmdet').submodule_search_locations[0]
    path = osp.join(mmdet_dir, '.mim', 'tools', f'{name}.py')
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    parse = [node for node in tree.body
             if isinstance(node, ast.FunctionDef) and node.name == 'parse_args']
    namespace = dict(argparse=argparse, os=os, osp=osp, DictAction=DictAction)
    exec(compile(ast.Module(parse, type_ignores=[]), path, 'exec'), namespace)
    return namespace['parse_args']()


if __name__ == '__main__':
    parse_mmdet_tool_args('test')
    from damex_mmdet.engine import run_mmdet_tool
    run_mmdet_tool('test')
