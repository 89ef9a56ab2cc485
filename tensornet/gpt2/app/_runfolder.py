"""Run folders: the output folder of a ``train`` or ``compare`` run, the package's own and one run at a time.

``tensornet-run.json`` marks a folder as the package's own; ``--overwrite`` replaces only the outputs of its
kind of run (``OUTPUTS``). A ``filelock`` lock, gone with its process, keeps a second run out.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import tensornet.gpt2 as gpt2

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
    """The manifest of the folder ``path``, None when it has none; ValueError naming it for a foreign one."""
    file = path / MANIFEST
    if not file.is_file():
        return None
    try:
        manifest = _files.parse_json(file.read_text(encoding="utf-8"))
        if manifest["format"] != RUN_FORMAT or manifest["kind"] not in OUTPUTS:
            raise ValueError(f"format {manifest['format']!r}, kind {manifest['kind']!r}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{str(file)!r} is not a readable tensornet run manifest ({type(err).__name__}: {err}); nothing in "
            "its folder is touched: choose a new or empty folder"
        ) from None
    return manifest


def check_run_folder(path: Path, *, kind: str, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse (OSError, ValueError) an output folder a ``kind`` run may not use; nothing is changed.

    Usable: a new or empty folder, or a ``kind`` run's (its manifest says so) holding no previous run unless
    ``resume`` or ``overwrite``, its ``model/`` only what ``save_model`` writes.
    """
    path = Path(path)
    if resume and overwrite:
        raise ValueError("--out: give --resume (continue the run) or --overwrite (replace it), not both")
    if not os.path.lexists(path):
        return _files.check_creatable(path, "--out")
    if not path.is_dir():
        raise FileExistsError(f"--out: {str(path)!r} is a file or a broken link; choose a folder")
    if any(p.name != LOCK for p in path.iterdir()):  # (a lock file alone: empty)
        manifest = read_manifest(path)
        if manifest is None or manifest["kind"] != kind:
            what = (
                f"is not empty and is not a tensornet run folder (no {MANIFEST})"
                if manifest is None
                else f"holds a {manifest['kind']} run, not a {kind} run"
            )
            raise FileExistsError(
                f"--out: {str(path)!r} {what}; nothing in it is touched: choose a new or empty folder"
            )
        if kind == "train":  # the model/ the finished run replaces
            gpt2.check_model_target(path / "model", overwrite=True, where="--out", require_mark=False)
        used = [n for n in OUTPUTS[kind] if (path / n).exists()]
        if used and used != ["log.jsonl"] and not (resume or overwrite):  # (a log alone: rewritten)
            hint = "--resume to continue it or --overwrite" if kind == "train" else "--overwrite"
            raise FileExistsError(
                f"--out: {str(path)!r} holds a previous {kind} run ({', '.join(used)}); pass {hint} to replace "
                "its files (other files are kept), or choose another folder"
            )
    _files.probe_writable(path, "--out")


class RunFolder:
    """A run's output folder, opened once by the caller and held (locked) for the whole run."""

    def __init__(self, path: Path, lock, created: list[Path] | None) -> None:
        self.path, self._lock, self._held = path, lock, os.stat(lock.lock_file)
        self._created = created  # the folders it made, [] for one found empty: removed again if left unused

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        kind: str,
        resume: bool = False,
        overwrite: bool = False,
    ) -> RunFolder:
        """Check (:func:`check_run_folder`), create, lock (else BlockingIOError), clear and mark ``path``."""
        from filelock import FileLock, Timeout

        path = Path(path)
        check_run_folder(path, kind=kind, resume=resume, overwrite=overwrite)
        created: list[Path] | None = [p for p in (path, *path.parents) if not p.exists()]
        if not created and any(p.name != LOCK for p in path.iterdir()):
            created = None
        path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path / LOCK, blocking=False)
        try:
            lock.acquire()
        except Timeout:
            raise BlockingIOError(
                f"--out: another run is using {str(path)!r}; wait for it to finish or choose another folder"
            ) from None
        folder = cls(path, lock, created)
        try:  # again, now that no other run can change the folder
            check_run_folder(path, kind=kind, resume=resume, overwrite=overwrite)
            names = {n.split("/")[0] for n in (*OUTPUTS[kind], MANIFEST)}
            _files.remove_stale_tmp(path, names, dir_files=_files.MODEL_FILES, live=True)
            for file in (path / n for n in OUTPUTS[kind] if overwrite):
                if file.is_file() and not file.is_symlink():
                    file.unlink()
            files = [MANIFEST, LOCK, *OUTPUTS[kind]]
            write_json(path / MANIFEST, {"format": RUN_FORMAT, "version": 1, "kind": kind, "files": files})
        except BaseException:
            folder.close()
            raise
        return folder

    def close(self) -> None:
        """Release the lock, remove its file (only the one this run locked) and the folder if left unused."""
        try:
            unused = self._created is not None and {p.name for p in self.path.iterdir()} <= {MANIFEST, LOCK}
        except OSError:
            unused = False
        with contextlib.suppress(OSError):
            if unused:
                (self.path / MANIFEST).unlink()
            if os.path.samestat(os.lstat(self._lock.lock_file), self._held):
                os.unlink(self._lock.lock_file)  # while still locked: the next run creates a new one
        self._lock.release()
        for folder in (self._created or []) if unused else []:
            with contextlib.suppress(OSError):
                folder.rmdir()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
