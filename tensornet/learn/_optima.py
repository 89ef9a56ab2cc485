"""The largest and smallest entries of a train: ``tn.argmax`` and ``tn.argmin``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _backend as B
from .. import _checks
from .._backend import Array
from .._index import gather
from .._maxvol import maxvol
from ..decomp import orthogonalize
from ..ops import full
from ..tt import TT

__all__ = ["argmax", "argmin"]

EXACT_LIMIT = 2**20  # trains with at most this many entries are searched exhaustively (dense, in chunks)


def _host(t: TT) -> list[np.ndarray]:
    return [np.asarray(B.to_backend(c, "numpy"), dtype=np.float64) for c in t.cores]


def _beam(cores: list[np.ndarray], width: int) -> np.ndarray:
    """Candidate multi-indices of large ``|t|`` (rows of a ``(K, d)`` array) from right-orthogonal cores.

    Prefixes ``(i_1..i_k)`` are ranked by ``||G_1(i_1) ... G_k(i_k)||``, which is the norm of the fiber
    ``t(i_1..i_k, :, ..., :)`` because the later cores are right-orthogonal: the ``width`` best are kept, plus
    the maxvol rows of the prefix matrix (the prefixes spanning it best, Goreinov et al. 2010), so that a
    maximum whose fiber is not the heaviest still has a way through.
    """
    prefixes = np.zeros((1, 0), dtype=np.int64)
    vectors = np.ones((1, 1))
    for core in cores:
        _, n, s = core.shape
        grown = np.einsum("ka,anb->knb", vectors, core).reshape(-1, s)
        grown /= np.max(np.abs(grown)) or 1.0  # one common scale: only the ranking matters
        extended = np.concatenate(
            [np.repeat(prefixes, n, axis=0), np.tile(np.arange(n), len(prefixes))[:, None]], 1
        )
        scores = np.linalg.norm(grown, axis=1)
        keep = set(np.argsort(-scores, kind="stable")[:width].tolist())
        if grown.shape[0] > s > 1:
            rank = np.linalg.matrix_rank(grown)
            if rank == s:
                keep |= set(maxvol(grown)[0].tolist())
        chosen = np.array(sorted(keep), dtype=np.int64)
        prefixes, vectors = extended[chosen], grown[chosen]
    return prefixes


def _fiber(cores: list[np.ndarray], index: np.ndarray, k: int) -> np.ndarray:
    """The values ``t(i_1, .., i_{k-1}, :, i_{k+1}, .., i_d)`` (mode k free), ``O(d r^2 + n r^2)``."""
    left = np.ones((1,))
    for j in range(k):
        left = left @ cores[j][:, index[j], :]
        left /= np.max(np.abs(left)) or 1.0
    right = np.ones((1,))
    for j in range(len(cores) - 1, k, -1):
        right = cores[j][:, index[j], :] @ right
        right /= np.max(np.abs(right)) or 1.0
    return np.einsum("a,anb,b->n", left, cores[k], right)


def _ascend(cores: list[np.ndarray], index: np.ndarray) -> np.ndarray:
    """Coordinate ascent: move one mode at a time to the largest entry of its fiber until none moves."""
    index = index.copy()
    for _ in range(4 * len(cores)):
        moved = False
        for k in range(len(cores)):
            fiber = _fiber(cores, index, k)
            best = int(np.argmax(fiber))
            if fiber[best] > fiber[index[k]]:
                index[k], moved = best, True
        if not moved:
            break
    return index


def _values(t: TT, rows: np.ndarray) -> np.ndarray:
    return np.asarray(B.to_backend(gather(t, rows), "numpy"), dtype=np.float64)


def _search_max(t: TT, width: int) -> np.ndarray:
    """The index of the (approximately) largest entry of ``t``."""
    if math.prod(t.shape) <= EXACT_LIMIT:
        dense = np.asarray(B.to_backend(full(t), "numpy"))
        return np.array(np.unravel_index(int(np.argmax(dense)), t.shape), dtype=np.int64)
    first = _beam(_host(orthogonalize(t, center=0)), width)
    found = _values(t, first)
    candidates = [first]
    low = float(np.min(found))
    if low < 0:  # a max |t| that is negative is the minimum: t - min >= 0 has its maximum where t has
        shifted = orthogonalize(t - low, center=0)
        candidates.append(_beam(_host(shifted), width))
    rows = np.concatenate(candidates)
    start = rows[int(np.argmax(_values(t, rows)))]
    return _ascend(_host(t), start)


def _check(fn: str, t: Any, beam: Any) -> int:
    _checks.check_type(fn, t, TT, "t")
    if B.is_complex(t.cores[0]):
        raise TypeError(
            f"{fn}: t is complex, whose entries have no order; use tn.real(t), or |t|^2 = t * tn.conj(t)"
        )
    return _checks.check_count(fn, "beam", beam)


@B.exact
def argmax(t: TT, *, beam: int = 64) -> tuple[tuple[int, ...], Array]:
    """The multi-index of the largest entry of a real train, and the entry.

    Parameters
    ----------
    t : TT
        Real (float32/float64) cores, any backend.
    beam : int
        How many prefixes the search keeps per mode (trains of more than 2^20 entries).

    Returns
    -------
    (tuple of int, 0-d array)
        The index ``(i_1, ..., i_d)`` and ``t[index]`` on ``t``'s backend (differentiable on torch).

    Raises
    ------
    TypeError
        ``t`` not a TT, complex, or ``beam`` not an int.
    ValueError
        ``beam`` < 1.

    Notes
    -----
    Exact for trains of at most 2^20 entries (an exhaustive search of the dense tensor). Otherwise
    approximate, a search guided by the train's structure: with the train right-orthogonalised, the norm of
    ``G_1(i_1) .. G_k(i_k)`` is the norm of the fiber ``t(i_1, .., i_k, :, .., :)``, so a beam search keeps the
    ``beam`` heaviest prefixes at each mode, plus the maxvol rows of the prefix matrix (the prefixes that
    span it best: large entries of a low-rank matrix lie in its maximum-volume rows, Goreinov &
    Tyrtyshnikov 2001); this finds large ``|t|``. When the largest ``|t|`` found is negative it is the minimum,
    and the search is repeated on ``t - min`` (non-negative, largest where ``t`` is), the device of
    Chertkov, Ryzhakov, Novikov, Oseledets 2022 ("Optimization of functions given in the tensor train
    format"). The best candidate is then improved by coordinate ascent (each mode moved to the largest entry
    of its fiber until none moves). The result is a local maximum along every mode; it is the global one
    whenever the beam keeps the right prefix, which is not guaranteed (the problem is NP-hard in general).

    Cost: ``O(d beam n r^2)`` for the search, ``O(d^2 n r^2)`` per ascent pass; exact search ``O(prod(n) r)``.
    """
    width = _check("argmax", t, beam)
    index = tuple(int(i) for i in _search_max(t, width))
    return index, gather(t, [index])[0]


@B.exact
def argmin(t: TT, *, beam: int = 64) -> tuple[tuple[int, ...], Array]:
    """The multi-index of the smallest entry of a real train, and the entry: :func:`argmax` of ``-t``.

    Parameters
    ----------
    t : TT
        Real cores.
    beam : int
        As for :func:`argmax`.

    Returns
    -------
    (tuple of int, 0-d array)
        The index and ``t[index]``.

    Raises
    ------
    TypeError, ValueError
        As :func:`argmax`.

    Notes
    -----
    Exact for at most 2^20 entries, approximate otherwise (see :func:`argmax`).

    Cost: that of :func:`argmax`.
    """
    width = _check("argmin", t, beam)
    index = tuple(int(i) for i in _search_max(-t, width))
    return index, gather(t, [index])[0]
