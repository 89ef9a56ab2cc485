"""The file guarantees of ``save_model``/``load_model``, which the application shares: nothing the user owns is lost.

Temporary names ``.NAME.XXXXXXXX.tmpPID`` next to the target (:func:`tmp_path`), created new (never a planted
file or link) and renamed into place; leftovers of killed writers removed at the next start
(:func:`remove_stale_tmp`), a folder set aside by a killed ``save_model`` renamed back; checked reads
(:func:`read_small_file`, :func:`parse_json`, :func:`read_safetensors`) and the SHA-256 stored with the tensors
(:func:`content_sha256`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from secrets import token_hex
from typing import Any, BinaryIO

__all__ = [
    "MODEL_FILES",
    "MODEL_MARK",
    "NAME_MAX",
    "check_creatable",
    "check_name_length",
    "content_sha256",
    "fsync_dir",
    "make_tmp_dir",
    "new_tmp",
    "not_a_file",
    "parse_json",
    "plain_file",
    "probe_writable",
    "read_safetensors",
    "read_small_file",
    "remove_folder",
    "remove_stale_tmp",
    "restore_set_aside",
    "set_aside",
    "tensor_bytes",
    "tmp_path",
    "tmp_stem",
    "write_error",
    "write_new",
    "write_weights",
]

# --------------------------------------------------------------------------------------------- atomic writes
# ".NAME.XXXXXXXX.tmpPID" (or .oldPID): a random part, so no one can plant a file at the name ahead of time
_TMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}\.(?P<tag>tmp|old)(?P<pid>\d+)$")
NAME_MAX = 255  # bytes in one file name: Linux's and macOS's file systems (ext4, xfs, btrfs, tmpfs, APFS)
# the longest NAME kept whole in a temporary name: the limit less two dots, 8 hex digits, ".tmp", a 7-digit pid
_STEM_MAX = NAME_MAX - 21


def tmp_stem(name: str) -> str:
    """``name``, or when it is too long for a temporary name, its first bytes and a hash of all of it."""
    raw = os.fsencode(name)
    if len(raw) <= _STEM_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f"{os.fsdecode(raw[: _STEM_MAX - 17])}~{digest}"


def tmp_path(path: Path, tag: str = "tmp") -> Path:
    """A new temporary name ``.NAME.XXXXXXXX.tmpPID`` next to ``path`` (NAME: :func:`tmp_stem`); nothing is created."""
    # not tempfile.mkstemp: its files are owner-only whatever the umask; the pid tells a killed writer's leftover
    return path.with_name(f".{tmp_stem(path.name)}.{token_hex(4)}.{tag}{os.getpid()}")


def check_name_length(path: Path, where: str) -> None:
    """Refuse a ``path`` with a name longer than the file system takes, before any work is done."""
    for part in Path(path).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise OSError(
                errno.ENAMETOOLONG,
                f"{where}: the name {part[:40]!r}... in {str(path)[:80]!r} is {len(os.fsencode(part))} bytes, "
                f"more than the {NAME_MAX} a file system takes; choose a shorter name",
            )


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the file system allows it."""
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened and synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_folder(folder: Path) -> None:
    """Remove ``folder`` and the files in it (one of the package's own: checked by the caller)."""
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()


def plain_file(path: Path) -> bool:
    """A regular file, not a symbolic link (``Path.is_file`` follows links)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def new_tmp(path: Path, tag: str, make: Callable[[Path], Any]) -> tuple[Path, Any]:
    """``(tmp, make(tmp))`` at a new temporary name next to ``path``; another name while one is taken (planted)."""
    for _ in range(8):
        tmp = tmp_path(path, tag)
        with contextlib.suppress(FileExistsError):
            return tmp, make(tmp)
    raise FileExistsError(f"cannot create a temporary file next to {str(path)!r}: every name tried is taken")


def make_tmp_dir(path: Path, tag: str = "tmp") -> Path:
    """Create a new, empty temporary folder next to ``path`` (:func:`tmp_path`) and return it."""
    return new_tmp(path, tag, os.mkdir)[0]  # mkdir refuses an existing name, a symbolic link included


def set_aside(path: Path) -> Path:
    """Rename ``path`` to a new temporary name beside it (``.NAME.XXXXXXXX.oldPID``) and return that name."""

    def move(aside: Path) -> None:
        if os.path.lexists(aside):  # planted: never renamed over
            raise FileExistsError(aside)
        os.replace(path, aside)

    return new_tmp(path, "old", move)[0]


def write_error(path: Path, err: OSError) -> OSError:
    """``err`` (a failed write of ``path``) as an error naming the file and saying what to do."""
    hint = ""
    if err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        hint = ": free some space or choose a folder on another disk"
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = ": choose a writable folder"
    return type(err)(f"cannot write {str(path)!r} ({err.strerror or err}){hint}")


def write_new(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create ``path`` (``O_EXCL``: never a planted file or link), ``write(f)`` to it and flush it to disk."""
    with open(path, "xb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with nesting too deep for the parser (a crafted file) raised as a ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None


def read_small_file(path: Path, limit: int, where: str) -> bytes:
    """The bytes of ``path``, a regular file (a FIFO would never end) of at most ``limit`` bytes, else ValueError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ValueError(f"{where}: cannot read {str(path)!r} ({err.strerror or err})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{where}: {str(path)!r} is not a regular file; give a file")
        if st.st_size > limit:
            raise ValueError(
                f"{where}: {str(path)!r} is {st.st_size:,} bytes, more than the {limit:,} such a file may hold"
            )
        try:
            return f.read(limit + 1)[:limit]
        except OSError as err:
            raise ValueError(f"{where}: cannot read {str(path)!r} ({err.strerror or err})") from None


def _owners(names: Iterable[str] | re.Pattern[str]) -> Callable[[str], str | None]:
    """The NAME (of ``names``, or matching the pattern) whose temporary names have the stem given, or None."""
    if isinstance(names, re.Pattern):
        pattern = names
        return lambda stem: stem if pattern.fullmatch(stem) else None
    stems = {tmp_stem(n): n for n in names}
    return stems.get


def _holds_only(folder: Path, dir_files: set[str]) -> bool:
    """``folder`` holds nothing but regular files named in ``dir_files`` (and their own leftovers)."""
    stems = {tmp_stem(n) for n in dir_files}
    for p in folder.iterdir():
        match = _TMP.match(p.name)
        if not plain_file(p) or not (p.name in dir_files or (match is not None and match["name"] in stems)):
            return False
    return True


def remove_stale_tmp(
    folder: Path,
    names: Iterable[str] | re.Pattern[str],
    *,
    dir_files: Iterable[str] = (),
    live: bool,
) -> list[Path]:
    """Remove the leftover temporary files and folders in ``folder`` of ``names`` (or names matching a pattern).

    Only those of processes that are gone, unless ``live`` (the caller holds the folder's lock); a link is
    removed itself. A folder is touched only when it holds nothing but ``dir_files``; a set-aside ``.old``
    folder whose NAME is missing is renamed back to NAME (a killed ``save_model``).
    """
    owner = _owners(names)
    dir_files = set(dir_files)
    removed: list[Path] = []
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError:
        return removed
    for entry in entries:
        match = _TMP.match(entry.name)
        name = None if match is None else owner(match["name"])
        if match is None or name is None:
            continue
        try:
            link = stat.S_ISLNK(os.lstat(entry).st_mode)
        except OSError:
            continue
        pid = int(match["pid"])
        if not link and not live and (pid == os.getpid() or pid_alive(pid)):
            continue
        with contextlib.suppress(OSError):
            if link or not entry.is_dir():
                entry.unlink()
            elif not _holds_only(entry, dir_files):
                continue
            elif match["tag"] == "old" and not os.path.lexists(folder / name):
                os.replace(entry, folder / name)  # the folder a killed save_model had set aside
                fsync_dir(folder)
            else:
                remove_folder(entry)
            removed.append(entry)
    return removed


def restore_set_aside(path: Path, dir_files: Iterable[str]) -> bool:
    """Rename back the folder (holding only ``dir_files``) a killed ``save_model`` of a missing ``path`` set aside."""
    path = Path(path)
    if os.path.lexists(path) or not path.parent.is_dir():
        return False
    remove_stale_tmp(path.parent, [path.name], dir_files=dir_files, live=False)
    return path.is_dir()


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
        raise NotADirectoryError(
            f"{where}: cannot create {str(path)!r}: {str(parent)!r} is a file, not a folder"
        )
    probe_writable(parent, where)


def not_a_file(path: Path) -> str | None:
    """What ``path`` is when it is not a readable regular file (following links), for messages; None if it is."""
    if path.is_symlink() and not path.exists():
        return f"is a broken symbolic link (to {os.readlink(path)!r})"
    if not path.exists():
        return None if path.is_file() else "does not exist"
    if path.is_dir():
        return "is a folder, not a file"
    if not path.is_file():
        return "is not a regular file"
    return None


# ------------------------------------------------------------------------------ safetensors with checksum
def tensor_bytes(t: Any) -> bytes | memoryview:
    """A torch tensor's own bytes (C order), not a copy."""
    import torch

    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().data  # the tensor's own bytes, not a copy


def content_sha256(tensors: dict[str, Any], header: str = "") -> str:
    """SHA-256 over ``header`` and, in name order, every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(header.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        digest.update(tensor_bytes(t))
    return digest.hexdigest()


_DTYPE_CODES = {  # torch dtype name -> safetensors code
    **{f"float{n}": f"F{n}" for n in (16, 32, 64)},
    **{f"int{n}": f"I{n}" for n in (8, 16, 32, 64)},
    **{"bfloat16": "BF16", "uint8": "U8", "bool": "BOOL"},
}


def write_weights(f: BinaryIO, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Write torch ``tensors`` (float, int, bool) and ``metadata`` to the open file ``f`` as safetensors.

    Not ``safetensors.torch.save``: it writes the metadata keys in hash order (the same model, other bytes) and
    a full disk raises its ``SafetensorError``, not an ``OSError`` naming the file.
    """
    if sys.byteorder != "little":
        raise NotImplementedError("safetensors stores little-endian bytes; this host is big-endian")
    header: dict[str, Any] = {}
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        code = _DTYPE_CODES.get(str(t.dtype).removeprefix("torch."))
        if code is None:
            raise TypeError(f"{name} has dtype {t.dtype}, which tensornet does not store")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = dict(sorted(metadata.items()))
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    f.write(struct.pack("<Q", len(raw)) + raw)
    for name in sorted(tensors):
        f.write(tensor_bytes(tensors[name].detach().cpu()))


def read_safetensors(
    path: Path, unreadable: str, hint: str = "", *, shapes: bool = False
) -> tuple[dict, dict[str, Any]]:
    """The metadata and tensors (``shapes``: their shapes, from the header) of a safetensors file, else ValueError."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())  # safe_open is not a mapping
            read = (lambda k: tuple(f.get_slice(k).get_shape())) if shapes else f.get_tensor
            return f.metadata() or {}, {k: read(k) for k in names}
    except Exception as err:  # safetensors raises its own error type for every malformed file
        raise ValueError(f"{unreadable} ({type(err).__name__}: {err}){hint}") from None


MODEL_MARK = "tensornet-model.json"  # save_model's mark: --overwrite replaces only folders that carry it
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", MODEL_MARK)  # what save_model writes
