"""Run folders: ``tensornet-run.json`` marks the package's own, a ``filelock`` lock keeps a second run out."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from filelock import FileLock, Timeout

import tensornet.gpt2 as gpt2

from .. import files as _files
from ._checkpoint import summary, write_json

MANIFEST = "tensornet-run.json"
LOCK = ".tensornet-run.lock"
OUTPUTS = {
    "train": ("checkpoint.pt", "log.jsonl", *(f"model/{f}" for f in _files.MODEL_FILES)),
    "compare": ("results.json", "loss_curves.png", "loss_curves.svg"),
}


def read_manifest(path: Path) -> dict | None:
    """The manifest of the folder ``path``, None when it has none; ValueError naming it for a foreign one."""
    if not (file := path / MANIFEST).is_file():
        return None
    try:
        manifest = _files.parse_json(file.read_text(encoding="utf-8"))
        if manifest["format"] == "tensornet-run" and manifest["kind"] in OUTPUTS:
            return manifest
        raise ValueError(f"format {manifest['format']!r}, kind {manifest['kind']!r}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{str(file)!r} is not a tensornet run manifest ({summary(err)})") from None


def check_run_folder(path: Path, *, kind: str, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse (OSError, ValueError) an output folder a ``kind`` run may not use; nothing is changed."""
    if resume and overwrite:
        raise ValueError("--out: give --resume (continue the run) or --overwrite (replace it), not both")
    if not os.path.lexists(path):
        return _files.check_creatable(path, "--out")
    if not path.is_dir():
        raise FileExistsError(f"--out: {str(path)!r} is a file or a broken link; choose a folder")
    if any(p.name != LOCK for p in path.iterdir()):  # (a lock file alone: empty)
        manifest = read_manifest(path)
        if manifest is None or manifest["kind"] != kind:
            raise FileExistsError(
                f"--out: {str(path)!r} is not empty, not a tensornet {kind} run folder; choose another"
            )
        if kind == "train":  # the model/ the finished run replaces
            gpt2.check_model_target(path / "model", overwrite=True, where="--out", require_mark=False)
        used = [n for n in OUTPUTS[kind] if (path / n).exists()]
        if used and used != ["log.jsonl"] and not (resume or overwrite):  # (a log alone: rewritten)
            hint = "--resume to continue it or --overwrite" if kind == "train" else "--overwrite"
            raise FileExistsError(
                f"--out: {str(path)!r} holds a previous {kind} run ({', '.join(used)}): pass {hint}"
            )
    _files.probe_writable(path, "--out")


class RunFolder(contextlib.AbstractContextManager):
    """A run's output folder, opened once by the caller and held (locked) for the whole run."""

    def __init__(self, path: Path, lock: FileLock, created: list[Path]) -> None:
        self.path, self._lock, self._held, self._created = path, lock, os.stat(lock.lock_file), created

    @classmethod
    def open(cls, path: Path, *, kind: str, resume: bool = False, overwrite: bool = False) -> RunFolder:
        """Check (:func:`check_run_folder`), create, lock (else BlockingIOError), clear and mark ``path``."""
        path = Path(path)
        check_run_folder(path, kind=kind, resume=resume, overwrite=overwrite)
        created = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path / LOCK, blocking=False)
        try:
            lock.acquire()
        except Timeout:
            raise BlockingIOError(f"--out: another run holds {str(path)!r}; wait or choose another") from None
        folder = cls(path, lock, created)
        try:  # again, now that no other run can change the folder
            check_run_folder(path, kind=kind, resume=resume, overwrite=overwrite)
            names = {n.split("/")[0] for n in (*OUTPUTS[kind], MANIFEST)}
            _files.remove_stale_tmp(path, names, live=True)
            _files.remove_stale_tmp(path / "model", _files.MODEL_FILES, live=True)  # a killed save_model's
            for file in [path / n for n in OUTPUTS[kind] if overwrite]:
                if file.is_file() and not file.is_symlink():  # a regular file, not a link
                    file.unlink()
            own = [MANIFEST, LOCK, *OUTPUTS[kind]]
            write_json(path / MANIFEST, {"format": "tensornet-run", "version": 1, "kind": kind, "files": own})
        except BaseException:
            folder.close()
            raise
        return folder

    def close(self) -> None:
        """Release the lock, remove its file (only the one this run locked) and the folder if left unused."""
        with contextlib.suppress(OSError):
            if {p.name for p in self.path.iterdir()} <= {MANIFEST, LOCK}:
                (self.path / MANIFEST).unlink()  # a folder the run left unused is left empty
            if os.path.samestat(os.lstat(self._lock.lock_file), self._held):
                os.unlink(self._lock.lock_file)  # while still locked: the next run creates a new one
        self._lock.release()
        for folder in self._created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # (only when empty)

    def __exit__(self, *exc: object) -> None:
        self.close()
