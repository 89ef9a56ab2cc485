"""Initialisation of a TT layer's cores for a stated entry standard deviation of the rebuilt weight."""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

import torch

import tensornet as tn

__all__ = ["GPT2_STD", "INIT_NAMES", "Init", "check_init", "init_cores", "target_std"]

InitName = Literal["gpt2", "glorot", "kaiming"]
Init = InitName | float
INIT_NAMES = ("gpt2", "glorot", "kaiming")
GPT2_STD = 0.02  # GPT-2's N(0, 0.02) weights


def check_init(fn: str, init: Any) -> Init:
    """``init`` when it is one of :data:`INIT_NAMES` or a finite std ``>= 0``.

    Raises
    ------
    TypeError
        Neither a name nor a real number.
    ValueError
        An unknown name, a negative or non-finite std.
    """
    if isinstance(init, str):
        if init not in INIT_NAMES:
            raise ValueError(f"{fn}: init must be one of {INIT_NAMES} or a float std, got {init!r}")
        return init  # type: ignore[return-value]
    if isinstance(init, bool) or not isinstance(init, numbers.Real):
        raise TypeError(f"{fn}: init must be one of {INIT_NAMES} or a float std, got {type(init).__name__}")
    if not math.isfinite(init) or init < 0:
        raise ValueError(f"{fn}: init as a std must be finite and >= 0, got {init!r}")
    return float(init)


def target_std(init: Init, fan_in: int, fan_out: int) -> float:
    """Entry std of the rebuilt matrix that ``init`` asks for (t3f's Glorot/He targets)."""
    if init == "gpt2":
        return GPT2_STD
    if init == "glorot":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "kaiming":
        return math.sqrt(2.0 / fan_in)
    return float(init)


def _gpt2_cores(shapes: list[tuple[int, int, int, int]], std: float) -> list[torch.Tensor]:
    """Core k ~ N(0, 1/r_{k-1}), the last core times ``std``, then a left-to-right QR sweep."""
    cores = [torch.randn(s, dtype=torch.float64) / math.sqrt(s[0]) for s in shapes]
    cores[-1] = cores[-1] * std
    for k in range(len(shapes) - 1):
        r0, m, n, r1 = shapes[k]
        if r0 * m * n < r1:  # an unclipped rank: Q would have fewer columns than the bond
            continue
        q, r = torch.linalg.qr(cores[k].reshape(r0 * m * n, r1))
        cores[k] = q.reshape(shapes[k])
        cores[k + 1] = torch.einsum("ab,bmnc->amnc", r, cores[k + 1])
    return cores


@torch.no_grad()
def init_cores(shapes: list[tuple[int, int, int, int]], init: Init, fan_in: int, fan_out: int) -> list[Any]:
    """Random float64 CPU cores (drawn from torch's global generator) for ``init``.

    Parameters
    ----------
    shapes : list of (r, m, n, r')
    init : "gpt2", "glorot", "kaiming" or a float std
    fan_in, fan_out : int
        For the Glorot and He targets.

    Returns
    -------
    list of torch.Tensor

    Notes
    -----
    ``"gpt2"`` (the paper's recipe): core k ~ N(0, 1/r_{k-1}), the last core times 0.02, then a
    left-to-right QR sweep (cores 1..d-1 left-orthogonal, the norm in the last core). Other inits (the
    t3f rule): every core ~ N(0, s^2) with ``s = std^(1/d) * (r_1...r_{d-1})^(-1/(2d))``. Both give
    rebuilt entries of mean 0 and variance std^2 in expectation; a final scalar (on the last core for
    "gpt2", spread evenly as a d-th root otherwise) removes the sampling fluctuation of a single draw so
    the rebuilt matrix has entry RMS exactly ``std``.

    Cost: ``O(d n m r^3)``; the dense matrix is never built.
    """
    std = target_std(init, fan_in, fan_out)
    d = len(shapes)
    if init == "gpt2":
        cores = _gpt2_cores(shapes, std)
    else:
        scale = tn.random.core_std(std, [s[3] for s in shapes[:-1]])
        cores = [torch.randn(s, dtype=torch.float64) * scale for s in shapes]
    if std == 0.0:  # drawn all the same: the generator advances as for any other std
        return [torch.zeros(s, dtype=torch.float64) for s in shapes]
    rows = math.prod(s[1] for s in shapes)
    cols = math.prod(s[2] for s in shapes)
    factor = std / (float(tn.norm(tn.TTM(cores))) / math.sqrt(rows * cols))
    if init == "gpt2":
        cores[-1] = cores[-1] * factor
        return cores
    return [c * factor ** (1.0 / d) for c in cores]
