"""TT-cross: a TT of a function of the multi-index from a few of its values, never the dense tensor.

``cross(f, shape)`` builds a TT of ``x[i_1, ..., i_d] = f(i)``; ``apply(f, *trains)`` builds one of an
elementwise function of trains. ``f`` is called with many indices at once (one call per sweep step), and
every value it returns is kept in an exact cache, so an index is never asked for twice.

The search runs on the host in float64 numpy (index bookkeeping, SVDs of small matrices and the maxvol
pivoting are sequential host work); ``f`` receives its indices on ``like``'s backend and device, and its
values are brought to the host. The result is placed like :func:`tensornet.random_tt`'s cores.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import numpy as np

from . import _backend as B
from . import _checks, _cross_graph, _place, _pow2, _train_checks
from ._cross_cache import Evaluations
from ._cross_search import rounded, search
from ._cross_sweeps import host_gather, relative_error
from ._index import gather
from ._truncation import RankCapWarning
from .decomp import RankSpec
from .tt import TT, TrainT

__all__ = ["ConvergenceWarning", "EvalCapWarning", "apply", "cross"]


class EvalCapWarning(UserWarning):
    """``max_evals`` stopped :func:`cross` before it met ``eps``.

    The message gives the error estimated on the validation indices (``return_error=True`` returns it).
    """


class ConvergenceWarning(UserWarning):
    """:func:`cross` stopped without meeting ``eps``: the error on the validation indices stopped improving.

    Causes: ``f`` noisy, ``eps`` below ``f``'s precision, or a function of very high rank; the message
    gives the estimate.
    """


def _validation_rows(fn: str, validation: Any, shape: tuple[int, ...], rng: Any) -> np.ndarray:
    if isinstance(validation, numbers.Integral) and not isinstance(validation, bool):
        if validation < 1:
            raise ValueError(f"{fn}: validation must be >= 1 (a number of random indices), got {validation}")
        return np.stack([rng.integers(0, n, int(validation)) for n in shape], axis=1).astype(np.int64)
    if not B.is_array(validation) and not isinstance(validation, Sequence):
        raise TypeError(
            f"{fn}: validation must be an int (how many random indices) or a (k, d) integer array of "
            f"indices, got {type(validation).__name__}"
        )
    rows = _checks.index_rows(fn, validation, shape, "validation")
    if rows.shape[0] == 0:
        raise ValueError(f"{fn}: validation has no rows; give at least one index")
    return rows


@overload
def cross(
    f: Callable[[Any], Any],
    shape: int | Sequence[int],
    *,
    eps: float = ...,
    max_rank: RankSpec | None = ...,
    max_evals: int | None = ...,
    seed: Any = ...,
    like: Any = ...,
    dtype: Any = ...,
    validation: Any = ...,
    return_error: Literal[False] = ...,
) -> TT: ...
@overload
def cross(
    f: Callable[[Any], Any],
    shape: int | Sequence[int],
    *,
    eps: float = ...,
    max_rank: RankSpec | None = ...,
    max_evals: int | None = ...,
    seed: Any = ...,
    like: Any = ...,
    dtype: Any = ...,
    validation: Any = ...,
    return_error: Literal[True],
) -> tuple[TT, float]: ...
@B.exact
def cross(
    f: Callable[[Any], Any],
    shape: int | Sequence[int],
    *,
    eps: float = 1e-10,
    max_rank: RankSpec | None = None,
    max_evals: int | None = None,
    seed: Any = None,
    like: Any = None,
    dtype: Any = None,
    validation: Any = 100,
    return_error: bool = False,
) -> TT | tuple[TT, float]:
    """A TT of the tensor ``x[i] = f(i)`` over ``shape``, from a few evaluations of ``f`` (TT-cross).

    Parameters
    ----------
    f : callable
        Takes an integer array of shape ``(k, d)`` (row j is the multi-index ``(i_1..i_d)``; numpy int64,
        or int64 on ``like``'s backend and device) and returns ``k`` real values (numpy or torch array of
        shape ``(k,)``). Called once per sweep step, only with indices it has not been given before.
    shape : int or sequence of int
        Mode sizes ``(n_1, ..., n_d)``, d >= 1.
    eps : float
        Relative accuracy (> 0): the search stops when the relative error on the validation indices is
        at most ``eps / 2``, and the result is rounded with ``eps / 2``.
    max_rank : int or sequence of int, optional
        A rank spec capping the result's ranks (the search explores with index sets of up to
        ``max_rank + 2`` and rounds to the cap); if it keeps the error above eps, a
        :class:`~tensornet.RankCapWarning` gives the estimated error.
    max_evals : int, optional
        Cap on the number of indices ``f`` is asked for (validation included); if it stops the search
        before eps is met, an :class:`EvalCapWarning` gives the estimated error.
    seed : optional
        Anything ``numpy.random.default_rng`` takes; the result is deterministic for a given seed.
    like, dtype : optional
        Backend, device and dtype of the result, as :func:`tensornet.random_tt` (default numpy float64).
        The search itself runs in float64 on the host.
    validation : int or (k, d) integer array
        How many random indices (default 100) measure the error, or chosen ones. They are evaluated once
        and count in ``max_evals``.
    return_error : bool
        Also return the relative error estimated on the validation indices.

    Returns
    -------
    TT
        Placed like ``like``; with ``return_error``, a pair of it and the estimated relative error.

    Raises
    ------
    TypeError
        ``f`` not callable or returning something that is not an array of real numbers; bad ``like``,
        ``dtype``, ``max_rank``, ``max_evals`` or ``validation``.
    ValueError
        ``f`` returning the wrong shape or a NaN/inf (the message names the index); ``eps`` not > 0;
        ``max_evals`` too small to finish the first half-sweep; bad shapes or index arrays.

    Notes
    -----
    Alternating maxvol cross (Oseledets & Tyrtyshnikov 2010, "TT-cross approximation of multidimensional
    arrays"), rank-adaptive. Index sets ``I_k`` (left, modes < k) and ``J_k`` (right, modes > k) define
    the fiber ``F_k = f(I_k, :, J_k)`` of size ``(r_{k-1}, n_k, r_k)``, evaluated in one call. A left-to-
    right half-sweep takes the truncated SVD ``U_s S V^T`` of each fiber unfolded ``(r_{k-1} n_k, r_k)``,
    keeping the ``s`` values above a threshold ``delta ||F_k||``; the ``s`` dominant rows of ``U_s``
    (maxvol, Goreinov et al. 2010) plus a few random others (2, or ``s / 4`` while the fiber has full
    rank, so the rank can grow) become ``I_{k+1}``, and the core is ``U_s pinv(U_s[rows])`` (the
    rectangular cross of Mikhalev & Oseledets 2018); the last core is the fiber itself. Right-to-left
    half-sweeps do the same on the transposed unfoldings for ``J_k``. The ranks follow the numerical
    ranks of the fibers (plus the few extra rows), as in DMRG cross (Savostyanov & Oseledets 2011), at
    the cost of one fiber per core instead of two. The first right sets are the tails of 3 random
    multi-indices. The random extra rows are drawn first among the rows of the bond's previous index set,
    and maxvol starts from its previous choice, so the index sets settle: a half-sweep over settled sets
    finds its values in the cache and costs no evaluations. After a half-sweep that did not halve the
    error, the extra rows are drawn first among rows whose index of the step's mode no kept row has,
    then outside the previous set: index sets that settled on too few distinct indices of a mode to see
    a bond's rank (a rank-3 bond between rank-1 bonds needs 3) take in new ones.

    After each half-sweep the current TT is compared with ``f`` on the validation indices; the search
    stops when the relative error there is at most ``eps / 2``. When it stops halving, ``delta``
    (initially ``eps / (20 sqrt(d - 1))``) is divided by 10; after 4 half-sweeps in a row without halving
    the best error, the search ends with a warning (so it always ends: the error cannot halve forever).
    The result is rounded with ``eps / 2`` (the rule of :func:`tensornet.round`), so the total error is
    about ``eps`` or less; the kept estimate is the rounded train's error on the validation indices (a
    sample estimate, not a bound: a feature that no sampled index sees, e.g. a narrow peak, is invisible
    to any cross). Values of ``f`` far from 1 are divided by a power of two while searching (exact) and
    the factor is put back.

    Gradients: when ``f``'s values carry an autograd graph (torch values that require grad, e.g. ``f``
    closes over parameters), the result is instead the cross interpolant at the rounded train's own
    nested index sets (maxvol on its orthogonal factors), built from one more call of ``f`` at its fibers
    (``sum_k r_{k-1} n_k r_k`` points, not counted in ``max_evals``) by differentiable operations
    (:mod:`tensornet._cross_graph`): a loss of the result then has that train's exact gradient with respect
    to everything ``f`` depends on (the index sets themselves are piecewise constant). Its error is
    measured and returned like the search's; if it misses eps while the search met it, a
    :class:`ConvergenceWarning` says so. ``like`` must then be a torch array or train.

    Cost: ``O(r^2 n)`` evaluations and ``O(r^3 n)`` operations per core and half-sweep, ``O(d r^2 n)``
    memory, for ranks r and mode sizes n.
    """
    return _cross("cross", f, shape, eps, max_rank, max_evals, seed, like, dtype, validation, return_error)


def _cross(
    fn: str,
    f: Callable[[Any], Any],
    shape: Any,
    eps: Any,
    max_rank: Any,
    max_evals: Any,
    seed: Any,
    like: Any,
    dtype: Any,
    validation: Any,
    return_error: bool,
) -> Any:
    """:func:`cross`, its messages naming ``fn`` (``cross`` or ``apply``)."""
    if not callable(f):
        raise TypeError(f"{fn}: f must be callable (index array (k, d) -> k values), got {type(f).__name__}")
    shape = _checks.check_shape(fn, "shape", shape, scalar=True)
    eps_value = _checks.check_eps(fn, eps)
    if not eps_value:
        raise ValueError(f"{fn}: eps must be > 0 (a relative accuracy), got {eps}; e.g. 1e-14 for float64's")
    caps = _checks.rank_caps(fn, max_rank, len(shape))
    budget = _checks.check_count(fn, "max_evals", max_evals, optional=True)
    reference = _place.reference(fn, like)
    _check_size(fn, shape)
    rng = _checks.rng(fn, seed)
    rows = _validation_rows(fn, validation, shape, rng)
    evaluations = Evaluations(f, shape, budget, reference)
    if budget is not None and budget < np.unique(rows, axis=0).shape[0]:
        raise ValueError(
            f"{fn}: max_evals={budget} is less than the {rows.shape[0]} validation indices; raise it or "
            "pass a smaller validation="
        )
    exact = evaluations.points(rows)
    cores, error, reason = search(evaluations, rows, exact, eps_value, caps, rng)
    cores, error = rounded(cores, rows, exact, eps_value, error, evaluations, caps)
    if error > eps_value and reason is None:
        # the search met eps with index sets past the caps (it explores up to max_rank + 2); rounding to
        # max_rank is what lost it (without caps the unrounded train is kept when rounding would)
        reason = "rank"
    if evaluations.graph:
        placed, error = _with_graph(fn, evaluations, cores, rows, exact, reference, dtype)
        if error > eps_value and reason is None:
            reason = "graph"
    else:
        placed = _place.place(fn, _pow2.restore(cores, evaluations.exponent, at=-1), like, dtype)
    if error > eps_value and reason is not None:
        _warn(fn, reason, eps_value, error, rows.shape[0], budget, evaluations.count)
    result = TT._trusted(placed)
    return (result, error) if return_error else result


def _check_size(fn: str, shape: tuple[int, ...]) -> None:
    """Refuse modes too large for even the first fibers (3 index rows of d ints and a value per entry)."""
    sizes = [n * 3 * (len(shape) + 1) for n in shape]
    _place.check_memory(fn, sizes, 8, hint="; a mode this large needs a coarser grid or a QTT reshaping")


def _with_graph(
    fn: str,
    evaluations: Evaluations,
    cores: list[np.ndarray],
    rows: np.ndarray,
    exact: np.ndarray,
    reference: Any,
    dtype: Any,
) -> tuple[list[Any], float]:
    """The differentiable cores (:mod:`tensornet._cross_graph`) placed like ``reference``, and their error."""
    if reference is None or B.backend_name(reference) != "torch":
        raise TypeError(
            f"{fn}: f returned values that require grad, but the result would be a numpy train, which cannot "
            "carry their gradient; pass like=<a torch tensor or train> to get a differentiable torch train"
        )
    target = _place.place(fn, [np.zeros((1, 1, 1))], reference, dtype)[0]
    placed = [c.to(device=target.device) for c in _cross_graph.graph_train(evaluations, cores, target.dtype)]
    host = [np.asarray(B.to_backend(c, "numpy")) for c in placed]
    values = B.scale_pow2(exact, evaluations.exponent)
    scale = float(np.linalg.norm(values)) or 1.0
    return placed, relative_error(host_gather(host, rows), values, scale)


def _warn(
    fn: str, reason: str, eps: float, error: float, checks: int, budget: int | None, count: int
) -> None:
    estimate = f"the relative error estimated on {checks} validation indices is {error:.3g}"
    if reason == "evals":
        message = f"{fn}: max_evals={budget} stopped the search before eps={eps:g} was met; {estimate}. "
        message += "Raise max_evals to meet eps."
        category: type[Warning] = EvalCapWarning
    elif reason == "rank":
        message = f"{fn}: max_rank kept the result from meeting eps={eps:g}; {estimate}. Raise max_rank."
        category = RankCapWarning
    elif reason == "graph":
        message = (
            f"{fn}: the search met eps={eps:g}, but its differentiable form (the cross interpolant at the "
            f"result's index sets, which carries the gradient) did not: {estimate}. A smaller eps gives the "
            "interpolant more room."
        )
        category = ConvergenceWarning
    else:
        message = (
            f"{fn}: the error stopped improving before eps={eps:g} was met ({count} evaluations); "
            f"{estimate}. f may be noisy, eps below its precision, or the tensor of high rank (then a "
            "larger eps, or a max_rank to bound the work, may be what you want)."
        )
        category = ConvergenceWarning
    B.warn(message, category)


@overload
def apply(
    f: Callable[..., Any],
    *trains: TrainT,
    eps: float = ...,
    max_rank: RankSpec | None = ...,
    max_evals: int | None = ...,
    seed: Any = ...,
    validation: Any = ...,
    return_error: Literal[False] = ...,
) -> TrainT: ...
@overload
def apply(
    f: Callable[..., Any],
    *trains: TrainT,
    eps: float = ...,
    max_rank: RankSpec | None = ...,
    max_evals: int | None = ...,
    seed: Any = ...,
    validation: Any = ...,
    return_error: Literal[True],
) -> tuple[TrainT, float]: ...
@B.exact
def apply(
    f: Callable[..., Any],
    *trains: TrainT,
    eps: float = 1e-10,
    max_rank: RankSpec | None = None,
    max_evals: int | None = None,
    seed: Any = None,
    validation: Any = 100,
    return_error: bool = False,
) -> TrainT | tuple[TrainT, float]:
    """An elementwise function of one or more trains of one shape, by cross on their entries.

    Parameters
    ----------
    f : callable
        ``f(v_1, ..., v_m)`` takes ``m`` arrays of ``k`` entries (one per train, on the trains' backend)
        and returns the ``k`` values, e.g. ``tn.apply(np.exp, t)``, ``tn.apply(lambda a, b: a / b, t, u)``.
    *trains : TT or TTM
        Of one type, shape, backend, dtype and device.
    eps, max_rank, max_evals, seed, validation, return_error
        As :func:`cross`.

    Returns
    -------
    TT or TTM (the trains' type, backend, dtype and device), or (train, float) with ``return_error``

    Raises
    ------
    TypeError
        No trains, trains of different types, backends or dtypes, a non-callable ``f``; and as
        :func:`cross`.
    ValueError
        Different shapes or devices; and as :func:`cross`.

    Notes
    -----
    ``y[i] = f(x_1[i], ..., x_m[i])`` is approximated by :func:`cross` on the index function
    ``i -> f(gather(x_1, i), ...)``: entries are gathered from the cores (:func:`tensornet.gather`),
    never through ``full()``; a TTM's modes ``m_k n_k`` are merged for the cross. With torch trains that
    require grad (and a differentiable ``f``), the result is differentiable in their cores (see
    :func:`cross`: the cross interpolant at the result's index sets).

    Cost: that of :func:`cross` plus ``O(d r^2)`` per entry gathered from each train of rank r.
    """
    if not callable(f):
        raise TypeError(
            f"apply: f must be callable (entries of the trains -> values), got {type(f).__name__}"
        )
    if not trains:
        raise TypeError("apply: give at least one TT or TTM after f, e.g. tn.apply(np.exp, t)")
    first = trains[0]
    _train_checks.check_train("apply", first, "train 0")
    for other in trains[1:]:
        _train_checks.check_same_structure("apply", first, other)
    flat = [TT._trusted(t._tt_layout()) for t in trains]

    def entries(index: Any) -> Any:
        return f(*(gather(t, index) for t in flat))

    train, error = _cross(
        "apply", entries, flat[0].shape, eps, max_rank, max_evals, seed, first, None, validation, True
    )
    shaped = first._from_tt_layout(train.cores)
    return (shaped, error) if return_error else shaped
