"""The file guarantees of ``save_model``/``load_model`` (atomic writes, checked reads), shared by the application."""

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

__all__ = [
    "MODEL_FILES",
    "MODEL_MARK",
    "NAME_MAX",
    "check_creatable",
    "check_name_length",
    "content_sha256",
    "fsync_dir",
    "not_a_file",
    "parse_json",
    "probe_writable",
    "read_safetensors",
    "read_small_file",
    "remove_stale_tmp",
    "replace_file",
    "tensor_bytes",
    "tmp_owner",
    "write_error",
]

MODEL_MARK = "tensornet-model.json"  # save_model's mark: --overwrite replaces only folders that carry it
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", MODEL_MARK)  # what save_model writes
NAME_MAX = 255  # bytes in one file name: Linux's and macOS's file systems (ext4, xfs, btrfs, tmpfs, APFS)
_TMP = re.compile(r"\.(?P<name>.+)\.\w{8}\.tmp\d+")  # mkstemp's random part, the writer's pid
_STEM = 50  # characters of NAME kept in a temporary name (at most 200 bytes: the name stays under NAME_MAX)
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read, not changed: mkstemp's files are owner-only, the outputs get the umask's mode


def replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a new ``tempfile.mkstemp`` file ``.NAME.XXXXXXXX.tmpPID`` beside ``path``, then rename it.

    A link at ``path`` is replaced itself, never written through; on failure the temporary file is removed and
    an ``OSError`` (a full disk) names ``path``.
    """
    prefix, suffix = f".{path.name[:_STEM]}.", f".tmp{os.getpid()}"
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    tmp = Path(name)
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(err, OSError) and err.errno is not None:
            raise write_error(path, err) from None
        if isinstance(err, SafetensorError):  # a full disk inside safetensors' writer
            raise OSError(f"cannot write {str(path)!r} ({err})") from None
        raise
    fsync_dir(path.parent)


def remove_stale_tmp(folder: Path, names: Iterable[str] | re.Pattern[str], *, live: bool) -> list[Path]:
    """Remove the leftover temporary files in ``folder`` of ``names`` (or of names matching a pattern).

    Only those of processes that are gone, unless ``live`` (the caller holds the folder's lock).
    """
    owned = names.fullmatch if isinstance(names, re.Pattern) else {n[:_STEM] for n in names}.__contains__
    removed = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        owner = tmp_owner(entry.name)
        if owner is None or not owned(owner) or (entry.is_dir() and not entry.is_symlink()):
            continue
        if not live and not entry.is_symlink() and _alive(int(entry.name.rpartition(".tmp")[2])):
            continue
        with contextlib.suppress(OSError):
            entry.unlink()
            removed.append(entry)
    return removed


def tmp_owner(name: str) -> str | None:
    """The name (its first 50 characters) whose temporary file :func:`replace_file` named ``name``, else None."""
    match = _TMP.fullmatch(name)
    return None if match is None else match["name"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as err:
        return isinstance(err, PermissionError)  # someone else's live process
    return True


def check_name_length(path: Path, where: str) -> None:
    """Refuse a ``path`` with a name longer than the file system takes (``NAME_MAX``), before any work is done."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            message = f"{where}: {part[:40]!r}... has more than the {NAME_MAX} bytes a name may have"
            raise OSError(errno.ENAMETOOLONG, message)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the file system allows it."""
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_error(path: Path, err: OSError) -> OSError:
    """``err`` (a failed write of ``path``) as an error naming the file and saying what to do."""
    hint = ""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        hint = ": free some space or choose a folder on another disk"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = ": choose a writable folder"
    return type(err)(f"cannot write {str(path)!r} ({err.strerror or err}){hint}")


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with nesting too deep for the parser (a crafted file) raised as a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def read_small_file(path: Path, limit: int, where: str) -> bytes:
    """The bytes of ``path``, a regular file (a FIFO would never end) of at most ``limit`` bytes, else ValueError."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"{where}: {str(path)!r} is not a regular file; give a file")
            if st.st_size > limit:
                raise ValueError(f"{where}: {str(path)!r} is over the {limit:,} bytes allowed")
            return f.read(limit + 1)[:limit]
    except OSError as err:
        raise ValueError(f"{where}: cannot read {str(path)!r} ({err.strerror or err})") from None


def probe_writable(folder: Path, where: str) -> None:
    """Create and remove a file in ``folder``: a permission or read-only file system shows up now."""
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise PermissionError(
            f"{where}: cannot write in {str(folder)!r} ({err.strerror or err}); choose a writable folder"
        ) from None


def check_creatable(path: Path, where: str) -> None:
    """For a new ``path``: names within ``NAME_MAX`` and a writable nearest existing folder (nothing is created)."""
    check_name_length(path, where)
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link
            raise NotADirectoryError(f"{where}: {str(parent)!r} is a broken symbolic link")
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{where}: cannot create {str(path)!r}: {str(parent)!r} is a file")
    probe_writable(parent, where)


def not_a_file(path: Path) -> str | None:
    """What ``path`` is when it is not a readable regular file (following links), for messages; None if it is."""
    if path.is_symlink() and not path.exists():
        return f"is a broken symbolic link (to {os.readlink(path)!r})"
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a folder, not a file"
    return None if path.is_file() else "is not a regular file"


def tensor_bytes(t: Any) -> bytes | memoryview:
    """A torch tensor's own bytes (C order), not a copy."""
    import torch

    flat = t.contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data if flat.numel() else b""


def content_sha256(tensors: dict[str, Any], header: str | bytes = "") -> str:
    """SHA-256 over ``header`` and, in name order, every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(header.encode("utf-8") if isinstance(header, str) else header)
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        digest.update(tensor_bytes(t))
    return digest.hexdigest()


def read_safetensors(
    path: Path, unreadable: str, hint: str = "", *, shapes: bool = False
) -> tuple[dict, dict[str, Any]]:
    """The metadata and tensors (``shapes``: their shapes, from the header) of a safetensors file, else ValueError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            read = (lambda k: tuple(f.get_slice(k).get_shape())) if shapes else f.get_tensor
            return f.metadata() or {}, {k: read(k) for k in list(f.keys())}
    except Exception as err:  # safetensors raises its own error type for every malformed file
        raise ValueError(f"{unreadable} ({type(err).__name__}: {err}){hint}") from None
