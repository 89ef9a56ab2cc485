"""Exact sampling from the distribution a train defines: ``tn.sample``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _backend as B
from .. import _checks
from ..decomp import orthogonalize
from ..ops import full
from ..tt import TT
from ._optima import EXACT_LIMIT

__all__ = ["sample"]

_NEGATIVE = 1e-10  # conditional weights below -this x their row's mass mean negative entries, not rounding


def _host(cores: Any) -> list[np.ndarray]:
    return [np.asarray(B.to_backend(c, "numpy")) for c in cores]


def _draw(weights: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """One index per row of non-negative ``weights`` (k, n) by the inverse CDF at ``uniform`` (k,)."""
    cumulative = np.cumsum(weights, axis=1)
    total = cumulative[:, -1:]
    chosen = np.sum(cumulative <= uniform[:, None] * total, axis=1)
    return np.minimum(chosen, weights.shape[1] - 1)


def _squared(t: TT, uniform: np.ndarray) -> np.ndarray:
    """Indices drawn from ``|t|^2``: with the train right-orthogonalised, the mass of a prefix is ``||g||^2``."""
    cores = _host(orthogonalize(t, center=0).cores)
    count = uniform.shape[0]
    prefix = np.ones((count, 1), dtype=cores[0].dtype)
    drawn = np.empty((count, len(cores)), dtype=np.int64)
    for k, core in enumerate(cores):
        grown = np.einsum("ka,anb->knb", prefix, core)  # (count, n, r')
        weights = np.sum(np.abs(grown) ** 2, axis=2)
        drawn[:, k] = _draw(weights, uniform[:, k])
        prefix = grown[np.arange(count), drawn[:, k]]
        prefix = prefix / np.linalg.norm(prefix, axis=1, keepdims=True)  # only directions matter
    return drawn


def _marginal_sums(cores: list[np.ndarray]) -> list[np.ndarray]:
    """``s_k = sum over i_{k+1..d} of G_{k+1} .. G_d`` (vectors), each scaled to max 1 (the scale cancels)."""
    sums = [np.ones(1)] * len(cores)
    for k in range(len(cores) - 1, 0, -1):
        vector = np.sum(cores[k], axis=1) @ sums[k]
        sums[k - 1] = vector / (np.max(np.abs(vector)) or 1.0)
    return sums


def _linear(fn: str, t: TT, uniform: np.ndarray) -> np.ndarray:
    """Indices drawn from ``t`` itself (non-negative): exact conditional marginals by summed suffixes."""
    cores = _host(t.cores)
    sums = _marginal_sums(cores)
    count = uniform.shape[0]
    prefix = np.ones((count, 1))
    drawn = np.empty((count, len(cores)), dtype=np.int64)
    for k, core in enumerate(cores):
        grown = np.einsum("ka,anb->knb", prefix, core)
        weights = grown @ sums[k]  # (count, n): the mass of each extension
        mass = np.sum(np.abs(weights), axis=1, keepdims=True)
        if k == 0 and not np.any(weights > 0):
            raise ValueError(
                f"{fn}: t has no positive mass (its entries sum to {np.sum(weights[0]):.3g}); nothing to sample"
            )
        negative = np.any(weights < -_NEGATIVE * mass, axis=1) | (np.sum(weights, axis=1) <= 0)
        if np.any(negative):
            row = int(np.argmax(negative))
            raise ValueError(
                f"{fn}: t takes negative values: the summed weights of mode {k} given the modes before it are "
                f"{np.array2string(weights[row], precision=3, threshold=8)}; sample needs a non-negative train "
                "(use squared=True to sample from t^2, the Born rule)"
            )
        weights = np.maximum(weights, 0.0)
        drawn[:, k] = _draw(weights, uniform[:, k])
        prefix = grown[np.arange(count), drawn[:, k]]
        prefix = prefix / (np.max(np.abs(prefix), axis=1, keepdims=True) + np.finfo(np.float64).tiny)
    return drawn


def _check_non_negative(fn: str, t: TT) -> None:
    """For trains small enough to form: refuse any negative entry beyond rounding (even one never drawn)."""
    if math.prod(t.shape) > EXACT_LIMIT:
        return
    dense = np.asarray(B.to_backend(full(t), "numpy"))
    top = float(np.max(np.abs(dense)))
    low = float(np.min(dense))
    if low < -_NEGATIVE * top * 1e3:
        where = tuple(int(i) for i in np.unravel_index(int(np.argmin(dense)), t.shape))
        raise ValueError(
            f"{fn}: t takes negative values (t{list(where)} = {low:.3g}); sample draws from a non-negative train "
            "(use squared=True to sample from t^2, the Born rule)"
        )


@B.exact
def sample(t: TT, k: int, *, seed: Any = None, squared: bool = False) -> Any:
    """``k`` multi-indices drawn from the distribution proportional to a non-negative train, or to ``|t|^2``.

    Parameters
    ----------
    t : TT
        Non-negative real cores, or (with ``squared``) any real or complex train.
    k : int
        How many indices to draw (>= 0), independently.
    seed : optional
        Anything ``numpy.random.default_rng`` takes; the draw is deterministic for a seed.
    squared : bool
        Draw from ``|t|^2 / ||t||^2`` (the Born rule of a tensor-network state) instead of ``t / sum(t)``.

    Returns
    -------
    (k, d) int64 array
        On ``t``'s backend and device; row j is the j-th draw ``(i_1, ..., i_d)``.

    Raises
    ------
    TypeError
        ``t`` not a TT, complex without ``squared``, bad ``k``/``seed``/``squared``.
    ValueError
        ``k`` < 0; a train with negative entries (always found when it has at most 2^20 entries, otherwise
        when the draw meets negative conditional weights); a train of zero mass.

    Notes
    -----
    Chain rule: ``p(i) = p(i_1) p(i_2 | i_1) ... p(i_d | i_<d)``, each conditional computed exactly in TT form
    and drawn by its inverse CDF, all ``k`` draws advancing together. For ``t`` itself,
    ``p(i_k | i_<k) ~ G_1(i_1) .. G_k(i_k) s_k`` with ``s_k = sum_{i_>k} G_{k+1} .. G_d`` (the summed suffixes,
    computed once). For ``|t|^2``, with cores after the first right-orthogonal, the mass of a prefix is
    ``||G_1(i_1) .. G_k(i_k)||^2`` (the later cores preserve norms), as in the perfect sampling of matrix
    product states (Ferris & Vidal 2012). Prefix vectors are rescaled after each mode (only their direction
    matters), so no scale of the cores over- or underflows.

    Cost: ``O(k d n r^2)`` plus ``O(d n r^3)`` to orthogonalise (``squared``) or ``O(d n r^2)`` for the sums.
    """
    fn = "sample"
    _checks.check_type(fn, t, TT, "t")
    count = _checks.check_count(fn, "k", k, minimum=0)
    squared = _checks.check_flag(fn, "squared", squared)
    if B.is_complex(t.cores[0]) and not squared:
        raise TypeError(
            f"{fn}: t is complex; a distribution needs real non-negative weights: use squared=True (|t|^2)"
        )
    uniform = _checks.rng(fn, seed).random((count, t.ncores))
    if squared:
        if count and float(B.to_backend(B.detach(t.norm()), "numpy")) == 0.0:
            raise ValueError(f"{fn}: t is the zero train; |t|^2 has no mass to sample from")
        drawn = _squared(t, uniform) if count else np.zeros((0, t.ncores), dtype=np.int64)
    else:
        _check_non_negative(fn, t)
        drawn = _linear(fn, t, uniform) if count else np.zeros((0, t.ncores), dtype=np.int64)
    return B.to_backend(drawn, t.backend, device=t.device)
