"""The application's atomic writes (logs, figures, JSON, checkpoints) on the adapter's temporary files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..files import replace_file

__all__ = ["atomic_write", "write_json", "write_safetensors"]


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` to a new temporary file next to ``path``, flush it to disk, then rename it over ``path``.

    ``path`` is never half-written, and a symbolic link at ``path`` is replaced itself, never written through.
    An ``OSError`` (a full disk) names ``path``; the temporary file is removed.
    """

    def to(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    replace_file(Path(path), to)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    text = json.dumps(obj, indent=2) + "\n"
    atomic_write(Path(path), lambda f: f.write(text.encode("utf-8")))


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Atomically write ``tensors`` and ``metadata`` as a safetensors file."""
    from safetensors.torch import save_file

    replace_file(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))
