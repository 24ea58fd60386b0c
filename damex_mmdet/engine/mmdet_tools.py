"""Running mmdet's own command-line tools from this repository."""
import os.path as osp
import runpy

import mmdet

from .cpu_distributed import init_cpu_process_group


def run_mmdet_tool(name: str) -> None:
    """Run mmdet's ``tools/<name>.py`` as ``__main__`` with ``sys.argv``.

    The tool is the copy mmdet ships for ``mim``, so it behaves exactly as
    ``mim train|test mmdet``; a gloo process group is started first when a
    distributed launcher started this process on a CPU-only machine.
    """
    init_cpu_process_group()
    runpy.run_path(
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', f'{name}.py'),
        run_name='__main__')
