"""Random TT and TTM with a stated entry standard deviation.

Every core has i.i.d. N(0, s^2) entries with ``s = std^(1/d) * (r_1 ... r_{d-1})^(-1/(2d))``, so each
entry of the rebuilt tensor has mean 0 and variance exactly ``std^2``: an entry is a sum of
``r_1 ... r_{d-1}`` products of d independent zero-mean factors (the t3f rule).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _backend as B
from .shapes import max_ranks
from .tt import TT, TTM

__all__ = ["core_std", "random_tt", "random_ttm"]


def _check_shape(fn: str, name: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, np.ndarray) and shape.ndim == 1 and np.issubdtype(shape.dtype, np.integer):
        shape = [int(n) for n in shape]
    if not isinstance(shape, Sequence) or len(shape) == 0:
        raise TypeError(f"{fn}: {name} must be a non-empty sequence of positive ints, got {shape!r}")
    for k, n in enumerate(shape):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"{fn}: {name}[{k}] = {n!r}; every mode size must be a positive int")
    return tuple(int(n) for n in shape)


def _check_ranks(fn: str, rank: Any, d: int) -> tuple[int, ...]:
    """Bond ranks (r_1..r_{d-1}) from an int, d - 1 bond ranks, or d + 1 ranks with boundary 1s."""
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
        values = [int(rank)] * (d - 1)
    elif isinstance(rank, Sequence) and not isinstance(rank, str):
        values = [int(r) if isinstance(r, numbers.Integral) and not isinstance(r, bool) else r for r in rank]
        if len(values) == d + 1:
            if values[0] != 1 or values[-1] != 1:
                raise ValueError(f"{fn}: ranks {tuple(rank)} given with boundaries must start and end with 1")
            values = values[1:-1]
        elif len(values) != d - 1:
            raise ValueError(
                f"{fn}: rank has {len(values)} entries; give an int, d - 1 = {d - 1} bond ranks or d + 1 = {d + 1} ranks"
            )
    else:
        raise TypeError(f"{fn}: rank must be an int or a sequence of ints, got {type(rank).__name__}")
    for k, r in enumerate(values):
        if not isinstance(r, int) or r < 1:
            raise ValueError(f"{fn}: rank {r!r} for bond {k + 1} must be an int >= 1")
    return tuple(values)


def _check_std(fn: str, std: Any) -> float:
    if isinstance(std, bool) or not isinstance(std, numbers.Real) or not math.isfinite(std) or std < 0:
        raise ValueError(f"{fn}: std must be a finite number >= 0, got {std!r}")
    return float(std)


def core_std(std: float, bond_ranks: Sequence[int]) -> float:
    """Per-core entry std making the rebuilt entries have standard deviation ``std``."""
    d = len(bond_ranks) + 1
    return std ** (1.0 / d) * math.prod(bond_ranks) ** (-1.0 / (2 * d))


def _check_size(fn: str, mode_shapes: list[tuple[int, ...]], ranks: tuple[int, ...], itemsize: int) -> None:
    """Refuse, before allocating, cores that cannot fit in the memory available now. They are drawn as
    float64 on the host (each core with one temporary of its size while it is scaled) and then converted,
    so the peak is ``8 n + 8 max(core) + itemsize n`` bytes for n parameters."""
    sizes = [ranks[k] * math.prod(m) * ranks[k + 1] for k, m in enumerate(mode_shapes)]
    nparams = sum(sizes)
    peak = 8 * nparams + 8 * max(sizes) + itemsize * nparams
    memory = B.available_memory()
    if memory is not None and peak > memory:
        useful = max_ranks([math.prod(m) for m in mode_shapes])
        raise ValueError(
            f"{fn}: ranks {ranks} give {nparams:,} parameters (about {peak / 2**30:,.1f} GiB at the peak of "
            f"drawing them), more than the {memory / 2**30:,.1f} GiB of memory available; lower the rank "
            f"(ranks above the useful maximum {useful} add parameters, not expressiveness)"
        )


def _cores(
    fn: str,
    mode_shapes: list[tuple[int, ...]],
    bonds: tuple[int, ...],
    std: float,
    seed: Any,
    like: Any,
    dtype: Any,
) -> list[Any]:
    ranks = (1, *bonds, 1)
    reference = like.cores[0] if isinstance(like, (TT, TTM)) else like
    target = dtype if dtype is not None else getattr(reference, "dtype", "float64")
    _check_size(fn, mode_shapes, ranks, np.dtype(B.dtype_name(target)).itemsize if target is not None else 8)
    rng = np.random.default_rng(seed)
    scale = core_std(std, bonds)
    cores = [
        scale * rng.standard_normal((ranks[k], *modes, ranks[k + 1])) for k, modes in enumerate(mode_shapes)
    ]
    if like is not None:
        reference = like.cores[0] if isinstance(like, (TT, TTM)) else like
        if not B.is_array(reference):
            raise TypeError(f"{fn}: like must be an array, TT or TTM, got {type(like).__name__}")
        return [
            B.to_backend(
                c, B.backend_name(reference), device=B.device(reference), dtype=dtype or reference.dtype
            )
            for c in cores
        ]
    return [c.astype(np.dtype(B.dtype_name(dtype))) if dtype is not None else c for c in cores]


def random_tt(
    shape: Sequence[int],
    rank: int | Sequence[int],
    *,
    std: float = 1.0,
    seed: Any = None,
    like: Any = None,
    dtype: Any = None,
) -> TT:
    """A random TT whose full tensor has entries of mean 0 and standard deviation ``std``.

    ``rank``: an int, d - 1 bond ranks, or d + 1 ranks with the boundary 1s. ``seed``: anything
    ``numpy.random.default_rng`` takes. ``like``: an array (or TT/TTM) whose backend, device and dtype
    the cores get; ``dtype`` overrides the dtype (default float64 on numpy).
    """
    shape = _check_shape("random_tt", "shape", shape)
    bonds = _check_ranks("random_tt", rank, len(shape))
    std = _check_std("random_tt", std)
    return TT(_cores("random_tt", [(n,) for n in shape], bonds, std, seed, like, dtype))


def random_ttm(
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    rank: int | Sequence[int],
    *,
    std: float = 1.0,
    seed: Any = None,
    like: Any = None,
    dtype: Any = None,
) -> TTM:
    """A random TTM of shape ``(prod row_shape, prod col_shape)`` with entries of std ``std``.

    Arguments as :func:`random_tt`; ``row_shape`` and ``col_shape`` have one entry per core.
    """
    row_shape = _check_shape("random_ttm", "row_shape", row_shape)
    col_shape = _check_shape("random_ttm", "col_shape", col_shape)
    if len(row_shape) != len(col_shape):
        raise ValueError(
            f"random_ttm: row_shape {row_shape} and col_shape {col_shape} have different lengths; "
            "pad the shorter with 1s"
        )
    bonds = _check_ranks("random_ttm", rank, len(row_shape))
    std = _check_std("random_ttm", std)
    return TTM(_cores("random_ttm", list(zip(row_shape, col_shape)), bonds, std, seed, like, dtype))
