"""The application's atomic writes: a new temporary file beside the target, flushed, renamed over it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..files import fsync_dir, new_tmp, write_error, write_weights


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` to a new file beside ``path``, renamed over it (over a link, never through it)."""
    path, tmp = Path(path), None
    try:
        # not tempfile.mkstemp: its names are not those files.remove_stale_tmp clears after a kill
        tmp, f = new_tmp(path, "tmp", lambda p: open(p, "xb"))  # noqa: SIM115  (closed below)
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            raise write_error(path, err) from None
        raise
    fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode("utf-8")))


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Atomically write torch ``tensors`` and ``metadata`` as a safetensors file."""
    # not safetensors.torch.save(_file): it writes the metadata in hash order (same tensors, other bytes)
    atomic_write(Path(path), lambda f: write_weights(f, tensors, metadata))
