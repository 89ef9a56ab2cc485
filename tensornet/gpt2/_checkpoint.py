"""What is in the GPT-2 adapter's files, treated as data only (nothing is unpickled).

The files are:

* checkpoints: one safetensors file holding every tensor, with the rest of the structure (step, history,
  optimizer settings, Python's RNG state, ...) as a JSON skeleton in its metadata and a SHA-256 over the
  skeleton and every tensor's name, dtype, shape and bytes, verified on load;
* token files: the train and validation token ids, with their SHA-256.

Every file is written through ``_files.atomic_write``.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import torch

from . import _skeleton
from ._files import atomic_write, not_a_file, parse_json

CHECKPOINT_FORMAT = "tensornet-checkpoint"
CHECKPOINT_VERSION = 1


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


def _tensor_bytes(t: torch.Tensor) -> bytes | memoryview:
    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().data  # the tensor's own bytes, not a copy


def content_sha256(tensors: dict[str, torch.Tensor], header: str = "") -> str:
    """SHA-256 over ``header`` and, in name order, every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256(header.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        digest.update(_tensor_bytes(t))
    return digest.hexdigest()


_SAFETENSORS_DTYPES = {
    getattr(torch, name): code
    for name, code in (
        ("float64", "F64"),
        ("float32", "F32"),
        ("float16", "F16"),
        ("bfloat16", "BF16"),
        ("int64", "I64"),
        ("int32", "I32"),
        ("int16", "I16"),
        ("int8", "I8"),
        ("uint8", "U8"),
        ("bool", "BOOL"),
        ("uint16", "U16"),
        ("uint32", "U32"),
        ("uint64", "U64"),
        ("float8_e4m3fn", "F8_E4M3"),
        ("float8_e5m2", "F8_E5M2"),
    )
    if hasattr(torch, name)
}


_DTYPE_OF_CODE = {code: dtype for dtype, code in _SAFETENSORS_DTYPES.items()}


def write_safetensors(f: BinaryIO, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` to the open binary file ``f`` in safetensors format, streaming each tensor's bytes.

    The format: an 8-byte little-endian header length, a JSON header of dtypes, shapes and byte ranges with
    ``metadata`` under ``__metadata__``, then the bytes. Each tensor's own bytes are streamed: no second copy
    in memory and no file of its own (the caller creates the file, safely, under a name it knows how to
    clean).
    """
    if sys.byteorder != "little":
        raise NotImplementedError(
            "write_safetensors: safetensors stores little-endian bytes; this host is big-endian"
        )
    header: dict[str, Any] = {}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"write_safetensors: {name} has dtype {t.dtype}, which safetensors cannot store")
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for name in names:
        f.write(_tensor_bytes(tensors[name].detach().cpu()))


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
    atomic_write(path, lambda f: write_safetensors(f, tensors, metadata))


def _open_error(path: Path, where: str, err: Exception) -> ValueError:
    if isinstance(err, _skeleton.SkeletonError):
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
    path: Path, where: str, skeleton: Any, tensors: dict[str, torch.Tensor], schema: _skeleton.Schema
) -> dict:
    """The skeleton decoded by ``schema`` (types and ranges checked), holding every tensor of the file."""
    try:
        payload, used = _skeleton.decode(skeleton, schema, tensors)
    except RecursionError:
        raise _open_error(path, where, ValueError("the skeleton is nested too deeply")) from None
    except _skeleton.SkeletonError as err:
        raise _open_error(path, where, err) from None
    if used != set(tensors) or not isinstance(payload, dict):
        raise _open_error(path, where, ValueError("skeleton and tensors disagree"))
    return payload


def checkpoint_outline(
    path: Path, where: str = "load_checkpoint", schema: _skeleton.Schema = _skeleton.JSON
) -> dict:
    """The checkpoint's structure with every tensor as a ``meta`` tensor of its stored shape and dtype.

    Read from the header alone (no tensor data, no checksum): cheap checks before the real load. The skeleton
    is decoded by ``schema`` (``_skeleton``): a value of the wrong type or range is a ValueError naming the
    file and where the value is.
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
    return _decode_payload(path, where, head["skeleton"], tensors, schema)


def load_checkpoint(
    path: Path, where: str = "load_checkpoint", schema: _skeleton.Schema = _skeleton.JSON
) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, verifying its format and checksum.

    The skeleton is decoded by ``schema`` after the checksum is verified (see :func:`checkpoint_outline`).
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
    return _decode_payload(path, where, head["skeleton"], tensors, schema)


# ----------------------------------------------------------------------------------------------- run folder


def save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Atomically write ``tensors`` as safetensors with their SHA-256 (and ``metadata``) in the metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    record = {**(metadata or {}), "sha256": content_sha256(tensors)}
    atomic_write(path, lambda f: write_safetensors(f, tensors, record))


def read_safetensors(path: Path, unreadable: str, hint: str = "") -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and tensors of a safetensors file; a malformed file raises ValueError ``unreadable (why)hint``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is not a mapping)
    except Exception as err:  # safetensors raises its own error type for every malformed file
        raise ValueError(f"{unreadable} ({type(err).__name__}: {err}){hint}") from None
    return metadata, tensors


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
