"""A local file backend whose writes are atomic."""
import os
import tempfile
from pathlib import Path
from typing import Union

from mmengine.fileio import LocalBackend, register_backend


class AtomicLocalBackend(LocalBackend):
    """mmengine's local backend, writing through a temporary file.

    mmengine saves a checkpoint by opening the target for writing and
    writing into it; a crash or a full disk midway leaves a truncated
    ``latest`` checkpoint that ``--resume`` then fails on. Here the bytes go
    to a temporary file in the same folder, are flushed to disk, and
    replace the target in one rename, so the target is either the old file
    or the complete new one. Select it with
    ``default_hooks.checkpoint.backend_args=dict(backend='atomic_local')``.
    """

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        target = Path(filepath)
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, tmp_path = tempfile.mkstemp(
            dir=target.parent, prefix=f'.{target.name}.', suffix='.tmp')
        try:
            with os.fdopen(descriptor, 'wb') as f:
                f.write(obj)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, target)
        except BaseException:
            os.unlink(tmp_path)
            raise

    def put_text(self, obj: str, filepath: Union[str, Path],
                 encoding: str = 'utf-8') -> None:
        self.put(obj.encode(encoding), filepath)


register_backend('atomic_local', AtomicLocalBackend)
