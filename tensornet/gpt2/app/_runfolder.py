"""Run folders: the output folder of a ``train`` or ``compare`` run, the package's own and one run at a time.

``tensornet-run.json`` marks a folder as the package's own and lists the files it may write there; a lock file
(``filelock``) keeps a second run out while the first is alive, and the run removes it when it ends (only the
file it locked). No torch here.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import cast

from .. import files as _files
from ._files import write_json

MANIFEST = "tensornet-run.json"
LOCK = ".tensornet-run.lock"
RUN_FORMAT = "tensornet-run"
OUTPUTS = {
    "train": ("checkpoint.pt", "log.jsonl", *(f"model/{f}" for f in _files.MODEL_FILES)),
    "compare": ("results.json", "loss_curves.png", "loss_curves.svg", "tokens.safetensors"),
}


def read_manifest(path: Path) -> dict | None:
    """The folder's manifest, or None when it has none; a malformed one raises ValueError."""
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = _files.parse_json(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise ValueError(f"{err}") from None
    if not (
        isinstance(manifest, dict)
        and manifest.get("format") == RUN_FORMAT
        and manifest.get("kind") in OUTPUTS
        and isinstance(manifest.get("files"), list)
    ):
        raise ValueError("not a tensornet run manifest")
    return manifest


class RunFolder:
    """A run's output folder, held for the whole run.

    It is created if needed, checked to be the package's own, locked against a second run, cleaned of leftover
    temporary files and marked by ``tensornet-run.json``. Opened once, by the caller (the CLI, before loading
    data), and handed to ``train``.
    """

    def __init__(self, path: Path, kind: str, lock: _Lock, created: list[Path] | None = None) -> None:
        self.path, self.kind, self._lock = path, kind, lock
        # the folders this run created (deepest first) when it found none there, [] when it found the
        # folder empty, else None: a run that writes nothing leaves the folder as it found it
        self._created = created

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        kind: str,
        resume: bool = False,
        overwrite: bool = False,
        where: str = "--out",
    ) -> RunFolder:
        path = Path(path)
        check_run_folder(path, kind=kind, resume=resume, overwrite=overwrite, where=where)
        created = [p for p in (path, *path.parents) if not p.exists()] or None
        if created is None and not any(p.name != LOCK for p in path.iterdir()):
            created = []  # an empty folder: kept, emptied again
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise type(err)(
                f"{where}: cannot create the folder {str(path)!r} ({err.strerror or err}); choose another --out"
            ) from None
        _files.probe_writable(path, where)
        lock = _Lock(path, where)
        folder = cls(path, kind, lock, created)
        try:
            # again, now that no other run can change the folder between the check and the writes
            check_run_folder(path, kind=kind, resume=resume, overwrite=overwrite, where=where)
            _files.remove_stale_tmp(path, [*(n for n in OUTPUTS[kind] if "/" not in n), MANIFEST], live=True)
            if (path / "model").is_dir():
                _files.remove_stale_tmp(path / "model", _files.MODEL_FILES, live=True)
            if overwrite:
                folder.remove_outputs()
            write_json(
                path / MANIFEST,
                {"format": RUN_FORMAT, "version": 1, "kind": kind, "files": [MANIFEST, LOCK, *OUTPUTS[kind]]},
            )
        except BaseException:
            lock.release()
            raise
        return folder

    def remove_outputs(self) -> list[str]:
        """Delete the outputs of this kind of run that the manifest lists; nothing else, never through a link."""
        try:
            listed = set((read_manifest(self.path) or {}).get("files", []))
        except ValueError:
            listed = set()
        removed = []
        for name in (n for n in OUTPUTS[self.kind] if n in listed):
            file = self.path / name
            if file.is_file() and not file.is_symlink():
                file.unlink()
                removed.append(name)
        with contextlib.suppress(OSError):
            if (self.path / "model").is_dir() and self.kind == "train":
                (self.path / "model").rmdir()  # only when empty
        return removed

    def close(self) -> None:
        unused = self._created is not None and self._holds_only_marks()
        if unused:  # removed while the lock is held
            with contextlib.suppress(OSError):
                (self.path / MANIFEST).unlink()
        self._lock.release()
        for folder in (self._created or []) if unused else []:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty

    def _holds_only_marks(self) -> bool:
        """The folder holds nothing but this package's manifest and lock (the run wrote no output)."""
        try:
            return all(p.name in (MANIFEST, LOCK) and p.is_file() for p in self.path.iterdir())
        except OSError:
            return False

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lock:
    """The folder's lock: ``filelock`` (``flock`` on POSIX, ``msvcrt`` on Windows; gone with its process).

    The holder's pid is in the file, for the message a second run gets; the file is removed when the run ends
    (only the file this run locked, not one put at the name since).
    """

    def __init__(self, path: Path, where: str) -> None:
        from filelock import FileLock, Timeout

        self.file, self.held = path / LOCK, cast("os.stat_result | None", None)
        if self.file.is_symlink():  # filelock opens it O_NOFOLLOW too; this says what to do
            raise FileExistsError(
                f"{where}: {str(self.file)!r} is a symbolic link, not tensornet's lock file; remove it"
            )
        self.lock = FileLock(self.file, blocking=False, on_acquired=self._acquired)
        try:
            self.lock.acquire()
        except Timeout:
            owner = _read_pid(self.file)
            raise BlockingIOError(
                f"{where}: another run (pid {owner or '?'}) is using {str(path)!r}; wait for it to finish or "
                "choose another folder"
            ) from None
        except OSError as err:
            raise PermissionError(
                f"{where}: cannot write in {str(path)!r} ({err.strerror or err}); choose a writable folder"
            ) from None

    def _acquired(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.held = os.fstat(fd)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            if self.held is not None and os.path.samestat(os.lstat(self.file), self.held):
                self.file.unlink()  # while still locked: the next run creates a new one
        self.lock.release()


def _read_pid(file: Path) -> str:
    with contextlib.suppress(OSError, ValueError):  # (a regular file of a few bytes, else no pid to say)
        return _files.read_small_file(file, 32, "lock").decode("ascii", "replace").strip()
    return ""


def _check_model_folder(model: Path, where: str) -> None:
    """A train run's ``model/``, which the finished run replaces: nothing in it but what save_model writes."""
    if not (model.exists() or model.is_symlink()):
        return
    if model.is_symlink() or not model.is_dir():
        foreign = [model.name]
    else:
        foreign = [
            p.name
            for p in model.iterdir()
            if (p.name not in _files.MODEL_FILES or not p.is_file() or p.is_symlink())
            and _files.tmp_owner(p.name) not in _files.MODEL_FILES  # a killed save_model's, removed by it
        ]
    if foreign:
        raise FileExistsError(
            f"{where}: {str(model)!r} holds files train does not write ({', '.join(sorted(foreign)[:5])}); "
            "the run would replace that folder when it finishes: move them elsewhere first"
        )


def check_run_folder(
    path: Path, *, kind: str, resume: bool = False, overwrite: bool = False, where: str = "--out"
) -> None:
    """Refuse, with a message, an output folder the run may not use (nothing is created or changed)."""
    path = Path(path)
    _files.check_name_length(path, where)
    if resume and overwrite:
        raise ValueError(
            f"{where}: --resume continues the run in the folder and --overwrite replaces it; give one"
        )
    if path.is_symlink() and not path.exists():
        raise NotADirectoryError(f"{where}: {str(path)!r} is a broken symbolic link")
    if not path.exists():
        _files.check_creatable(path, where)
        return
    if not path.is_dir():
        raise FileExistsError(f"{where}: {str(path)!r} is a file, not a folder; choose a folder path")
    try:
        entries = sorted(p.name for p in path.iterdir() if p.name != LOCK)  # the lock alone: still empty
    except OSError as err:
        raise PermissionError(
            f"{where}: cannot read the folder {str(path)!r} ({err.strerror or err})"
        ) from None
    if not entries:
        _files.probe_writable(path, where)
        return
    try:
        manifest = read_manifest(path)
    except ValueError as err:
        raise FileExistsError(
            f"{where}: {str(path)!r} has an unreadable {MANIFEST} ({err}); nothing in it is touched: "
            "choose a new or empty folder"
        ) from None
    if manifest is None:
        raise FileExistsError(
            f"{where}: {str(path)!r} is not empty and is not a tensornet run folder (no {MANIFEST}); "
            "nothing in it is overwritten: choose a new or empty folder"
        )
    if manifest["kind"] != kind:
        raise FileExistsError(
            f"{where}: {str(path)!r} holds a {manifest['kind']} run, not a {kind} run; choose another folder"
        )
    if kind == "train":
        _check_model_folder(path / "model", where)
    used = [n for n in OUTPUTS[kind] if (path / n).exists()]
    if kind == "train" and used == ["log.jsonl"]:
        # a run stopped before its first checkpoint: nothing to resume, and the log is rewritten when the same
        # command starts it over (what the interrupted run said to do)
        used = []
    if used and not resume and not overwrite:
        hint = "--resume to continue it or --overwrite" if kind == "train" else "--overwrite"
        raise FileExistsError(
            f"{where}: {str(path)!r} holds a previous {kind} run ({', '.join(used)}); pass {hint} to replace "
            "its files (other files are kept), or choose another folder"
        )
    _files.probe_writable(path, where)
