"""The application's atomic writes (logs, figures, JSON, checkpoints) on the adapter's temporary names."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..files import fsync_dir, new_tmp, write_error, write_weights

__all__ = ["atomic_write", "write_json", "write_safetensors"]


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` to a new temporary file next to ``path``, flush it to disk, then rename it over ``path``.

    ``path`` is never half-written, and a symbolic link at ``path`` is replaced itself, never written through.
    An ``OSError`` (a full disk) names ``path``; the temporary file is removed. Not ``tempfile.mkstemp``: see
    :func:`tensornet.gpt2.files.tmp_path`.
    """
    path, tmp = Path(path), None
    try:
        tmp, f = new_tmp(path, "tmp", lambda p: open(p, "xb"))  # noqa: SIM115  (closed below)
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        if isinstance(err, OSError) and err.errno is not None:
            raise write_error(path, err) from None
        raise
    fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Atomically write ``tensors`` and ``metadata`` as a safetensors file."""
    atomic_write(Path(path), lambda f: write_weights(f, tensors, metadata))
