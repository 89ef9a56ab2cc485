"""Backend helpers: the array namespace is always taken from the arrays themselves.

Nothing here holds global state; every function receives the arrays it works on. numpy and torch
(CPU and CUDA, with or without ``requires_grad``) are supported through ``array_api_compat``.
"""

from __future__ import annotations

import importlib
from typing import Any

import array_api_compat
import numpy as np

Array = Any


def namespace(*arrays: Array, where: str = "tensornet") -> Any:
    """Return the array-API namespace shared by ``arrays``; raise a clear error if they disagree."""
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as err:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in arrays})
        raise TypeError(
            f"{where}: arrays come from different or unsupported libraries ({', '.join(kinds)}); "
            "convert them to one backend first, e.g. with TT.to('numpy') or TT.to('torch')"
        ) from err


def is_array(x: object) -> bool:
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, complex, bool))


def backend_name(x: Array) -> str:
    """'numpy' or 'torch' (or the module name of another array-API library)."""
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_torch_array(x):
        return "torch"
    return type(x).__module__.split(".")[0]


def device(x: Array) -> Any:
    return array_api_compat.device(x)


def is_floating(x: Array) -> bool:
    if array_api_compat.is_torch_array(x):
        return bool(x.is_floating_point())
    return bool(np.issubdtype(np.dtype(x.dtype), np.floating))


def is_complex(x: Array) -> bool:
    if array_api_compat.is_torch_array(x):
        return bool(x.is_complex())
    return bool(np.issubdtype(np.dtype(x.dtype), np.complexfloating))


def finfo_eps(x: Array) -> float:
    xp = namespace(x)
    return float(xp.finfo(x.dtype).eps)


def all_finite(x: Array) -> bool:
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(x)))


def to_float(x: Array) -> float:
    """A 0-d array as a Python float (a host sync on GPU backends)."""
    if array_api_compat.is_torch_array(x):
        return float(x.detach().cpu().item())
    return float(x)


def to_backend(x: Array, backend: str, *, device: Any = None, dtype: Any = None) -> Array:
    """Convert one array to ``backend`` ('numpy' or 'torch'), keeping values (and dtype unless given)."""
    if backend == "numpy":
        if array_api_compat.is_torch_array(x):
            x = x.detach().cpu().numpy()
        out = np.asarray(x)
        if dtype is not None:
            out = out.astype(np.dtype(dtype_name(dtype)))
        if device not in (None, "cpu"):
            raise ValueError(f"to: numpy arrays live on the CPU; device={device!r} is not possible")
        return out
    if backend == "torch":
        torch = importlib.import_module("torch")
        if dtype is not None:
            dtype = getattr(torch, dtype_name(dtype))
        if array_api_compat.is_torch_array(x):
            return x.to(device=device if device is not None else x.device, dtype=dtype or x.dtype)
        return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)
    raise ValueError(f"to: unknown backend {backend!r}; use 'numpy' or 'torch'")


def dtype_name(dtype: Any) -> str:
    """'float32' for np.float32, torch.float32, 'float32' or np.dtype('float32')."""
    text = str(dtype)
    if text.startswith("torch."):
        return text[len("torch.") :]
    return np.dtype(dtype).name


def asarray_like(values: Any, like: Array) -> Array:
    """``values`` (numpy or Python data) as an array of ``like``'s backend, dtype and device."""
    xp = namespace(like)
    if array_api_compat.is_torch_array(like):
        torch = importlib.import_module("torch")
        return torch.as_tensor(np.asarray(values), dtype=like.dtype, device=like.device)
    return xp.asarray(values, dtype=like.dtype)
