"""Decompositions: TT-SVD of dense tensors and matrices, orthogonalisation and rounding.

Truncation rule (TT-Toolbox): with ``eps`` given, each of the d - 1 unfoldings drops the largest
number of trailing singular values whose root-sum-square is at most ``eps / sqrt(d - 1) * ||x||_F``,
which guarantees ``||x - result||_F <= eps * ||x||_F`` and gives the smallest ranks meeting the
per-unfolding threshold. ``max_rank`` caps every rank (an int, or one int per bond). When both are
given and the cap is tighter than eps requires, the cap wins and a :class:`RankCapWarning` states the
error bound actually achieved; ``return_error=True`` also returns that bound. Ranks never exceed their
useful maximum ``min(prod n_1..n_k, prod n_{k+1}..n_d)`` (they are clipped by the SVD itself).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from . import _backend as B
from . import ops as _ops
from .contract import einsum
from .tt import TT, TTM

__all__ = ["RankCapWarning", "orthogonalize", "round", "tt_svd", "ttm_svd"]


class RankCapWarning(UserWarning):
    """``max_rank`` stopped the result from meeting ``eps``; the message gives the achieved bound."""


# --- argument checks --------------------------------------------------------------------------------
def _check_eps(fn: str, eps: Any) -> float | None:
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{fn}: eps must be a real number or None, got {type(eps).__name__}")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{fn}: eps must be finite and >= 0 (a relative Frobenius error), got {eps}")
    return value


def _check_max_rank(fn: str, max_rank: Any, bonds: int) -> list[int | None]:
    if max_rank is None:
        return [None] * bonds
    values = [max_rank] * bonds if not isinstance(max_rank, Sequence) else list(max_rank)
    if len(values) != bonds:
        raise ValueError(f"{fn}: max_rank has {len(values)} entries but the train has {bonds} bonds (d - 1)")
    for k, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(
                f"{fn}: max_rank must be an int or a sequence of ints, got {value!r} for bond {k}"
            )
        if value < 1:
            raise ValueError(f"{fn}: max_rank must be >= 1, got {value} for bond {k}")
    return [int(v) for v in values]


def _check_dense(fn: str, x: Any) -> None:
    if not B.is_array(x):
        raise TypeError(f"{fn}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"{fn}: expected an array with at least one dimension, got a 0-d array")
    if any(int(n) == 0 for n in x.shape):
        raise ValueError(f"{fn}: the array has a zero-size dimension (shape {tuple(x.shape)})")
    if B.is_complex(x) or not B.is_floating(x):
        raise TypeError(f"{fn}: dtype {x.dtype} is not supported; use float32 or float64")
    if not B.all_finite(x):
        raise ValueError(f"{fn}: the array contains NaN or inf; the decomposition is undefined")


# --- truncation -------------------------------------------------------------------------------------
def _choose_rank(singular: Any, threshold: float, cap: int | None) -> tuple[int, float, int]:
    """(rank kept, squared norm of the discarded values, rank eps alone would keep)."""
    s = np.asarray(B.to_backend(singular, "numpy"), dtype=np.float64)
    tail = np.concatenate([np.cumsum((s * s)[::-1])[::-1], [0.0]])  # tail[r] = sum_{i >= r} s_i^2
    fits = np.nonzero(tail <= threshold * threshold)[0]
    needed = max(1, int(fits[0]))
    rank = needed if cap is None else min(needed, cap)
    return rank, float(tail[rank]), needed


class _ErrorLog:
    def __init__(self, fn: str, eps: float | None) -> None:
        self.fn, self.eps, self.discarded, self.capped, self.bound = fn, eps, 0.0, False, 0.0

    def add(self, rank: int, discarded: float, needed: int) -> None:
        self.discarded += discarded
        self.capped = self.capped or rank < needed

    def finish(self, reference_norm: float, stacklevel: int) -> float:
        bound = math.sqrt(self.discarded) / reference_norm if reference_norm > 0 else 0.0
        if self.capped and self.eps is not None and bound > self.eps:
            warnings.warn(
                f"{self.fn}: max_rank kept the result from meeting eps={self.eps:g}; the achieved relative "
                f"error bound is {bound:.3g}. Raise max_rank to meet eps.",
                RankCapWarning,
                stacklevel=stacklevel,
            )
        return bound


def _svd(matrix: Any) -> tuple[Any, Any, Any]:
    xp = B.namespace(matrix)
    return xp.linalg.svd(matrix, full_matrices=False)


def _tt_svd_cores(x: Any, eps: float | None, caps: list[int | None], log: _ErrorLog) -> list[Any]:
    xp = B.namespace(x)
    shape = tuple(int(n) for n in x.shape)
    d = len(shape)
    total = B.to_float(xp.linalg.vector_norm(x))
    threshold = (eps or 0.0) / math.sqrt(max(d - 1, 1)) * total
    cores = []
    rank = 1
    rest = x
    for k in range(d - 1):
        rest = xp.reshape(rest, (rank * shape[k], -1))
        u, s, vh = _svd(rest)
        new_rank, discarded, needed = _choose_rank(s, threshold, caps[k])
        log.add(new_rank, discarded, needed)
        cores.append(xp.reshape(u[:, :new_rank], (rank, shape[k], new_rank)))
        rest = s[:new_rank, None] * vh[:new_rank, :]
        rank = new_rank
    cores.append(xp.reshape(rest, (rank, shape[-1], 1)))
    log.bound = log.finish(total, stacklevel=5)  # user -> tt_svd -> _tt_svd_cores -> finish
    return cores


def tt_svd(
    x: Any,
    *,
    eps: float | None = None,
    max_rank: int | Sequence[int] | None = None,
    return_error: bool = False,
) -> Any:
    """TT decomposition of a dense array by sequential truncated SVDs (Oseledets 2011).

    Parameters
    ----------
    x : array of float32/float64, d >= 1 dimensions, finite.
    eps : relative accuracy; ``||x - tt||_F <= eps ||x||_F`` (see module notes). None: no truncation.
    max_rank : int or per-bond sequence capping the ranks (the cap wins over eps, with a warning).
    return_error : also return the guaranteed relative error bound (a float).

    Cost: ``O(n prod(n) r)`` with the ranks r found, dominated by the first unfolding.

    Raises
    ------
    TypeError for non-arrays or integer/complex dtypes; ValueError for NaN/inf entries, zero-size
    dimensions, negative/NaN/inf eps and max_rank < 1.
    """
    eps = _check_eps("tt_svd", eps)
    _check_dense("tt_svd", x)
    caps = _check_max_rank("tt_svd", max_rank, x.ndim - 1)
    log = _ErrorLog("tt_svd", eps)
    cores = _tt_svd_cores(x, eps, caps, log)
    result = TT._trusted(cores)
    return (result, log.bound) if return_error else result


def ttm_svd(
    a: Any,
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    *,
    eps: float | None = None,
    max_rank: int | Sequence[int] | None = None,
    return_error: bool = False,
) -> Any:
    """TT-matrix decomposition of a dense ``(M, N)`` matrix with ``M = prod(row_shape)``,
    ``N = prod(col_shape)`` (this is how a pretrained weight ``(out, in)`` becomes a TTM).

    Same accuracy contract as :func:`tt_svd` applied to the tensor with modes ``(m_k n_k)``.
    Cost: ``O(M N r)``.
    """
    eps = _check_eps("ttm_svd", eps)
    _check_dense("ttm_svd", a)
    row_shape, col_shape = _check_matrix_shapes("ttm_svd", a, row_shape, col_shape)
    d = len(row_shape)
    caps = _check_max_rank("ttm_svd", max_rank, d - 1)
    xp = B.namespace(a)
    tensor = xp.reshape(a, (*row_shape, *col_shape))
    order = [axis for k in range(d) for axis in (k, d + k)]
    tensor = xp.reshape(
        xp.permute_dims(tensor, tuple(order)), tuple(m * n for m, n in zip(row_shape, col_shape))
    )
    log = _ErrorLog("ttm_svd", eps)
    cores = _tt_svd_cores(tensor, eps, caps, log)
    cores = [
        xp.reshape(c, (int(c.shape[0]), m, n, int(c.shape[2])))
        for c, m, n in zip(cores, row_shape, col_shape)
    ]
    result = TTM._trusted(cores)
    return (result, log.bound) if return_error else result


def _check_matrix_shapes(fn: str, a: Any, row_shape: Any, col_shape: Any) -> tuple[tuple[int, ...], ...]:
    if a.ndim != 2:
        raise ValueError(f"{fn}: expected a 2-D matrix (M, N), got shape {tuple(a.shape)}")
    shapes = []
    for name, shape, size in (
        ("row_shape", row_shape, int(a.shape[0])),
        ("col_shape", col_shape, int(a.shape[1])),
    ):
        if not isinstance(shape, Sequence) or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and int(n) >= 1 for n in shape
        ):
            raise TypeError(f"{fn}: {name} must be a sequence of positive ints, got {shape!r}")
        if math.prod(shape) != size:
            raise ValueError(
                f"{fn}: {name} {tuple(shape)} multiplies to {math.prod(shape)} but the matrix has {size} "
                f"{'rows' if name == 'row_shape' else 'columns'}"
            )
        shapes.append(tuple(int(n) for n in shape))
    if len(shapes[0]) != len(shapes[1]):
        raise ValueError(
            f"{fn}: row_shape {shapes[0]} and col_shape {shapes[1]} have different lengths; "
            "pad the shorter with 1s so both have one entry per core"
        )
    return shapes[0], shapes[1]


# --- orthogonalisation and rounding ---------------------------------------------------------------------
def _left_step(core: Any, nxt: Any) -> tuple[Any, Any]:
    """QR of ``core`` (r, n, r'): returns the left-orthogonal core and the next core times R."""
    xp = B.namespace(core)
    r, n, _ = (int(s) for s in core.shape)
    q, rmat = xp.linalg.qr(xp.reshape(core, (r * n, -1)))
    new = int(q.shape[1])
    return xp.reshape(q, (r, n, new)), einsum("ab,bnc->anc", rmat, nxt)


def _right_step(prev: Any, core: Any) -> tuple[Any, Any]:
    """LQ of ``core`` (r, n, r'): returns the previous core times L and the right-orthogonal core."""
    xp = B.namespace(core)
    _, n, r2 = (int(s) for s in core.shape)
    q, rmat = xp.linalg.qr(xp.permute_dims(xp.reshape(core, (-1, n * r2)), (1, 0)))
    new = int(q.shape[1])
    return einsum("anb,cb->anc", prev, rmat), xp.reshape(xp.permute_dims(q, (1, 0)), (new, n, r2))


def _orthogonalized(cores: list[Any], center: int) -> list[Any]:
    cores = list(cores)
    for k in range(center):
        cores[k], cores[k + 1] = _left_step(cores[k], cores[k + 1])
    for k in range(len(cores) - 1, center, -1):
        cores[k - 1], cores[k] = _right_step(cores[k - 1], cores[k])
    return cores


def orthogonalize(x: Any, *, center: int | Literal["left", "right"] = "left") -> Any:
    """The same tensor with cores left-orthogonal before ``center`` and right-orthogonal after it.

    ``center="left"`` (default) makes every core but the last left-orthogonal (center = d - 1);
    ``"right"`` makes every core but the first right-orthogonal (center = 0). Ranks may shrink to
    their useful maximum. Cost: ``O(d n r^3)``.
    """
    _ops._require_train("orthogonalize", x)
    d = x.ndim
    if center == "left":
        center = d - 1
    elif center == "right":
        center = 0
    if isinstance(center, bool) or not isinstance(center, numbers.Integral):
        raise TypeError(f"orthogonalize: center must be an int, 'left' or 'right', got {center!r}")
    if not -d <= center < d:
        raise ValueError(f"orthogonalize: center {center} is out of range for a train with {d} cores")
    return _ops._like(x, _orthogonalized(_ops._flat_cores(x), int(center) % d))


def round(
    x: Any,
    *,
    eps: float | None = None,
    max_rank: int | Sequence[int] | None = None,
    return_error: bool = False,
) -> Any:
    """Recompress a TT or TTM to the smallest ranks meeting ``eps`` and/or ``max_rank``.

    Right-to-left QR sweep, then left-to-right truncated SVDs (module notes give the exact rule and
    the guarantee ``||x - round(x)||_F <= eps ||x||_F``). Cost: ``O(d n r^3)``.
    """
    eps = _check_eps("round", eps)
    _ops._require_train("round", x)
    caps = _check_max_rank("round", max_rank, x.ndim - 1)
    cores = _orthogonalized(_ops._flat_cores(x), 0)
    xp = B.namespace(*cores)
    total = B.to_float(xp.linalg.vector_norm(cores[0]))
    if not math.isfinite(total):
        raise ValueError("round: the train has NaN or inf entries; rounding is undefined")
    d = len(cores)
    threshold = (eps or 0.0) / math.sqrt(max(d - 1, 1)) * total
    log = _ErrorLog("round", eps)
    for k in range(d - 1):
        r, n, _ = (int(s) for s in cores[k].shape)
        u, s, vh = _svd(xp.reshape(cores[k], (r * n, -1)))
        rank, discarded, needed = _choose_rank(s, threshold, caps[k])
        log.add(rank, discarded, needed)
        cores[k] = xp.reshape(u[:, :rank], (r, n, rank))
        cores[k + 1] = einsum("ab,bnc->anc", s[:rank, None] * vh[:rank, :], cores[k + 1])
    result = _ops._like(x, cores)
    bound = log.finish(total, stacklevel=4)  # user -> round -> finish
    return (result, bound) if return_error else result
