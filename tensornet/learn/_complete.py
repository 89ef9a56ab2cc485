"""TT completion / regression from sampled entries, choosing the ranks by held-back error: ``tn.complete``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .. import _backend as B
from .. import _checks, _pow2
from .._backend import Array
from .._cross import ConvergenceWarning
from .._truncation import RankCapWarning
from ..decomp import round as tt_round
from ..tt import TT
from . import _als, _data
from ._search import UNINFORMED, Search, Step, relative_error

__all__ = ["CompletionInfo", "Step", "complete"]

_STARTS = 8  # rank-1 starts tried (ones, then random), each for a few sweeps: rank-1 ALS has local minima


@dataclass(frozen=True)
class CompletionInfo:
    """What :func:`complete` did (``return_info=True``).

    ``steps``: every sweep (:class:`Step`); ``ranks``: the returned train's; ``validation_error``: the relative
    error of the chosen model on the held-back samples (None without them); ``train_error``: the returned
    train's relative error on all samples; ``stop``: why the rank search ended ("validation": the held-back
    error stopped falling, "eps": it met eps, "exact": it fits to rounding, "max_rank": no rank could grow,
    "max_iter": the sweep budget ran out).
    """

    steps: tuple[Step, ...]
    ranks: tuple[int, ...]
    validation_error: float | None
    train_error: float
    stop: str


class _Problem(NamedTuple):
    """The samples and limits every search of one call shares (the leading arguments of :func:`_run`)."""

    rows: np.ndarray
    scaled: Array
    weights: Array | None
    shape: tuple[int, ...]
    fit_rows: np.ndarray
    held_rows: np.ndarray
    caps: list[int | None]
    eps: float | None
    budget: int


@B.exact
def complete(
    indices: Any,
    values: Any,
    shape: int | Sequence[int],
    *,
    max_rank: Any = None,
    eps: float | None = None,
    x0: TT | None = None,
    validation: float | int = 0.1,
    max_iter: int = 400,
    seed: Any = None,
    weights: Any = None,
    restarts: int = 4,
    return_info: bool = False,
) -> Any:
    """A TT of ``shape`` fitted to sampled entries, with ranks chosen by the error on held-back samples.

    Parameters
    ----------
    indices : (k, d) integer array (numpy, torch) or nested sequence
        The multi-indices of the samples (negative entries count from the end; repeats allowed).
    values : (k,) real array or sequence
        The sampled values. Their backend, device and float dtype (float64 for integers and sequences) are
        the result's and the computation's.
    shape : int or sequence of int
        Mode sizes ``(n_1, ..., n_d)``.
    max_rank : int or sequence of int, optional
        A rank spec capping the ranks the search may reach (an int, the d - 1 bond ranks, or d + 1 ranks).
    eps : float, optional
        Stop growing ranks once the held-back relative error is at most ``eps`` (without held-back samples:
        the fitting error).
    x0 : TT, optional
        A train to start from (its ranks are the first ones tried); default the rank-1 train of ones. It is
        a candidate itself: the result's held-back error is never above ``x0``'s.
    validation : float or int
        The fraction in [0, 1) of the samples held back to choose the ranks (default 0.1), or their number.
        0 fits all samples and then needs ``max_rank`` or ``eps`` to decide the ranks.
    max_iter : int
        The most sweeps in all (each sweep solves every core twice).
    seed : optional
        Anything ``numpy.random.default_rng`` takes: the held-back samples and the random rank-1 starts are
        drawn from it, so the result is deterministic for a seed.
    weights : (k,) array, optional
        Non-negative weights of a weighted least-squares fit (e.g. inverse noise variances); errors are
        weighted the same way.
    restarts : int
        When the search from rank 1 learns nothing (held-back error above 0.9), up to this many searches
        from random trains of ranks 2, 3, ... (without ``x0`` only); the best is kept.
    return_info : bool
        Also return a :class:`CompletionInfo` (errors per sweep, the ranks, why it stopped).

    Returns
    -------
    TT, or (TT, CompletionInfo) with ``return_info``

    Raises
    ------
    TypeError
        Non-integer indices, complex or non-numeric values or weights, bad option types.
    ValueError
        Indices not of shape (k, d); values (or weights) of another length; NaN/inf values; negative weights;
        ``validation`` holding back every sample; ``validation=0`` with neither ``max_rank`` nor ``eps``.
    IndexError
        An index outside its mode.

    Warns
    -----
    ConvergenceWarning
        The held-back error of the result is above 0.5 (the samples did not determine a train the sweeps
        found), or ``eps`` was not met.
    RankCapWarning
        ``max_rank`` kept the search from meeting ``eps``.

    Notes
    -----
    Alternating least squares on the sampled entries (:mod:`tensornet.learn._als`): with the other cores
    fixed, core k's slices solve independent linear least-squares problems, the other cores kept orthogonal,
    with a proximal term ``1e-6 tr(A^T A)/p ||g - g_old||^2`` (each solve can only lower the fitting error,
    and the fixed points are those of the plain problem). Rank-1 ALS has local minima even on small exact
    problems, so without ``x0`` eight rank-1 starts (ones, seven random) get 4 sweeps each and the best fit
    is kept (cheap: ``O(k d)`` a sweep). The ranks are found by continuation from there (or from ``x0``):
    sweeps run at fixed ranks until three of them improve the fitting error by less than 10%. Where the last
    sweep still gained 1% (ALS crawling through a "swamp" of strongly coupled cores), up to 8 Levenberg-
    Marquardt steps on all cores at once finish the stage (:mod:`tensornet.learn._gauss_newton`; only for at
    most 2000 unknowns; each step counts as a sweep). Then one pass adds a direction to every bond -- the
    leading singular vector of the residual's gradient with respect to the merged pair of cores around it
    (the enrichment of AMEn, Dolgov & Savostyanov 2014), with a zero row in the next core so the fit is
    unchanged until the next solve uses it. A bond stays where ``max_rank``, its useful rank or the samples
    per slice (``r_{k-1} r_k`` unknowns per slice) stop it. The model with the smallest held-back error is
    kept; the search ends when two rank steps in a row do not take it below 0.9x the best (four while it is
    above 0.9, when nothing has been learnt yet), when it meets ``eps`` (without ``eps``: ``sqrt(u) / 10``,
    1.5e-9 in float64), or at the limits. Every bond of the chosen model drops the singular values below its
    held-back error (at least ``sqrt(u) / 10``), which removes directions the data do not resolve (exactly
    low-rank data returns its true ranks), and it is refitted on all samples at those ranks. Values are
    divided by a power of two near their largest magnitude while fitting (exact), and the factor is put back.

    Why continuation: growing from rank 1 starts each stage near the previous fit, which finds far better
    minima than sweeps at the final ranks from a random train (a rank-(4, 5, 3) train on 20^4 from 10,000
    samples: 2e-15 test error, against 1e-3 for ALS told the rank; ``benchmarks/results/complete.md``). Why
    the Gauss-Newton steps: a stage that ends before it converges sends the next ranks down a worse path
    (``1/(1 + x_1 + .. + x_6)`` on 10^6 from 5,000 samples: 2.0e-4 test error without them, 2.7e-6 with).
    Noisy data: the held-back error stops falling at the noise level, and the ranks stop there.

    Limits, measured (``benchmarks/results/complete.md``): generic trains of many modes need many samples,
    far more than their ``~d n r^2`` parameters. A random rank-3 train with modes of 10 (``tn.random_tt``)
    is recovered (test error 1e-14) from 15,000 samples with 6 modes but not from 10,000; from 100,000 with 7
    but not 50,000; from 600,000 with 8 but not 300,000. That grows like ``n^(d/2)`` (times 15 to 60 here):
    the balanced unfolding of an even-order train is a rank-r matrix of ``n^(d/2)`` rows and columns, and no
    polynomial-time completion method is known to succeed from fewer than about ``n^(d/2)`` samples of a
    generic tensor (for order 3, Barak & Moitra, COLT 2016, tie fewer samples to refuting random constraint
    problems, believed hard). Below that every local method tried from scratch fails (ALS, Gauss-Newton,
    Riemannian CG, two-site sweeps, regularisation continuations, reweightings, starts at the true rank, a
    coarsened problem, a spectral start, Adam on an over-parameterised train from a small start), although
    sweeps converge from the truth with noise of the cores' size on every core: a good ``x0`` is what helps
    there. When the search from rank 1 learns nothing, ``restarts`` searches from random trains of ranks 2,
    3, ... are tried (on a random rank-3 train of 10^6 from 15,000 samples, about half of such starts
    succeed).

    Slices with no samples get zero cores. A sweep that raises the fitting error (exact ALS cannot; in
    floating point, directions the samples barely see can grow until the predictions lose all precision) is
    undone and ends its stage. A model whose held-back error is above 0.9 (nothing learnt) is returned as
    found, neither rounded nor refitted; where no model found predicts the held-back samples better than the
    zero train (held-back error 1), the zero train of rank 1 is returned, with the warning (on a random
    rank-3 train of 10^8 from 100,000 samples the best found had held-back error 1.01 and test error 6.2:
    its predictions of unseen entries were far from the data's scale).

    Cost: ``O(k d r^4 + d n r^6)`` per sweep for k samples and ranks r; memory ``O(k (d + r^2))``; a
    Gauss-Newton step ``O(k d^2 r^4 + P^3)`` for ``P <= 2000`` unknowns.
    """
    fn = "complete"
    shape = _checks.check_shape(fn, "shape", shape, scalar=True)
    rows = _checks.index_rows(fn, indices, shape, "indices")
    if rows.shape[0] == 0:
        raise ValueError(f"{fn}: indices has no rows; give at least one sample")
    values = B.detach(_data.check_values(fn, values, int(rows.shape[0])))
    weights = _data.check_weights(fn, weights, values)
    eps = _checks.check_eps(fn, eps)
    caps = _checks.rank_caps(fn, max_rank, len(shape))
    budget = _checks.check_count(fn, "max_iter", max_iter)
    held_count = _data.validation_count(fn, validation, int(rows.shape[0]))
    if held_count == 0 and eps is None and max_rank is None:
        raise ValueError(
            f"{fn}: validation=0 leaves no samples to choose the ranks by; give max_rank or eps (or hold back "
            "samples with validation=0.1)"
        )
    rng = _checks.rng(fn, seed)
    scaled, exponent = B.normalized(values)
    cores = _data.starting_cores(fn, x0, shape, scaled, int(exponent))
    fit_rows, held_rows = _data.split(rng, int(rows.shape[0]), held_count)
    restarts = _checks.check_count(fn, "restarts", restarts, minimum=0)
    data = _Problem(rows, scaled, weights, shape, fit_rows, held_rows, caps, eps, budget)
    found = _run(*data, cores, rng, x0 is None, x0 is not None)
    if x0 is None:
        found = _restarted(found, data, restarts, rng, scaled)
    search, cores, chosen_error, stop = found
    # where no train found predicts the held-back samples better than 0 does, 0 is the answer
    zero = held_count > 0 and chosen_error >= 1.0
    if zero:
        cores = [_as_like(np.zeros((1, n, 1)), scaled) for n in shape]
        chosen_error = search.held_error(cores)
    cores, train_error = _settled(search, cores, chosen_error, data, held_count)
    result = TT._trusted(_pow2.spread(cores, exponent))
    _warn(fn, chosen_error, eps, stop, held_count > 0, zero)
    if not return_info:
        return result
    return result, CompletionInfo(
        tuple(search.steps), result.ranks, chosen_error if held_count else None, train_error, stop
    )


def _restarted(found: Any, data: _Problem, restarts: int, rng: np.random.Generator, scaled: Array) -> Any:
    """When the search from rank 1 learnt nothing, searches from random trains of ranks 2, 3, ...; the best."""
    shape, caps = data.shape, data.caps
    for attempt in range(restarts):
        if found[2] < UNINFORMED:
            break
        start = _random_train(rng, shape, caps, 2 + attempt, scaled)
        again = _run(*data, start, rng, False)
        if again[2] < found[2]:
            found = again
    return found


def _settled(
    search: Search, cores: list[Array], chosen_error: float, data: _Problem, held_count: int
) -> tuple[list[Array], float]:
    """The chosen model rounded at its own error level, refitted on all samples; (cores, fitting error)."""
    rows, scaled, weights, shape = data.rows, data.scaled, data.weights, data.shape
    everything = _als.make_samples(rows, scaled, weights, shape)
    if chosen_error >= UNINFORMED:  # nothing learnt: rounding at that level (or refitting) has no meaning
        return cores, relative_error(_als.evaluate(cores, everything.index), everything)
    # rounded at its own error level first: directions the data do not resolve are dropped before the refit,
    # which would otherwise let them drift on entries no sample constrains. Every bond drops the singular
    # values below that level (tt_round spreads its eps over the d - 1 bonds, hence the sqrt(d - 1)); below
    # sqrt(u) / 10 everything counts as resolved to rounding.
    tolerance = max(chosen_error, search.exact) * math.sqrt(max(len(shape) - 1, 1))
    cores = list(tt_round(TT._trusted(cores), eps=tolerance).cores)
    if not held_count:
        return cores, chosen_error
    return search.refit(_als.orthogonalize_right(cores), everything)


def _run(
    rows: np.ndarray,
    scaled: Array,
    weights: Array | None,
    shape: tuple[int, ...],
    fit_rows: np.ndarray,
    held_rows: np.ndarray,
    caps: list[int | None],
    eps: float | None,
    budget: int,
    cores: list[Array],
    rng: np.random.Generator,
    starts: bool,
    informed: bool = False,
) -> tuple[Search, list[Array], float, str]:
    """The rank search on the fitting samples, judged on the held-back ones."""
    xp = B.namespace(scaled)

    def subset(positions: np.ndarray) -> _als.Samples:
        where = B.to_backend(positions, B.backend_name(scaled), device=B.device(scaled))
        part = None if weights is None else xp.take(weights, where, axis=0)
        return _als.make_samples(rows[positions], xp.take(scaled, where, axis=0), part, shape)

    held = subset(held_rows) if held_rows.shape[0] else None
    search = Search(subset(fit_rows), held, caps, eps, budget, shape)
    search.informed = informed
    if starts:
        cores = search.start([cores, *(_random_start(rng, shape, scaled) for _ in range(_STARTS - 1))])
    error, cores, stop = search.run(_als.orthogonalize_right(cores))
    return search, cores, error, stop


def _random_train(
    rng: np.random.Generator, shape: tuple[int, ...], caps: list[int | None], rank: int, like: Array
) -> list[Array]:
    """Random cores of bond ranks ``rank`` (clipped to the caps and useful ranks), entries of size ~1."""
    bonds = [1]
    for k in range(1, len(shape)):
        useful = min(math.prod(shape[:k]), math.prod(shape[k:]))
        bonds.append(min(rank, useful, caps[k - 1] or rank))
    bonds.append(1)
    return [_as_like(rng.standard_normal((bonds[k], n, bonds[k + 1])) / math.sqrt(bonds[k]), like)
            for k, n in enumerate(shape)]  # fmt: skip


def _as_like(values: np.ndarray, like: Array) -> Array:
    return B.to_backend(values, B.backend_name(like), device=B.device(like), dtype=like.dtype)


def _random_start(rng: np.random.Generator, shape: tuple[int, ...], like: Array) -> list[Array]:
    return [_as_like(rng.standard_normal((1, n, 1)), like) for n in shape]


def _warn(fn: str, error: float, eps: float | None, stop: str, held: bool, zero: bool = False) -> None:
    what = "held-back" if held else "fitting"
    if zero:
        B.warn(
            f"{fn}: no train the sweeps found predicts the held-back samples better than zero, so the zero train "
            "is returned (pure noise, too few samples, or a tensor the sweeps do not find from a rank-1 start, "
            "such as a random train of many modes); start from a better x0 or give more samples",
            ConvergenceWarning,
        )
    elif error > 0.5:
        B.warn(
            f"{fn}: the relative error on the {what} samples is {error:.3g}: the train explains little of the "
            "data (pure noise, too few samples, or a tensor the sweeps do not find from a rank-1 start, such as "
            "a random train of many modes); check it before use, or start from a better x0",
            ConvergenceWarning,
        )
    elif eps is not None and error > eps:
        category: type[Warning] = RankCapWarning if stop == "max_rank" else ConvergenceWarning
        reason = {"max_rank": "no rank could grow further (max_rank, useful ranks or samples per slice)",
                  "max_iter": "max_iter sweeps ran out"}.get(stop, "the held-back error stopped falling")  # fmt: skip
        B.warn(
            f"{fn}: eps={eps:g} was not met: the {what} relative error is {error:.3g}; {reason}",
            category,
        )
