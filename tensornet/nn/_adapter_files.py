"""Adapter files: :func:`save_adapter` and :func:`load_adapter` (safetensors with a JSON header; never pickle)."""

from __future__ import annotations

import itertools
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tensornet
from tensornet._files import digest, write_atomic

from ._adapter import TTAdapter, _found, adapter_state_dict, adapters
from ._linear import TTMLinear

__all__ = ["load_adapter", "save_adapter"]

_KEY = "tensornet_adapter"
_FORMAT_VERSION = 1


def save_adapter(path: str | os.PathLike[str], model: nn.Module, *, overwrite: bool = False) -> Path:
    """Write the adapters of ``model`` alone (their cores, shapes and scalings) to a safetensors file.

    Parameters
    ----------
    path : str or path-like
        The file to write.
    model : nn.Module
        A model adapted by :func:`adapt` (merged or not).
    overwrite : bool
        Replace an existing file; without it an existing path is refused and left as it is.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    TypeError
        ``path`` not a str or path-like, ``model`` not a module.
    ValueError
        The model has no adapters.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.

    Notes
    -----
    The file holds each update's packed cores (``<module name>.delta.packed_cores``) and, in the
    safetensors metadata, a JSON header with every adapter's core shapes, scaling and the cores' SHA-256.
    It is written to a temporary file beside ``path`` and renamed into place. Its size is the updates'
    parameters (kilobytes to megabytes), not the model's.

    Cost: ``O(adapter parameters)``.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"save_adapter: path must be a str or path-like, got {type(path).__name__}")
    target = Path(path)
    if not overwrite and os.path.lexists(target):
        raise FileExistsError(f"save_adapter: {target} exists; pass overwrite=True to replace it")
    _found("save_adapter", model)  # a module with adapters, checked under this function's name
    state = adapter_state_dict(model)
    tensors = {k: v.to("cpu").contiguous() for k, v in state.items() if k.endswith("packed_cores")}
    header: dict[str, Any] = {
        "format_version": _FORMAT_VERSION,
        "version": tensornet.__version__,
        "adapters": {},
    }
    for name, adapter in adapters(model):
        key = f"{name}.delta.packed_cores"
        header["adapters"][name] = {
            "in_features": adapter.delta.in_features,
            "out_features": adapter.delta.out_features,
            "core_shapes": [list(s) for s in adapter.delta.core_shapes],
            "scaling": adapter.scaling,
            "sha256": digest(tensors[key]),
        }
    from safetensors.torch import save  # lazily: safetensors comes with transformers, not with tensornet

    write_atomic(
        target, save(tensors, metadata={_KEY: json.dumps(header)}), overwrite=overwrite, fn="save_adapter"
    )
    return target


def _read(fn: str, path: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The header and tensors of an adapter file, checked against each other."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"{fn}: path must be a str or path-like, got {type(path).__name__}")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise
    except Exception as error:  # safetensors raises its own error types for a malformed file
        raise ValueError(f"{fn}: {path} is not a safetensors file ({error})") from None
    if _KEY not in metadata:
        raise ValueError(f"{fn}: {path} has no tensornet adapter header; write it with save_adapter")
    try:
        header = json.loads(metadata[_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"{fn}: {path}: its adapter header is not valid JSON ({error})") from None
    _check_header(f"{fn}: {path}", header)
    for name, entry in header["adapters"].items():
        tensor = tensors.get(f"{name}.delta.packed_cores")
        size = sum(a * b * c * d for a, b, c, d in entry["core_shapes"])
        if tensor is None or tensor.numel() != size or digest(tensor) != entry["sha256"]:
            raise ValueError(f"{fn}: {path}: the cores of {name} are missing or damaged (size or checksum)")
    return header, tensors


def _bad(where: str, field: str, expected: str, value: Any) -> ValueError:
    return ValueError(
        f"{where}: header field {field} must be {expected}, got {value!r}; write it with save_adapter"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_header(where: str, header: Any) -> None:
    """Every field :func:`load_adapter` reads, of the right type and range (before any layer is touched)."""
    if not isinstance(header, dict):
        raise _bad(where, "(the header)", "a JSON object", header)
    version = header.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad(where, "format_version", "an int >= 1", version)
    if version > _FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {version}; this tensornet reads up to {_FORMAT_VERSION}: upgrade it"
        )
    entries = header.get("adapters")
    if not isinstance(entries, dict) or not entries:
        raise _bad(where, "adapters", "an object of adapters by module name, not empty", entries)
    for name, entry in entries.items():
        field = f"adapters.{name}"
        if not isinstance(entry, dict):
            raise _bad(where, field, "an object", entry)
        for key in ("in_features", "out_features"):
            if not _is_int(entry.get(key)) or entry[key] < 1:
                raise _bad(where, f"{field}.{key}", "an int >= 1", entry.get(key))
        scaling = entry.get("scaling")
        if (
            not (isinstance(scaling, int | float) and not isinstance(scaling, bool))
            or not 0 < scaling < math.inf
        ):
            raise _bad(where, f"{field}.scaling", "a finite number > 0", scaling)
        if not isinstance(entry.get("sha256"), str):
            raise _bad(where, f"{field}.sha256", "a hex string", entry.get("sha256"))
        _check_core_shapes(where, f"{field}.core_shapes", entry)


def _check_core_shapes(where: str, field: str, entry: dict[str, Any]) -> None:
    """A chain of ``(r, m, n, r')`` with end ranks 1 and ``prod m, prod n`` the entry's sizes."""
    shapes = entry.get("core_shapes")
    if (
        not isinstance(shapes, list)
        or not shapes
        or not all(
            isinstance(s, list) and len(s) == 4 and all(_is_int(n) and n >= 1 for n in s) for s in shapes
        )
    ):
        raise _bad(where, field, "a list of [r, m, n, r'] lists of ints >= 1", shapes)
    ranks_chain = shapes[0][0] == 1 and shapes[-1][3] == 1
    ranks_chain = ranks_chain and all(a[3] == b[0] for a, b in itertools.pairwise(shapes))
    sizes = (math.prod(s[1] for s in shapes), math.prod(s[2] for s in shapes))
    if not ranks_chain or sizes != (entry["out_features"], entry["in_features"]):
        raise _bad(
            where,
            field,
            f"a TT-matrix chain (end ranks 1, each r' the next r) of size (out, in) = "
            f"{(entry['out_features'], entry['in_features'])}",
            shapes,
        )


def load_adapter(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load adapters written by :func:`save_adapter` into a model adapted on the same layers.

    Each update takes the file's cores, core shapes (an update truncated or grown before saving is
    rebuilt with its saved ranks) and scaling.

    Parameters
    ----------
    path : str or path-like
    model : nn.Module
        Adapted by :func:`adapt` on (at least) the layers the file holds, not merged.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    TypeError
        ``path`` not a str or path-like, ``model`` not a module.
    ValueError
        The model has no adapters; not an adapter file; a header that is not JSON or has a field of the wrong type or range
        (``format_version`` not an int, a ``scaling`` not finite and positive, ``core_shapes`` that are
        no TT-matrix chain of the layer's size); a damaged file (checksums); a layer of the file that the
        model does not adapt, or whose size or factorisation (``out_shape``, ``in_shape``) differs; a
        merged adapter. The whole file is checked before any layer is changed: nothing is loaded then.

    Notes
    -----
    An optimizer over the old updates' parameters does not see rebuilt ones: build it after loading.

    Cost: ``O(adapter parameters)``.
    """
    fn = "load_adapter"
    header, tensors = _read(fn, path)
    found = dict(_found(fn, model))
    plan = []
    for name, entry in header["adapters"].items():
        adapter = found.get(name)
        if adapter is None:
            raise ValueError(
                f"{fn}: {path} holds an adapter for {name}, which the model has not; adapt it first"
            )
        sizes = (entry["out_features"], entry["in_features"])
        if sizes != (adapter.delta.out_features, adapter.delta.in_features):
            raise ValueError(
                f"{fn}: {name} is {sizes} in {path} but {adapter.delta.out_features, adapter.delta.in_features} here"
            )
        factors = (tuple(c[1] for c in entry["core_shapes"]), tuple(c[2] for c in entry["core_shapes"]))
        if factors != (adapter.delta.out_shape, adapter.delta.in_shape):
            raise ValueError(
                f"{fn}: {path}: header field adapters.{name}.core_shapes factors {name} as (out_shape, "
                f"in_shape) = {factors}, the model's update as {(adapter.delta.out_shape, adapter.delta.in_shape)}; "
                "adapt with the same shapes as the saved model"
            )
        if adapter.merged:
            raise ValueError(f"{fn}: {name} is merged; unmerge(model) before loading")
        plan.append((adapter, entry, tensors[f"{name}.delta.packed_cores"]))
    for adapter, entry, packed in plan:
        _load_one(adapter, entry, packed)
    return model


def _load_one(adapter: TTAdapter, entry: dict[str, Any], packed: torch.Tensor) -> None:
    old = adapter.delta
    shapes = tuple(tuple(int(n) for n in s) for s in entry["core_shapes"])
    if shapes != old.core_shapes:
        sizes = [math.prod(s) for s in shapes]
        cores = [c.reshape(s) for c, s in zip(packed.split(sizes), shapes)]
        weight = tensornet.TTM([c.to(dtype=old.packed_cores.dtype) for c in cores])
        new = TTMLinear.from_ttm(weight.to(device=old.packed_cores.device), None)
        new.packed_cores.requires_grad_(old.packed_cores.requires_grad)
        adapter.delta = new
    else:
        with torch.no_grad():
            old.packed_cores.copy_(packed)
    adapter.scaling = float(entry["scaling"])
