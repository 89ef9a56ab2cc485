"""Decompositions: TT-SVD of dense tensors and matrices, orthogonalisation and rounding.

Truncation rule (TT-Toolbox): with ``eps`` given, each of the d - 1 unfoldings drops the largest
number of trailing singular values whose root-sum-square is at most ``eps / sqrt(d - 1) * ||x||_F``,
which guarantees ``||x - result||_F <= eps * ||x||_F`` and gives the smallest ranks meeting the
per-unfolding threshold. ``max_rank`` caps every rank (an int, or one int per bond). When both are
given and the cap is tighter than eps requires, the cap wins and a :class:`RankCapWarning` states the
error bound actually achieved; ``return_error=True`` also returns that bound. Ranks never exceed their
useful maximum ``min(prod n_1..n_k, prod n_{k+1}..n_d)`` (they are clipped by the SVD itself).

The bound counts what truncation discards, computed from orthogonal factorisations (or from a Gram
matrix only where the discarded norm is measured on the rotated data itself, see
:mod:`tensornet._truncation`); like any SVD-based algorithm the result also carries floating-point
rounding of order ``u ||x||`` (u the unit roundoff), amplified only where the train's cores cancel.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

from . import _backend as B
from . import _round
from . import ops as _ops
from ._truncation import (
    RankCapWarning,
    _check_dense,
    _check_eps,
    _check_max_rank,
    _check_precision,
    _choose_rank,
    _core_exponents,
    _differentiable,
    _ErrorLog,
    _normalize_cores,
    _restore_scale,
    _safe_norm,
    _scale_exponent,
    _svd,
    _truncated_factors,
)
from .tt import TT, TTM

__all__ = ["RankCapWarning", "orthogonalize", "round", "round_sum", "tt_svd", "ttm_svd"]
__all__ += ["_check_eps", "_check_max_rank"]  # used by tensornet.cross


def _tt_svd_cores(x: Any, eps: float | None, caps: list[int | None], log: _ErrorLog) -> list[Any]:
    xp = B.namespace(x)
    shape = tuple(int(n) for n in x.shape)
    d = len(shape)
    if d == 1:
        log.bound = log.finish(_safe_norm(x), stacklevel=5)
        return [xp.reshape(x, (1, shape[0], 1))]
    # ||x||_F is the norm of the first unfolding's singular values: no separate pass over x
    log.relative = (eps or 0.0) / math.sqrt(d - 1)
    cores = []
    rank = 1
    rest = x
    threshold: float | None = None
    for k in range(d - 1):
        rest = xp.reshape(rest, (rank * shape[k], -1))
        kept, rest, _ = _truncated_factors(rest, threshold, caps[k], log)
        threshold = log.threshold
        new_rank = int(kept.shape[1])
        cores.append(xp.reshape(kept, (rank, shape[k], new_rank)))
        rank = new_rank
    cores.append(xp.reshape(rest, (rank, shape[-1], 1)))
    log.bound = log.finish(log.total, stacklevel=5)  # user -> tt_svd -> _tt_svd_cores -> finish
    return cores


@B.exact
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
    shift = _check_dense("tt_svd", x)
    caps = _check_max_rank("tt_svd", max_rank, x.ndim - 1)
    log = _ErrorLog("tt_svd", eps)
    cores = _tt_svd_cores(B.scale_pow2(x, -shift) if shift else x, eps, caps, log)
    result = TT._trusted(_restore_scale(cores, shift, at=-1))
    return (result, log.bound) if return_error else result


@B.exact
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
    shift = _check_dense("ttm_svd", a)
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
    cores = _tt_svd_cores(B.scale_pow2(tensor, -shift) if shift else tensor, eps, caps, log)
    cores = _restore_scale(cores, shift, at=-1)
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
    r2, n2, r3 = (int(s) for s in nxt.shape)
    return xp.reshape(q, (r, n, new)), xp.reshape(
        xp.matmul(rmat, xp.reshape(nxt, (r2, n2 * r3))), (new, n2, r3)
    )


def _right_step(prev: Any, core: Any) -> tuple[Any, Any]:
    """LQ of ``core`` (r, n, r'): returns the previous core times L and the right-orthogonal core."""
    xp = B.namespace(core)
    _, n, r2 = (int(s) for s in core.shape)
    q, rmat = xp.linalg.qr(xp.permute_dims(xp.reshape(core, (-1, n * r2)), (1, 0)))
    new = int(q.shape[1])
    r0, n0, r1 = (int(s) for s in prev.shape)
    left = xp.matmul(xp.reshape(prev, (r0 * n0, r1)), xp.permute_dims(rmat, (1, 0)))
    return xp.reshape(left, (r0, n0, new)), xp.reshape(xp.permute_dims(q, (1, 0)), (new, n, r2))


def _orthogonalized(cores: list[Any], center: int) -> list[Any]:
    cores = list(cores)
    for k in range(center):
        cores[k], cores[k + 1] = _left_step(cores[k], cores[k + 1])
    for k in range(len(cores) - 1, center, -1):
        cores[k - 1], cores[k] = _right_step(cores[k - 1], cores[k])
    return cores


@B.exact
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
    _check_precision("orthogonalize", x.dtype)
    center = int(center) % d
    cores, shift = _normalize_cores("orthogonalize", _ops._flat_cores(x))
    return _ops._like(x, _restore_scale(_orthogonalized(cores, center), shift, at=center))


@B.exact
def round(
    x: Any,
    *,
    eps: float | None = None,
    max_rank: int | Sequence[int] | None = None,
    return_error: bool = False,
) -> Any:
    """Recompress a TT or TTM to the smallest ranks meeting ``eps`` and/or ``max_rank``.

    Notes: a right-to-left sweep of R-only QRs, then left-to-right truncations of small matrices
    (module notes give the exact rule and the guarantee ``||x - round(x)||_F <= eps ||x||_F``). The
    route is chosen per call and per bond (see :mod:`tensornet._round`): rows of the QRs' R factors that
    hold only rounding are dropped (exactly rank-deficient sums such as ``t + t + t`` then cost what
    their true rank costs), and each truncation uses the certified Gram kernel where it can certify
    and the SVD where it cannot; cores requiring grad take the Q-forming QR and SVD path, which autograd
    differentiates.

    Cost: ``O(d n R^3)`` for input ranks R (output ranks r: ``O(d n r R^2)`` for the truncations).

    Raises TypeError for non-trains and float16/bfloat16 cores, ValueError for NaN/inf entries and
    bad ``eps``/``max_rank`` (see :func:`tt_svd`).
    """
    eps = _check_eps("round", eps)
    _ops._require_train("round", x)
    _check_precision("round", x.dtype)
    caps = _check_max_rank("round", max_rank, x.ndim - 1)
    result, log = _rounded("round", x, [_ops._flat_cores(x)], eps, caps, _round.AUTO)
    bound = log.finish(log.total, stacklevel=3)  # user -> round -> finish
    return (result, bound) if return_error else result


@B.exact
def round_sum(
    trains: Sequence[Any],
    *,
    eps: float | None = None,
    max_rank: int | Sequence[int] | None = None,
    return_error: bool = False,
) -> Any:
    """``round(t_1 + ... + t_m, eps=..., max_rank=...)`` without forming the sum's block cores.

    Same result and guarantee as :func:`round` of the sum (``||s - result||_F <= eps ||s||_F`` for
    ``s = t_1 + ... + t_m``, smallest ranks meeting the per-unfolding threshold).

    Notes: the sum's core k is block diagonal (ranks ``R_k = r_1k + ... + r_mk``); the sweeps only
    multiply it by small matrices, block by block, so the zero blocks are neither stored nor
    multiplied. With ``P`` (s, R) a carry: ``P x_1 core_k`` costs ``s n sum_i r_i^2`` instead of
    ``s n R^2``, and the same for ``core_k x_3 F``; the R-only QRs of the first sweep (``O(n R^3)``
    per core) are what remains of the dense cost. Terms that repeat or are linear combinations of
    others are recognised by those QRs at working precision, and the rest of the sweep then runs at
    the sum's true rank.

    Cost: ``O(d n R^3)`` with ``R = sum_i r_i``; memory ``O(n R max_i r_i)`` per core instead of
    ``O(n R^2)``.

    Raises TypeError unless ``trains`` is a non-empty sequence of TT (or of TTM) trains, ValueError
    when their shapes, dtypes or devices disagree (naming the term), and as :func:`round`.
    """
    fn = "round_sum"
    eps = _check_eps(fn, eps)
    terms = _check_terms(fn, trains)
    first = terms[0]
    _check_precision(fn, first.dtype)
    caps = _check_max_rank(fn, max_rank, first.ndim - 1)
    result, log = _rounded(fn, first, [_ops._flat_cores(t) for t in terms], eps, caps, _round.AUTO)
    bound = log.finish(log.total, stacklevel=3)  # user -> round_sum -> finish
    return (result, bound) if return_error else result


def _check_terms(fn: str, trains: Any) -> list[Any]:
    if isinstance(trains, (TT, TTM)) or not isinstance(trains, Sequence) or isinstance(trains, str):
        raise TypeError(
            f"{fn}: expected a sequence of TT or TTM trains such as [t1, t2, t3], got "
            f"{type(trains).__name__}; to round a single train use tn.round"
        )
    terms = list(trains)
    if not terms:
        raise ValueError(f"{fn}: the sequence of trains is empty; give at least one train")
    for i, t in enumerate(terms):
        _ops._require_train(fn, t, f"term {i}")
    for i, t in enumerate(terms[1:], start=1):
        try:
            _ops._check_same_structure(fn, terms[0], t)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{err} (term 0 against term {i})") from None
    return terms


def _rounded(
    fn: str, like: Any, trains: list[list[Any]], eps: float | None, caps: list[int | None], route: Any
) -> tuple[Any, _ErrorLog]:
    """Round the sum of ``trains`` (lists of TT-layout cores; one list: a plain train) and wrap the
    result like ``like``; returns it with the error log (``log.total`` = the norm of the input)."""
    d = len(trains[0])
    log = _ErrorLog(fn, eps)
    log.relative = (eps or 0.0) / math.sqrt(max(d - 1, 1))
    if len(trains) == 1:
        cores, shift = _normalize_cores(fn, trains[0])
        operand: Any = _round.Train(cores)
    else:
        scaled, shift = _normalize_terms(fn, trains)
        operand = _round.Sum(scaled)
    if d == 1 or any(_differentiable(c) for cores in trains for c in cores):
        flat = operand.cores if isinstance(operand, _round.Train) else operand.dense_cores()
        cores = _round_differentiable(flat, caps, log)
    else:
        cores = _round.sweep(operand, caps, log, route)
    return _ops._like(like, _restore_scale(cores, shift, at=-1)), log


def _normalize_terms(fn: str, trains: list[list[Any]]) -> tuple[list[list[Any]], int]:
    """The terms of a sum put on one safe scale by powers of two (exact), and the exponent to put back.

    Each term's cores are divided by powers of two near their magnitudes and the term's own factor
    ``2^(E_i - E)`` (E the largest E_i) is spread over its cores, so that the scaled terms keep their
    ratios: the sum is ``2^E`` times the sum of the scaled terms. A term below ``2^-1000`` of the
    largest may underflow to zero, which changes the sum by less than its rounding."""
    exponents = []
    for i, cores in enumerate(trains):
        try:
            exponents.append(_core_exponents(cores))
        except ValueError as err:
            raise ValueError(f"{fn}: term {i}: {err}") from None
    dtype = trains[0][0].dtype
    totals = [sum(e) for e in exponents]
    top = max(totals)
    safe = all(_scale_exponent([2.0 ** max(min(e, 1000), -1000) for e in es], dtype) == 0 for es in exponents)
    if safe and top - min(totals) <= 64:  # every term safe, and none far below another
        return trains, 0
    d = len(trains[0])
    scaled = []
    for cores, es, total in zip(trains, exponents, totals):
        share, rest = divmod(total - top, d)  # the term's factor 2^(total - top) <= 1, spread evenly
        scaled.append(
            [B.scale_pow2(c, -e + share + (rest if k == 0 else 0)) for k, (c, e) in enumerate(zip(cores, es))]
        )
    return scaled, top


def _round_differentiable(cores: list[Any], caps: list[int | None], log: _ErrorLog) -> list[Any]:
    """TT-Toolbox rounding: right-to-left QR sweep (Q formed), then left-to-right truncated SVDs."""
    cores = _orthogonalized(cores, 0)
    xp = B.namespace(*cores)
    log.total = _safe_norm(cores[0])
    if not math.isfinite(log.total):
        raise ValueError(f"{log.fn}: the train has NaN or inf entries; rounding is undefined")
    threshold = log.relative * log.total
    for k in range(len(cores) - 1):
        r, n, _ = (int(s) for s in cores[k].shape)
        u, s, vh = _svd(xp.reshape(cores[k], (r * n, -1)))
        rank, discarded, needed = _choose_rank(s, threshold, caps[k])
        log.add(rank, discarded, needed)
        log.kernels.append("svd")
        cores[k] = xp.reshape(u[:, :rank], (r, n, rank))
        r2, n2, r3 = (int(v) for v in cores[k + 1].shape)
        carry = s[:rank, None] * vh[:rank, :]
        cores[k + 1] = xp.reshape(xp.matmul(carry, xp.reshape(cores[k + 1], (r2, n2 * r3))), (rank, n2, r3))
    return cores
