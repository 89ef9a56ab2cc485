"""Random TT and TTM with a stated entry standard deviation.

Every core has i.i.d. N(0, s^2) entries with ``s = std^(1/d) * (r_1 ... r_{d-1})^(-1/(2d))``, so each
entry of the rebuilt tensor has mean 0 and variance exactly ``std^2``: an entry is a sum of
``r_1 ... r_{d-1}`` products of d independent zero-mean factors (the rule of t3f's initialisers). Complex
dtypes draw circular complex normal entries (real and imaginary parts N(0, s^2 / 2) each), so
``E|x|^2 = std^2`` as well.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from . import _backend as B
from . import _checks, _place
from .shapes import useful_ranks
from .tt import TT, TTM

__all__ = ["core_std", "random_tt", "random_ttm"]


def _check_std(fn: str, std: Any) -> float:
    if isinstance(std, bool) or not isinstance(std, numbers.Real) or not math.isfinite(std) or std < 0:
        raise ValueError(f"{fn}: std must be a finite number >= 0, got {std!r}")
    return float(std)


def core_std(std: float, bond_ranks: Sequence[int]) -> float:
    """Per-core entry std making the rebuilt entries have standard deviation ``std``.

    Parameters
    ----------
    std : float
        The target entry standard deviation of the dense tensor.
    bond_ranks : sequence of int
        ``(r_1, ..., r_{d-1})``.

    Returns
    -------
    float
        ``std^(1/d) * (r_1 ... r_{d-1})^(-1/(2d))``.
    """
    d = len(bond_ranks) + 1
    return float(std ** (1.0 / d) * math.prod(bond_ranks) ** (-1.0 / (2 * d)))


def _check_size(fn: str, mode_shapes: list[tuple[int, ...]], ranks: tuple[int, ...], itemsize: int) -> None:
    """Refuse, before allocating, cores that cannot fit in the memory available now.

    They are drawn as float64 on the host (each core with one temporary of its size while it is scaled)
    and then converted (:func:`tensornet._place.check_memory`).
    """
    sizes = [ranks[k] * math.prod(m) * ranks[k + 1] for k, m in enumerate(mode_shapes)]
    useful = useful_ranks([math.prod(m) for m in mode_shapes])
    what = f"ranks {ranks} give {sum(sizes):,} parameters"
    hint = f"; lower the rank (ranks above the useful maximum {useful} add parameters, not expressiveness)"
    _place.check_memory(fn, sizes, itemsize, what=what, hint=hint)


def _cores(
    fn: str,
    mode_shapes: list[tuple[int, ...]],
    bonds: tuple[int, ...],
    std: float,
    seed: Any,
    like: Any,
    dtype: Any,
) -> list[Any]:
    """Draw the cores on the host and place them like ``like`` (see :func:`random_tt`)."""
    ranks = (1, *bonds, 1)
    itemsize = _place.target_itemsize(fn, like, dtype)
    _check_size(fn, mode_shapes, ranks, itemsize)
    rng = _checks.rng(fn, seed)
    scale = core_std(std, bonds)
    target = _place.reference(fn, like)
    name = B.dtype_name(dtype if dtype is not None else target.dtype if target is not None else "float64")
    shapes = [(ranks[k], *modes, ranks[k + 1]) for k, modes in enumerate(mode_shapes)]
    if name in ("complex64", "complex128"):  # circular: real and imaginary parts of variance s^2 / 2 each
        part = scale / math.sqrt(2.0)
        cores = [
            part * rng.standard_normal(shape) + 1j * (part * rng.standard_normal(shape)) for shape in shapes
        ]
    else:
        cores = [scale * rng.standard_normal(shape) for shape in shapes]
    return _place.place(fn, cores, like, dtype)


def random_tt(
    shape: int | Sequence[int],
    rank: int | Sequence[int],
    *,
    std: float = 1.0,
    seed: Any = None,
    like: Any = None,
    dtype: Any = None,
) -> TT:
    """A random TT whose full tensor has entries of mean 0 and standard deviation ``std``.

    Parameters
    ----------
    shape : int or sequence of int
        Mode sizes ``(n_1, ..., n_d)``.
    rank : int or sequence of int
        A rank spec: an int, the d - 1 bond ranks, or the d + 1 ranks with the boundary 1s.
    std : float
        Target standard deviation of the entries (>= 0).
    seed : optional
        Anything ``numpy.random.default_rng`` takes.
    like : array, TT or TTM, optional
        Whose backend, device and dtype the cores get.
    dtype : optional
        Overrides the dtype (default: ``like``'s, or float64); complex64/complex128 draw complex cores.

    Returns
    -------
    TT

    Raises
    ------
    TypeError
        A shape or rank that is not made of ints, a bad ``like`` or ``dtype``.
    ValueError
        Sizes or ranks below 1, a rank spec of the wrong length, a negative or non-finite std, ranks
        whose cores would not fit in the memory available.

    Notes
    -----
    The cores are drawn as float64 on the host with the module's rule, then converted.

    Cost: ``O(d n r^2)``.
    """
    shape = _checks.check_shape("random_tt", "shape", shape, scalar=True)
    bonds = _checks.parse_ranks("random_tt", "rank", rank, len(shape))
    std = _check_std("random_tt", std)
    return TT(_cores("random_tt", [(n,) for n in shape], bonds, std, seed, like, dtype))


def random_ttm(
    row_shape: int | Sequence[int],
    col_shape: int | Sequence[int],
    rank: int | Sequence[int],
    *,
    std: float = 1.0,
    seed: Any = None,
    like: Any = None,
    dtype: Any = None,
) -> TTM:
    """A random TTM of shape ``(prod row_shape, prod col_shape)`` with entries of std ``std``.

    Parameters
    ----------
    row_shape, col_shape : int or sequence of int
        One entry per core each.
    rank, std, seed, like, dtype
        As :func:`random_tt`.

    Returns
    -------
    TTM

    Raises
    ------
    TypeError, ValueError
        As :func:`random_tt`; shapes of different lengths.

    Cost: ``O(d m n r^2)``.
    """
    row_shape = _checks.check_shape("random_ttm", "row_shape", row_shape, scalar=True)
    col_shape = _checks.check_shape("random_ttm", "col_shape", col_shape, scalar=True)
    _checks.check_same_length("random_ttm", ("row_shape", "col_shape"), row_shape, col_shape)
    bonds = _checks.parse_ranks("random_ttm", "rank", rank, len(row_shape))
    std = _check_std("random_ttm", std)
    return TTM(_cores("random_ttm", list(zip(row_shape, col_shape)), bonds, std, seed, like, dtype))
