"""The application's files, read as data only.

* checkpoints: ``torch.save`` of the payload with its format, version and a SHA-256 over every value, read by
  ``torch.load(weights_only=True)``: an allow-list unpickler that builds tensors and plain values, never code.
  What is read back is checked by type and range (:func:`check_layout`) before anything uses it;
* token files: the train and validation token ids as safetensors, with their SHA-256.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..files import content_sha256, not_a_file, read_safetensors, tensor_bytes
from ._files import atomic_write, write_safetensors

__all__ = ["load_checkpoint", "load_token_file", "read_safetensors", "save_checkpoint", "save_tensors"]

CHECKPOINT_FORMAT = "tensornet-checkpoint"
CHECKPOINT_VERSION = 2  # 1: safetensors with a JSON skeleton (never released)
INT64 = 2**63 - 1


class Malformed(ValueError):
    """A checkpoint value of the wrong type or out of range; the message starts with where it is."""


def shown(value: Any) -> str:
    """``value`` in a message: itself when short, else its kind (an integer of 400 digits is not printed)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


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
    record = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "sha256": payload_sha256(payload),
        "payload": payload,
    }
    atomic_write(Path(path), lambda f: torch.save(record, f))


def _unreadable(path: Path, where: str, why: str) -> ValueError:
    return ValueError(
        f"{where}: {str(path)!r} is not a readable checkpoint ({why}); it is truncated, damaged or not "
        "tensornet's: restore it or start a new run"
    )


def load_checkpoint(
    path: Path,
    where: str = "load_checkpoint",
    check: Callable[[dict], None] | None = None,
    *,
    verify: bool = True,
) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`: its format, version, layout and checksum.

    The payload is passed to ``check`` (raising :class:`Malformed` for a value of the wrong type or range)
    before the checksum is verified; ``verify=False`` skips the checksum and maps the file instead of reading
    it (the cheap checks before a run). Every problem is a ValueError naming the file (FileNotFoundError when
    there is none).
    """
    path = Path(path)
    what = not_a_file(path)
    if what == "does not exist":
        raise FileNotFoundError(f"{where}: no checkpoint at {str(path)!r}")
    if what is not None:
        raise ValueError(f"{where}: the checkpoint {str(path)!r} {what}; restore the file or start a new run")
    # torch.save stores records uncompressed; a deflated one could inflate past any size
    if _compressed(path):
        raise _unreadable(path, where, "it holds compressed records, which torch.save never writes")
    try:
        record = torch.load(str(path), map_location="cpu", weights_only=True, mmap=not verify)
    except Exception as err:  # torch raises several types for a file that is no torch archive
        why = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if isinstance(err, pickle.UnpicklingError):  # torch's message suggests weights_only=False
            why = "it holds objects other than tensors and plain values, which are never unpickled"
        raise _unreadable(path, where, why) from None
    if not isinstance(record, dict) or record.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{where}: {str(path)!r} is not a tensornet checkpoint (no {CHECKPOINT_FORMAT!r} format tag); point "
            "--out at the run folder that wrote it"
        )
    if record.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{where}: {str(path)!r} is checkpoint format version {shown(record.get('version'))}; this tensornet "
            f"reads version {CHECKPOINT_VERSION}: resume it with the tensornet that wrote it"
        )
    payload = record.get("payload")
    try:
        if not isinstance(payload, dict):
            raise Malformed(f"the payload must be an object, got {shown(payload)}")
        if check is not None:
            check(payload)
        same = not verify or payload_sha256(payload) == record.get("sha256")
    except Malformed as err:
        raise ValueError(
            f"{where}: {str(path)!r} is not a checkpoint tensornet wrote: {err}; it is damaged or crafted: "
            "restore it or start a new run"
        ) from None
    except RecursionError:
        raise _unreadable(path, where, "it is nested too deeply") from None
    if not same:
        raise ValueError(
            f"{where}: {str(path)!r} fails its checksum: the file was damaged after it was written; "
            "nothing was resumed. Restore it from a copy or start a new run"
        )
    return payload


def _compressed(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return False  # not a zip archive: torch.load says what it is


# -------------------------------------------------------------------------- the training checkpoint's layout
_PARAM_ID = 2**31


def _need(ok: bool, at: str, rule: str, value: Any) -> None:
    if not ok:
        raise Malformed(f"{at} must be {rule}, got {shown(value)}")


def _is_int(value: Any, lo: int = 0, hi: int = INT64) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _is_float(value: Any) -> bool:
    return isinstance(value, float) or _is_int(value, -INT64 - 1)


def _keys(value: Any, at: str, keys: set[str], optional: frozenset[str] = frozenset()) -> None:
    ok = isinstance(value, dict) and keys <= set(value) <= keys | optional
    _need(ok, at, f"an object of {', '.join(sorted(keys))}", value)


def _shallow(value: Any, depth: int = 0) -> bool:
    """Nested at most 64 deep (what the comparison of signatures recurses through)."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return depth <= 64 and all(_shallow(item, depth + 1) for item in items)


def check_layout(ckpt: dict) -> None:
    """Every value of a training checkpoint has its type and range, else :class:`Malformed` naming it.

    The ranges that depend on the run (the step against ``--steps``, the shapes) are ``_resume``'s. Cost: one
    pass over the values (the tensors' data is not read).
    """
    _keys(ckpt, "the checkpoint", {"model", "optimizer", "step", "history", "rng", "signature"})
    _need(isinstance(ckpt["model"], dict), "model", "an object", ckpt["model"])
    for name, value in ckpt["model"].items():
        ok = isinstance(name, str) and isinstance(value, torch.Tensor)
        _need(ok, f"model[{shown(name)}]", "a tensor", value)
    _check_optimizer(ckpt["optimizer"])
    _need(_is_int(ckpt["step"]), "step", "an integer >= 0", ckpt["step"])
    _keys(ckpt["history"], "history", {"loss", "val"})
    loss, val = ckpt["history"]["loss"], ckpt["history"]["val"]
    _need(isinstance(loss, list) and isinstance(val, list), "history", "two lists", ckpt["history"])
    for i, value in enumerate(loss):
        _need(_is_float(value), f"history.loss[{i}]", "a number", value)
    for i, pair in enumerate(val):
        ok = isinstance(pair, tuple) and len(pair) == 2 and _is_int(pair[0]) and _is_float(pair[1])
        _need(ok, f"history.val[{i}]", "a (step, loss) pair", pair)
    _check_rng(ckpt["rng"])
    sig = ckpt["signature"]
    _need(isinstance(sig, dict) and _shallow(sig), "signature", "an object nested at most 64 deep", sig)


def _check_optimizer(opt: Any) -> None:
    """AdamW's ``state_dict()``: per-parameter states of tensors and numbers, and groups of parameter ids."""
    _keys(opt, "optimizer", {"state", "param_groups"})
    state, groups = opt["state"], opt["param_groups"]
    _need(isinstance(state, dict), "optimizer.state", "an object", state)
    for key, entry in state.items():
        at = f"optimizer.state[{shown(key)}]"
        _need(_is_int(key, 0, _PARAM_ID) and isinstance(entry, dict), at, "a parameter id's state", key)
        for name, value in entry.items():
            ok = isinstance(name, str) and (isinstance(value, torch.Tensor) or _is_float(value))
            _need(ok, f"{at}[{shown(name)}]", "a tensor or a number", value)
    _need(isinstance(groups, list), "optimizer.param_groups", "a list", groups)
    for i, group in enumerate(groups):
        at = f"optimizer.param_groups[{i}]"
        ok = isinstance(group, dict) and isinstance(group.get("params"), list)
        _need(ok, at, "an object with params", group)
        _need(_shallow(group), at, "an object nested at most 64 deep", group)
        for j, value in enumerate(group["params"]):
            _need(_is_int(value, 0, _PARAM_ID), f"{at}.params[{j}]", "a parameter id in [0, 2**31]", value)


def _check_rng(rng: Any) -> None:
    """The RNG states: torch's (a tensor), CUDA's (tensors), Python's (version 3, 625 words, the spare gauss)."""
    _keys(rng, "rng", {"torch", "python"}, frozenset({"cuda"}))
    own = torch.get_rng_state()
    state = rng["torch"]
    ok = isinstance(state, torch.Tensor) and (state.dtype, state.shape) == (own.dtype, own.shape)
    _need(ok, "rng.torch", f"torch's RNG state ({own.numel()} bytes)", state)
    cuda = rng.get("cuda", [])
    ok = isinstance(cuda, list) and all(isinstance(t, torch.Tensor) for t in cuda)
    _need(ok, "rng.cuda", "tensors", cuda)
    py = rng["python"]
    ok = (
        isinstance(py, tuple)
        and len(py) == 3
        and py[0] == 3
        and isinstance(py[1], tuple)
        and len(py[1]) == 625
    )
    _need(ok and (py[2] is None or _is_float(py[2])), "rng.python", "Python's random state (version 3)", py)
    for i, word in enumerate(py[1]):
        _need(_is_int(word, 0, 624 if i == 624 else 2**32 - 1), f"rng.python[1][{i}]", "a 32-bit word", word)


# ------------------------------------------------------------------------------------------------ token files
def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write ``tensors`` as safetensors with their SHA-256 (and ``metadata``) in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_safetensors(path, tensors, {**(metadata or {}), "sha256": content_sha256(tensors)})


def load_token_file(
    path: Path, vocab_size: int | None, where: str, identity: dict[str, str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` int64 token ids from a safetensors token file, checked; ValueError naming the file.

    Two non-empty 1-D integer tensors, ids in ``[0, vocab_size)``, their checksum and ``identity`` matching.
    """
    metadata, tensors = read_safetensors(path, f"{where}: {str(path)!r} is not a readable token file")
    other = [key for key, value in (identity or {}).items() if metadata.get(key) != value]
    if other:
        raise ValueError(f"{where}: {str(path)!r} holds the tokens of another {' and '.join(other)}")
    if set(tensors) != {"train", "val"}:
        raise ValueError(f"{where}: {str(path)!r} holds {sorted(tensors)}, expected train and val")
    if metadata.get("sha256") != content_sha256(tensors):
        raise ValueError(f"{where}: {str(path)!r} fails its checksum")
    out = []
    for name in ("train", "val"):
        t = tensors[name]
        if t.dim() != 1 or t.dtype not in (torch.int32, torch.int64) or t.numel() == 0:
            raise ValueError(f"{where}: {name} in {str(path)!r} is not a non-empty 1-D integer tensor")
        if int(t.min()) < 0 or (vocab_size is not None and int(t.max()) >= vocab_size):
            raise ValueError(f"{where}: {name} in {str(path)!r} has token ids outside [0, {vocab_size})")
        out.append(t.long())
    return out[0], out[1]
