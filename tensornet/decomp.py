"""Decompositions: TT-SVD of dense tensors and matrices, orthogonalisation and rounding.

Truncation rule (TT-Toolbox): with ``eps`` given, each of the d - 1 unfoldings drops the largest
number of trailing singular values whose root-sum-square is at most ``eps / sqrt(d - 1) * ||x||_F``,
which guarantees ``||x - result||_F <= eps * ||x||_F`` and gives the smallest ranks meeting the
per-unfolding threshold; ``eps >= 1`` (any finite size) gives rank 1 everywhere, which meets it because
truncation is an orthogonal projection. ``max_rank`` caps every rank: a rank spec (an int, the d - 1 bond ranks, or
the d + 1 ranks with the boundary 1s, such as another train's ``ranks``). When both are given and the
cap is tighter than eps requires, the cap wins and a :class:`RankCapWarning` states the error bound
actually achieved; ``return_error=True`` also returns that bound. Ranks never exceed their useful
maximum ``min(prod n_1..n_k, prod n_{k+1}..n_d)`` (they are clipped by the SVD itself).

The bound counts what truncation discards, computed from orthogonal factorisations (or from a Gram
matrix only where the discarded norm is measured on the rotated data itself, see
:mod:`tensornet._truncation`); like any SVD-based algorithm the result also carries floating-point
rounding of order ``u ||x||`` (u the unit roundoff), amplified only where the train's cores cancel.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal, overload

from . import _backend as B
from . import _checks, _orthogonal, _pow2, _round, _train_checks
from ._backend import Array
from ._layout import ttm_layout
from ._truncation import ErrorLog, RankCapWarning, safe_norm, truncated_factors
from .tt import TT, TTM, Train, TrainT

__all__ = ["RankCapWarning", "orthogonalize", "round", "round_sum", "tt_svd", "ttm_svd"]

RankSpec = int | Sequence[int]
"""An int (every bond), the d - 1 bond ranks, or the d + 1 ranks with the boundary 1s."""


# --- TT-SVD -----------------------------------------------------------------------------------------
def _dense_shift(fn: str, x: Any) -> int:
    """Validate a dense input; the power-of-two exponent to divide it by before decomposing.

    0 unless its largest magnitude is far from 1 (:func:`tensornet._pow2.safe_exponent`).
    """
    _checks.check_dense(fn, x)
    top = B.magnitude(x)  # NaN propagates through max: one pass checks finiteness too
    if not math.isfinite(top):
        raise ValueError(f"{fn}: the array contains NaN or inf; the decomposition is undefined")
    return _pow2.safe_exponent([top], x.dtype)


def _tt_svd_cores(
    x: Array, eps: float | None, caps: list[int | None], log: ErrorLog
) -> tuple[list[Array], float]:
    """The TT cores of the dense ``x`` by sequential truncated SVDs, and the relative bound of what they dropped.

    ``log`` records the truncations (whether a rank cap kept the bound above ``eps``); nothing is warned
    here: the public function does that.
    """
    xp = B.namespace(x)
    shape = tuple(int(n) for n in x.shape)
    d = len(shape)
    if d == 1:
        # the train must not share the caller's memory
        return [B.copy(xp.reshape(x, (1, shape[0], 1)))], log.relative_bound(safe_norm(x))
    # ||x||_F is the norm of the first unfolding's singular values: no separate pass over x
    log.spread(eps, d - 1)
    cores = []
    rank = 1
    rest = x
    threshold: float | None = None
    for k in range(d - 1):
        rest = xp.reshape(rest, (rank * shape[k], -1))
        kept, rest, _ = truncated_factors(rest, threshold, caps[k], log)
        threshold = log.threshold
        new_rank = int(kept.shape[1])
        cores.append(xp.reshape(kept, (rank, shape[k], new_rank)))
        rank = new_rank
    cores.append(xp.reshape(rest, (rank, shape[-1], 1)))
    return cores, log.relative_bound(log.total)


def _decomposed(
    tensor: Array, caps: list[int | None], shift: int, log: ErrorLog
) -> tuple[list[Array], float]:
    """TT-SVD of ``tensor`` divided by ``2^shift``, the scale restored on the last core, and the bound."""
    cores, bound = _tt_svd_cores(B.scale_pow2(tensor, -shift) if shift else tensor, log.eps, caps, log)
    return _pow2.restore(cores, shift, at=-1), bound


@overload
def tt_svd(
    x: Array, *, eps: float | None = ..., max_rank: RankSpec | None = ..., return_error: Literal[False] = ...
) -> TT: ...
@overload
def tt_svd(
    x: Array, *, eps: float | None = ..., max_rank: RankSpec | None = ..., return_error: Literal[True]
) -> tuple[TT, float]: ...
@B.exact
def tt_svd(
    x: Array, *, eps: float | None = None, max_rank: RankSpec | None = None, return_error: bool = False
) -> TT | tuple[TT, float]:
    """TT decomposition of a dense array by sequential truncated SVDs (Oseledets 2011).

    Parameters
    ----------
    x : array
        float32/float64, d >= 1 dimensions, finite.
    eps : float, optional
        Relative accuracy: ``||x - tt||_F <= eps ||x||_F`` (see the module notes). None: no truncation.
    max_rank : int or sequence of int, optional
        A rank spec capping the ranks (the cap wins over eps, with a :class:`RankCapWarning`).
    return_error : bool
        Also return the guaranteed relative error bound (a float).

    Returns
    -------
    TT, or (TT, float) with ``return_error``

    Raises
    ------
    TypeError
        Non-arrays, integer/complex/half-precision dtypes, a bad ``eps`` or ``max_rank`` type.
    ValueError
        NaN/inf entries, zero-size dimensions, a 0-d array, negative/NaN/inf eps, max_rank < 1 or
        with the wrong number of entries.

    Notes
    -----
    Unfolding k of the remainder, ``(r_{k-1} n_k, n_{k+1} ... n_d)``, is factored by a truncated SVD
    ``U S V^T``; ``U`` becomes core k and ``S V^T`` the next remainder. Wide unfoldings take the
    certified Gram route or an R-only QR of their transpose first (:mod:`tensornet._truncation`).

    Cost: ``O(n prod(n) r)`` with the ranks r found, dominated by the first unfolding.
    """
    eps = _checks.check_eps("tt_svd", eps)
    shift = _dense_shift("tt_svd", x)
    caps = _checks.rank_caps("tt_svd", max_rank, x.ndim)
    log = ErrorLog("tt_svd", eps)
    cores, bound = _decomposed(x, caps, shift, log)
    log.warn_if_capped(bound)  # at the user's line: B.warn skips tensornet's frames
    result = TT._trusted(cores)
    return (result, bound) if return_error else result


def _check_matrix_shapes(fn: str, a: Array, row_shape: Any, col_shape: Any) -> tuple[tuple[int, ...], ...]:
    if a.ndim != 2:
        raise ValueError(f"{fn}: expected a 2-D matrix (M, N), got shape {tuple(a.shape)}")
    rows = _checks.check_shape(fn, "row_shape", row_shape)
    cols = _checks.check_shape(fn, "col_shape", col_shape)
    _checks.check_product(fn, "row_shape", rows, int(a.shape[0]), f"the matrix has {int(a.shape[0])} rows")
    _checks.check_product(fn, "col_shape", cols, int(a.shape[1]), f"the matrix has {int(a.shape[1])} columns")
    _checks.check_same_length(fn, ("row_shape", "col_shape"), rows, cols)
    return rows, cols


@overload
def ttm_svd(
    a: Array,
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    *,
    eps: float | None = ...,
    max_rank: RankSpec | None = ...,
    return_error: Literal[False] = ...,
) -> TTM: ...
@overload
def ttm_svd(
    a: Array,
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    *,
    eps: float | None = ...,
    max_rank: RankSpec | None = ...,
    return_error: Literal[True],
) -> tuple[TTM, float]: ...
@B.exact
def ttm_svd(
    a: Array,
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    *,
    eps: float | None = None,
    max_rank: RankSpec | None = None,
    return_error: bool = False,
) -> TTM | tuple[TTM, float]:
    """TT-matrix decomposition of a dense ``(M, N)`` matrix.

    This is how a pretrained weight ``(out, in)`` becomes a TTM.

    Parameters
    ----------
    a : array of shape ``(M, N)``
    row_shape, col_shape : sequence of int
        ``M = prod(row_shape)``, ``N = prod(col_shape)``, one entry per core each.
    eps, max_rank, return_error
        As :func:`tt_svd`.

    Returns
    -------
    TTM, or (TTM, float) with ``return_error``

    Raises
    ------
    TypeError, ValueError
        As :func:`tt_svd`; shapes that are not sequences of positive ints, do not multiply to the
        matrix's sizes or have different lengths.

    Notes
    -----
    The matrix is reshaped to ``(m_1, .., m_d, n_1, .., n_d)``, its modes interleaved to
    ``(m_1 n_1, ..., m_d n_d)`` and decomposed by :func:`tt_svd` (same accuracy contract).

    Cost: ``O(M N r)``.
    """
    eps = _checks.check_eps("ttm_svd", eps)
    shift = _dense_shift("ttm_svd", a)
    row_shape, col_shape = _check_matrix_shapes("ttm_svd", a, row_shape, col_shape)
    d = len(row_shape)
    caps = _checks.rank_caps("ttm_svd", max_rank, d)
    xp = B.namespace(a)
    tensor = xp.reshape(a, (*row_shape, *col_shape))
    order = [axis for k in range(d) for axis in (k, d + k)]
    merged = tuple(m * n for m, n in zip(row_shape, col_shape))
    tensor = xp.reshape(xp.permute_dims(tensor, tuple(order)), merged)
    log = ErrorLog("ttm_svd", eps)
    cores, bound = _decomposed(tensor, caps, shift, log)
    log.warn_if_capped(bound)  # at the user's line: B.warn skips tensornet's frames
    result = TTM._trusted(ttm_layout(cores, row_shape, col_shape))
    return (result, bound) if return_error else result


# --- orthogonalisation and rounding -----------------------------------------------------------------
@B.exact
def orthogonalize(x: TrainT, *, center: int | Literal["left", "right"] = "left") -> TrainT:
    """The same tensor with cores left-orthogonal before ``center`` and right-orthogonal after it.

    Parameters
    ----------
    x : TT or TTM
    center : int, "left" or "right"
        The core that carries the norm (negative from the end). ``"left"`` (default) makes every core
        but the last left-orthogonal (center = d - 1); ``"right"`` every core but the first
        right-orthogonal (center = 0).

    Returns
    -------
    TT or TTM
        Ranks may shrink to their useful maximum.

    Raises
    ------
    TypeError
        ``x`` not a train, a center that is not an int or "left"/"right", half-precision cores.
    ValueError
        A center out of range, NaN/inf entries.

    Notes
    -----
    QR sweeps from both ends towards ``center``: ``G_k = Q R``, ``G_k <- Q``, ``G_{k+1} <- R G_{k+1}``
    (and LQ from the right).

    Cost: ``O(d n r^3)``.
    """
    _train_checks.check_train("orthogonalize", x)
    d = x.ncores
    position = {"left": d - 1, "right": 0}.get(center, center) if isinstance(center, str) else center
    if isinstance(position, bool) or not isinstance(position, numbers.Integral):
        raise TypeError(f"orthogonalize: center must be an int, 'left' or 'right', got {center!r}")
    if not -d <= position < d:
        raise ValueError(f"orthogonalize: center {position} is out of range for a train with {d} cores")
    _checks.check_precision("orthogonalize", x.dtype)
    at = int(position) % d
    cores, shift = _pow2.normalize_cores("orthogonalize", x._tt_layout())
    result, extra = _orthogonal.orthogonalized(cores, at)
    return x._from_tt_layout(_pow2.restore(result, shift + extra, at=at))


@overload
def round(
    x: TrainT, *, eps: float | None = ..., max_rank: RankSpec | None = ..., return_error: Literal[False] = ...
) -> TrainT: ...
@overload
def round(
    x: TrainT, *, eps: float | None = ..., max_rank: RankSpec | None = ..., return_error: Literal[True]
) -> tuple[TrainT, float]: ...
@B.exact
def round(
    x: TrainT, *, eps: float | None = None, max_rank: RankSpec | None = None, return_error: bool = False
) -> TrainT | tuple[TrainT, float]:
    """Recompress a TT or TTM to the smallest ranks meeting ``eps`` and/or ``max_rank``.

    Parameters
    ----------
    x : TT or TTM
        float32/float64 cores.
    eps, max_rank, return_error
        As :func:`tt_svd`; ``max_rank`` may be another train's ``ranks``.

    Returns
    -------
    TT or TTM (the type of ``x``), or (train, float) with ``return_error``
        ``||x - round(x)||_F <= eps ||x||_F``.

    Raises
    ------
    TypeError
        Non-trains, float16/bfloat16 cores, a bad ``eps`` or ``max_rank`` type.
    ValueError
        NaN/inf entries, bad ``eps``/``max_rank`` values (see :func:`tt_svd`).

    Notes
    -----
    A right-to-left sweep of R-only QRs, then left-to-right truncations of small matrices (module notes
    give the exact rule). The route is chosen per call and per bond (see :mod:`tensornet._round`): rows
    of the QRs' R factors that hold only rounding are dropped (exactly rank-deficient sums such as
    ``t + t + t`` then cost what their true rank costs), and each truncation uses the certified Gram
    kernel where it can certify and the SVD where it cannot; cores requiring grad take the Q-forming
    QR and SVD path, which autograd differentiates.

    Cost: ``O(d n R^3)`` for input ranks R (output ranks r: ``O(d n r R^2)`` for the truncations).
    """
    eps = _checks.check_eps("round", eps)
    _train_checks.check_train("round", x)
    _checks.check_precision("round", x.dtype)
    caps = _checks.rank_caps("round", max_rank, x.ncores)
    result, log = _round.rounded("round", x, [x._tt_layout()], eps, caps, _round.AUTO)
    bound = log.finish(log.total)
    return (result, bound) if return_error else result


def _check_terms(fn: str, trains: Any) -> list[Train]:
    if isinstance(trains, (TT, TTM)) or not isinstance(trains, Sequence) or isinstance(trains, str):
        raise TypeError(
            f"{fn}: expected a sequence of TT or TTM trains such as [t1, t2, t3], got "
            f"{type(trains).__name__}; to round a single train use tn.round"
        )
    terms = list(trains)
    if not terms:
        raise ValueError(f"{fn}: the sequence of trains is empty; give at least one train")
    for i, t in enumerate(terms):
        _train_checks.check_train(fn, t, f"term {i}")
    for i, t in enumerate(terms[1:], start=1):
        try:
            _train_checks.check_same_structure(fn, terms[0], t)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{err} (term 0 against term {i})") from None
    return _train_checks.promoted(*terms)


@overload
def round_sum(
    trains: Sequence[TrainT],
    *,
    eps: float | None = ...,
    max_rank: RankSpec | None = ...,
    return_error: Literal[False] = ...,
) -> TrainT: ...
@overload
def round_sum(
    trains: Sequence[TrainT],
    *,
    eps: float | None = ...,
    max_rank: RankSpec | None = ...,
    return_error: Literal[True],
) -> tuple[TrainT, float]: ...
@B.exact
def round_sum(
    trains: Sequence[TrainT],
    *,
    eps: float | None = None,
    max_rank: RankSpec | None = None,
    return_error: bool = False,
) -> TrainT | tuple[TrainT, float]:
    """``round(t_1 + ... + t_m, eps=..., max_rank=...)`` without forming the sum's block cores.

    Parameters
    ----------
    trains : sequence of TT, or of TTM
        The terms, of one type, shape, backend, dtype and device.
    eps, max_rank, return_error
        As :func:`round`.

    Returns
    -------
    TT or TTM, or (train, float) with ``return_error``
        Same result and guarantee as :func:`round` of the sum (``||s - result||_F <= eps ||s||_F`` for
        ``s = t_1 + ... + t_m``, smallest ranks meeting the per-unfolding threshold).

    Raises
    ------
    TypeError
        Not a non-empty sequence of TT (or of TTM) trains; and as :func:`round`.
    ValueError
        Shapes, dtypes or devices that disagree (naming the term); and as :func:`round`.

    Notes
    -----
    The sum's core k is block diagonal (ranks ``R_k = r_1k + ... + r_mk``); the sweeps only multiply it
    by small matrices, block by block, so the zero blocks are neither stored nor multiplied. With ``P``
    (s, R) a carry: ``P x_1 core_k`` costs ``s n sum_i r_i^2`` instead of ``s n R^2``, and the same for
    ``core_k x_3 F``; the R-only QRs of the first sweep (``O(n R^3)`` per core) are what remains of the
    dense cost. Terms that repeat or are linear combinations of others are recognised by those QRs at
    working precision, and the rest of the sweep then runs at the sum's true rank.

    Cost: ``O(d n R^3)`` with ``R = sum_i r_i``; memory ``O(n R max_i r_i)`` per core instead of
    ``O(n R^2)``.
    """
    fn = "round_sum"
    eps = _checks.check_eps(fn, eps)
    terms = _check_terms(fn, trains)
    first = terms[0]
    _checks.check_precision(fn, first.dtype)
    caps = _checks.rank_caps(fn, max_rank, first.ncores)
    result, log = _round.rounded(fn, first, [t._tt_layout() for t in terms], eps, caps, _round.AUTO)
    bound = log.finish(log.total)
    return (result, bound) if return_error else result  # type: ignore[return-value]
