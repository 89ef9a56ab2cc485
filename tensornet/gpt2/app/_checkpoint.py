"""The application's files: written atomically, read as data only (never code), each with its SHA-256.

Training checkpoints are ``torch.save`` archives read by ``torch.load(weights_only=True)``: tensors and plain
values only. Token files are safetensors.
"""

import hashlib
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import save_file

from ..files import content_sha256, not_a_file, read_safetensors, replace_file, tensor_bytes

CHECKPOINT_FORMAT = "tensornet-checkpoint"
CHECKPOINT_VERSION = 2
_TAG = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION}


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


def summary(err: BaseException) -> str:
    """``err`` on one line for a message: its type and the start of its text."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def payload_sha256(payload: Any) -> str:
    """SHA-256 over every value of ``payload``: containers' kinds and sizes, scalars, tensors' dtype, shape, bytes."""
    digest = hashlib.sha256()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            digest.update(f"T{obj.dtype}{tuple(obj.shape)}".encode())
            digest.update(tensor_bytes(obj.detach().cpu()))
        elif isinstance(obj, (dict, list, tuple)):
            digest.update(f"{type(obj).__name__}{len(obj)}".encode())
            for item in obj.items() if isinstance(obj, dict) else obj:
                visit(item)
        else:  # hex: an integer of any size, without str()'s digit limit
            digest.update(f"{type(obj).__name__}:{hex(obj) if isinstance(obj, int) else repr(obj)};".encode())

    visit(payload)
    return digest.hexdigest()


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` (dicts, lists, tuples of tensors, numbers, strings, None) atomically with its SHA-256."""
    record = {**_TAG, "sha256": payload_sha256(payload), "payload": payload}
    atomic_write(Path(path), lambda f: torch.save(record, f))


def load_checkpoint(path: Path, where: str = "load_checkpoint", *, verify: bool = True) -> dict:
    """The payload of a :func:`save_checkpoint` file, its format, version and checksum checked.

    ``verify=False`` skips the checksum and maps the file instead of reading it (the checks before a run).
    Every problem is a ValueError naming the file.
    """
    path = Path(path)
    what = not_a_file(path)
    if what is not None:
        raise ValueError(f"{where}: the checkpoint {str(path)!r} {what}; restore the file or start a new run")
    try:  # torch.save stores records uncompressed; a deflated one could inflate past any size
        if _compressed(path):
            raise ValueError("it holds compressed records, which torch.save never writes")
        record = torch.load(str(path), map_location="cpu", weights_only=True, mmap=not verify)
        ours = isinstance(record, dict) and {key: record.get(key) for key in _TAG} == _TAG
        same = ours and (not verify or payload_sha256(record["payload"]) == record.get("sha256"))
    except Exception as err:  # torch raises several types for a file that is no torch archive
        why = summary(err)
        if isinstance(err, pickle.UnpicklingError):  # torch's message suggests weights_only=False
            why = "it holds objects other than tensors and plain values, which are never unpickled"
        raise ValueError(
            f"{where}: {str(path)!r} is not a readable checkpoint ({why}); it is truncated, damaged or not "
            "tensornet's: restore it or start a new run"
        ) from None
    if not ours:
        raise ValueError(
            f"{where}: {str(path)!r} is not a tensornet checkpoint of format version {CHECKPOINT_VERSION}; "
            "point --out at the run folder that wrote it, or resume it with the tensornet that wrote it"
        )
    if not same:
        raise ValueError(
            f"{where}: {str(path)!r} fails its checksum: the file was damaged after it was written; "
            "nothing was resumed. Restore it from a copy or start a new run"
        )
    return record["payload"]


def _compressed(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return False  # not a zip archive: torch.load says what it is


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Atomically write ``tensors`` as safetensors with their SHA-256 (and ``metadata``) in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {**(metadata or {}), "sha256": content_sha256(tensors)}
    replace_file(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_token_file(path: Path, vocab_size: int | None, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` int64 token ids from a safetensors token file, checked; ValueError naming the file.

    Two non-empty 1-D integer tensors, ids in ``[0, vocab_size)``, their checksum matching.
    """
    metadata, tensors = read_safetensors(path, f"{where}: {str(path)!r} is not a readable token file")
    if set(tensors) != {"train", "val"} or metadata.get("sha256") != content_sha256(tensors):
        raise ValueError(f"{where}: {str(path)!r} fails its checksum or holds more than train and val")
    for name, t in tensors.items():
        ok = t.dim() == 1 and t.dtype in (torch.int32, torch.int64) and t.numel() > 0 and int(t.min()) >= 0
        if not ok or (vocab_size is not None and int(t.max()) >= vocab_size):
            raise ValueError(f"{where}: {name} in {str(path)!r} is not 1-D token ids in [0, {vocab_size})")
    return tensors["train"].long(), tensors["val"].long()
