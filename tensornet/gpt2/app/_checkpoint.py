"""What is in the GPT-2 adapter's files, treated as data only (nothing is unpickled).

The files are:

* checkpoints: one safetensors file holding every tensor, with the rest of the structure (step, history,
  optimizer settings, Python's RNG state, ...) as a JSON skeleton in its metadata and a SHA-256 over the
  skeleton and every tensor's name, dtype, shape and bytes, verified on load;
* token files: the train and validation token ids, with their SHA-256.

Every file is written through ``_files.atomic_save``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_save, content_sha256, not_a_file, parse_json, read_safetensors

CHECKPOINT_FORMAT = "tensornet-checkpoint"
CHECKPOINT_VERSION = 1
INT64 = (-(2**63), 2**63 - 1)


class Malformed(ValueError):
    """A checkpoint value of the wrong type or out of range; the message starts with where it is."""


def shown(value: Any) -> str:
    """``value`` in a message: itself when short, else its kind (an integer of 400 digits is not printed)."""
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) > 20:
        return f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, (list, tuple, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _encode(obj: Any, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        key = (
            t.device,
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        if t.numel() and key in seen:  # the same tensor twice (tied weights): stored once
            return {"$tensor": seen[key]}
        name = f"t{len(tensors)}"
        tensors[name] = t.cpu().contiguous()
        if t.numel():
            seen[key] = name
        return {"$tensor": name}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, tensors, seen) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors, seen) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in obj):
            return {k: _encode(v, tensors, seen) for k, v in obj.items()}
        return {"$dict": [[_encode(k, tensors, seen), _encode(v, tensors, seen)] for k, v in obj.items()]}
    raise TypeError(f"save_checkpoint: cannot store a {type(obj).__name__} ({obj!r:.80}) in a checkpoint")


def _decode(obj: Any, tensors: dict[str, Any], used: set[str], at: str = "") -> Any:
    """The inverse of :func:`_encode` on a parsed skeleton that may hold anything JSON does.

    Raises :class:`Malformed` naming where the first value no encoder writes is: an unknown tag, a tensor
    the file lacks, an integer outside int64, a dict key that is not a scalar or a tuple of scalars.
    """
    where = at or "the skeleton"
    if isinstance(obj, list):
        return [_decode(v, tensors, used, f"{at}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, int) and not isinstance(obj, bool) and not INT64[0] <= obj <= INT64[1]:
        raise Malformed(f"{where} must be an integer of int64, got {shown(obj)}")
    if not isinstance(obj, dict):
        return obj
    tag, value = next(iter(obj.items())) if len(obj) == 1 else ("", None)
    if tag == "$tensor":
        if not (isinstance(value, str) and value in tensors):
            raise Malformed(f"{where} must be a tensor of the file, got {shown(value)}")
        used.add(value)
        return tensors[value]
    if tag == "$float":
        if value not in ("nan", "inf", "-inf"):
            raise Malformed(f"{where} must be nan, inf or -inf, got {shown(value)}")
        return float(value)
    if tag == "$tuple" and isinstance(value, list):
        return tuple(_decode(v, tensors, used, f"{at}[{i}]") for i, v in enumerate(value))
    if tag == "$dict" and isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        out = {}
        for i, (k, v) in enumerate(value):
            key = _decode(k, tensors, used, f"{where} key {i}")
            parts = key if isinstance(key, tuple) else (key,)
            if not all(p is None or isinstance(p, (bool, int, float, str)) for p in parts):
                raise Malformed(f"{where} key {i} must be a scalar or a tuple of scalars, got {shown(key)}")
            out[key] = _decode(v, tensors, used, f"{at}[{key!r}]")
        return out
    if any(k.startswith("$") for k in obj):
        raise Malformed(f"{where} has an unknown or malformed tag {next(iter(obj))[:40]!r}")
    return {k: _decode(v, tensors, used, f"{at}.{k}" if at else k) for k, v in obj.items()}


# safetensors' dtype codes (a file's header) -> torch dtypes, for the outline's meta tensors
_DTYPE_OF_CODE = {
    code: getattr(torch, name)
    for code, name in (
        ("F64", "float64"),
        ("F32", "float32"),
        ("F16", "float16"),
        ("BF16", "bfloat16"),
        ("I64", "int64"),
        ("I32", "int32"),
        ("I16", "int16"),
        ("I8", "int8"),
        ("U8", "uint8"),
        ("BOOL", "bool"),
        ("U16", "uint16"),
        ("U32", "uint32"),
        ("U64", "uint64"),
        ("F8_E4M3", "float8_e4m3fn"),
        ("F8_E5M2", "float8_e5m2"),
    )
    if hasattr(torch, name)
}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomically write ``tensors`` and ``metadata`` as a safetensors file (``safetensors.torch.save_file``)."""
    from safetensors.torch import save_file

    stored, seen = {}, set()
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        stored[name] = t.clone() if t.numel() and ptr in seen else t  # save_file refuses shared memory
        seen.add(ptr)
    tensors = stored
    atomic_save(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write ``payload`` to one safetensors file, atomically.

    ``payload``: nested dicts/lists/tuples of tensors, numbers, strings, None.
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(payload, tensors, {}), separators=(",", ":"), allow_nan=False)
    header = f"{CHECKPOINT_FORMAT}\n{CHECKPOINT_VERSION}\n{skeleton}"
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "version": str(CHECKPOINT_VERSION),
        "skeleton": skeleton,
        "sha256": content_sha256(tensors, header),
    }
    write_safetensors(path, tensors, metadata)


def _open_error(path: Path, where: str, err: Exception) -> ValueError:
    if isinstance(err, Malformed):
        return ValueError(
            f"{where}: {str(path)!r} is not a checkpoint tensornet wrote: {err}; it is damaged or crafted: "
            "restore it or start a new run"
        )
    return ValueError(
        f"{where}: {str(path)!r} is not a readable checkpoint ({type(err).__name__}: {err}); it is truncated "
        "or damaged: restore it or start a new run"
    )


def checkpoint_metadata(path: Path, where: str = "load_checkpoint") -> dict:
    """The checked header of a checkpoint (format, version) and its parsed skeleton, without the tensors."""
    from safetensors import safe_open

    path = Path(path)
    what = not_a_file(path)
    if what == "does not exist":
        raise FileNotFoundError(f"{where}: no checkpoint at {str(path)!r}")
    if what is not None:
        raise ValueError(f"{where}: the checkpoint {str(path)!r} {what}; restore the file or start a new run")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error type for every malformed file
        raise _open_error(path, where, err) from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{where}: {str(path)!r} is not a tensornet checkpoint (its format tag is "
            f"{metadata.get('format')!r}); point --out at the run folder that wrote it"
        )
    if metadata.get("version") != str(CHECKPOINT_VERSION):
        raise ValueError(
            f"{where}: {str(path)!r} is checkpoint format version {metadata.get('version')!r}; this tensornet "
            f"reads version {CHECKPOINT_VERSION}: resume it with the tensornet that wrote it"
        )
    try:
        skeleton = parse_json(metadata.get("skeleton", ""))
    except ValueError as err:
        raise _open_error(path, where, err) from None
    return {"metadata": metadata, "skeleton": skeleton}


def _decode_payload(
    path: Path,
    where: str,
    skeleton: Any,
    tensors: dict[str, torch.Tensor],
    check: Callable[[dict], None] | None,
) -> dict:
    """The skeleton decoded, holding every tensor of the file, and then ``check``-ed (types and ranges)."""
    used: set[str] = set()
    try:
        payload = _decode(skeleton, tensors, used)
        if used != set(tensors) or not isinstance(payload, dict):
            raise Malformed("skeleton and tensors disagree")
        if check is not None:
            check(payload)
    except RecursionError:
        raise _open_error(path, where, Malformed("the skeleton is nested too deeply")) from None
    except Malformed as err:
        raise _open_error(path, where, err) from None
    return payload


def checkpoint_outline(
    path: Path, where: str = "load_checkpoint", check: Callable[[dict], None] | None = None
) -> dict:
    """The checkpoint's structure with every tensor as a ``meta`` tensor of its stored shape and dtype.

    Read from the header alone (no tensor data, no checksum): cheap checks before the real load. The decoded
    payload is passed to ``check``, which raises :class:`Malformed` for a value of the wrong type or range:
    a ValueError naming the file and where the value is.
    """
    from safetensors import safe_open

    path = Path(path)
    head = checkpoint_metadata(path, where)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {}
            for name in f.keys():  # noqa: SIM118  (safe_open is not a mapping)
                part = f.get_slice(name)
                dtype = _DTYPE_OF_CODE.get(part.get_dtype())
                if dtype is None:
                    raise ValueError(f"tensor {name} has dtype {part.get_dtype()}")
                tensors[name] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
    except Exception as err:  # safetensors raises its own error type for every malformed file
        raise _open_error(path, where, err) from None
    return _decode_payload(path, where, head["skeleton"], tensors, check)


def load_checkpoint(
    path: Path, where: str = "load_checkpoint", check: Callable[[dict], None] | None = None
) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its format and checksum.

    The payload is passed to ``check`` after the checksum is verified (see :func:`checkpoint_outline`).
    """
    from safetensors.torch import load_file

    path = Path(path)
    head = checkpoint_metadata(path, where)
    metadata = head["metadata"]
    try:
        tensors = load_file(str(path))
    except Exception as err:
        raise _open_error(path, where, err) from None
    header = f"{CHECKPOINT_FORMAT}\n{CHECKPOINT_VERSION}\n{metadata['skeleton']}"
    if content_sha256(tensors, header) != metadata.get("sha256"):
        raise ValueError(
            f"{where}: {str(path)!r} fails its checksum: the file was damaged after it was written; "
            "nothing was resumed. Restore it from a copy or start a new run"
        )
    return _decode_payload(path, where, head["skeleton"], tensors, check)


# ----------------------------------------------------------------------------------------------- run folder


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write ``tensors`` as safetensors with their SHA-256 (and ``metadata``) in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    record = {**(metadata or {}), "sha256": content_sha256(tensors)}
    write_safetensors(path, tensors, record)


def load_token_file(
    path: Path, vocab_size: int | None, where: str, identity: dict[str, str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` int64 token ids from a safetensors token file, checked.

    The file must hold two 1-D integer tensors with ids in ``[0, vocab_size)`` and a matching checksum, and
    its metadata must hold ``identity`` (what the tokens were built from) when given. Any problem raises
    ValueError naming the file.
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
