"""Checks and preparation of sampled data for :func:`tensornet.complete` (private)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _backend as B
from .. import _checks
from .._backend import Array
from ..tt import TT

__all__ = ["check_values", "check_weights", "split", "starting_cores"]


def _as_real_array(fn: str, name: str, data: Any) -> Array:
    if B.is_array(data):
        _checks.check_unmasked(fn, name, data)
        if B.is_complex(data):
            raise TypeError(
                f"{fn}: {name} are complex; completion fits real data (fit the real and imaginary parts "
                "separately)"
            )
        if str(data.dtype) in ("bool", "torch.bool"):
            raise TypeError(f"{fn}: {name} must be real numbers, got dtype {data.dtype}")
        if not B.is_floating(data):  # integers: as float64 on their backend
            return B.to_backend(data, B.backend_name(data), device=B.device(data), dtype="float64")
        if B.dtype_name(data.dtype) not in ("float32", "float64"):
            raise TypeError(f"{fn}: {name} have dtype {data.dtype}; use float32 or float64")
        return data
    if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
        raise TypeError(f"{fn}: {name} must be a 1-D array or sequence of numbers, got {type(data).__name__}")
    try:
        return np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{fn}: {name} must be real numbers ({err})") from None


def check_values(fn: str, values: Any, count: int) -> Array:
    """``values`` as a finite real 1-D array of ``count`` entries (its backend, device and float dtype)."""
    values = _as_real_array(fn, "values", values)
    if values.ndim != 1 or int(values.shape[0]) != count:
        raise ValueError(
            f"{fn}: values has shape {tuple(values.shape)} but indices has {count} rows; give one value per "
            "row of indices, as a 1-D array"
        )
    host = np.asarray(B.to_backend(values, "numpy"))
    bad = np.flatnonzero(~np.isfinite(host))
    if bad.size:
        raise ValueError(
            f"{fn}: values[{int(bad[0])}] is {host[bad[0]]} ({bad.size} non-finite value(s)); drop those samples "
            "or give them weight 0 after replacing the value"
        )
    return values


def check_weights(fn: str, weights: Any, values: Array) -> Array | None:
    """Finite non-negative weights, one per value, not all zero, on the values' backend and dtype."""
    if weights is None:
        return None
    weights = _as_real_array(fn, "weights", weights)
    if weights.ndim != 1 or int(weights.shape[0]) != int(values.shape[0]):
        raise ValueError(
            f"{fn}: weights has shape {tuple(weights.shape)} but there are {int(values.shape[0])} values; give one "
            "weight per value"
        )
    host = np.asarray(B.to_backend(weights, "numpy"), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(host) | (host < 0))
    if bad.size:
        raise ValueError(f"{fn}: weights[{int(bad[0])}] is {host[bad[0]]}; weights must be finite and >= 0")
    if not np.any(host > 0):
        raise ValueError(f"{fn}: every weight is 0; at least one sample must count")
    return B.to_backend(host, B.backend_name(values), device=B.device(values), dtype=values.dtype)


def validation_count(fn: str, validation: Any, count: int) -> int:
    """How many samples to hold back: a fraction in [0, 1) of ``count`` (at least 1 if > 0) or an int."""
    if isinstance(validation, bool) or not isinstance(validation, numbers.Real):
        raise TypeError(
            f"{fn}: validation must be a fraction in [0, 1) or a number of samples, got {type(validation).__name__}"
        )
    if isinstance(validation, numbers.Integral):
        held = int(validation)
    else:
        if not (0.0 <= float(validation) < 1.0):
            raise ValueError(
                f"{fn}: validation must be a fraction in [0, 1) or an int count, got {validation}"
            )
        held = math.ceil(float(validation) * count) if float(validation) > 0 else 0
    if held < 0 or held >= count:
        raise ValueError(
            f"{fn}: validation={validation} holds back {held} of {count} samples; at least one must remain for "
            "fitting (and the count cannot be negative)"
        )
    return held


def split(rng: np.random.Generator, count: int, held: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, held_back)`` positions: a random permutation's tail and head (deterministic for the seed)."""
    order = rng.permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


def starting_cores(fn: str, x0: Any, shape: tuple[int, ...], like: Array, scale_exponent: int) -> list[Array]:
    """The cores to start from: ``x0`` (scaled like the values) or the rank-1 train of ones."""
    xp = B.namespace(like)
    if x0 is None:
        return [xp.ones((1, n, 1), dtype=like.dtype, device=B.device(like)) for n in shape]
    _checks.check_type(fn, x0, TT, "x0")
    if x0.shape != shape:
        raise ValueError(f"{fn}: x0 has shape {x0.shape} but shape is {shape}; they must match")
    if B.is_complex(x0.cores[0]):
        raise TypeError(f"{fn}: x0 is complex; completion fits real data")
    cores = [B.to_backend(c, B.backend_name(like), device=B.device(like), dtype=like.dtype) for c in x0.cores]
    cores = [B.detach(c) for c in cores]
    host = [np.asarray(B.to_backend(c, "numpy")) for c in cores]
    if not all(np.all(np.isfinite(c)) for c in host):
        raise ValueError(f"{fn}: x0 has NaN or inf entries")
    share = -scale_exponent // len(cores)
    rest = -scale_exponent - share * len(cores)
    return [B.scale_pow2(c, share + (rest if k == 0 else 0)) for k, c in enumerate(cores)]
