"""TT-cross: a TT of a function of the multi-index from a few of its values, never the dense tensor.

``cross(f, shape)`` builds a TT of ``x[i_1, ..., i_d] = f(i)``; ``apply(f, *trains)`` builds one of an
elementwise function of trains. ``f`` is called with many indices at once (one call per sweep step), and
every value it returns is kept in an exact cache, so an index is never asked for twice.

The search runs on the host in float64 numpy (index bookkeeping, SVDs of small matrices and the maxvol
pivoting are sequential host work); ``f`` receives its indices on ``like``'s backend and device, and its
values are brought to the host. The result is placed like :func:`tensornet.random_tt`'s cores.
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _backend as B
from . import _maxvol
from . import ops as _ops
from .construct import _place, _reference
from .decomp import RankCapWarning, _check_eps, _check_max_rank
from .random import _check_shape
from .shapes import max_ranks
from .tt import TT

__all__ = ["ConvergenceWarning", "EvalCapWarning", "apply", "cross"]


class EvalCapWarning(UserWarning):
    """``max_evals`` stopped :func:`cross` before it met ``eps``; the message gives the error estimated
    on the validation indices (``return_error=True`` returns it)."""


class ConvergenceWarning(UserWarning):
    """:func:`cross` stopped without meeting ``eps`` because the error on the validation indices stopped
    improving (``f`` noisy, ``eps`` below ``f``'s precision, or a function of very high rank); the
    message gives the estimate."""


_ANCHORS = 3  # random multi-indices whose tails are the first right index sets
_KICK = 2  # random extra rows per bond and step: the rank grows by at least this while it is short
_TRUNCATION = 0.05  # fiber truncation threshold, relative to eps / sqrt(d - 1) (tightened on stalls)
_STALL_LIMIT = 4  # half-sweeps in a row without halving the best validation error end the search
_FLOOR = 1e-16  # the truncation threshold is never tightened below float64's resolution
_WORD = 2**62  # a multi-index is stored as int64 words, each a mixed-radix number below this
_HASH_SEED = 20100611  # fixed: the cache keys of huge grids are the same in every run


class _Budget(Exception):
    """Raised inside the sweeps when the next call of ``f`` would exceed ``max_evals``."""


# --- f behind an exact cache --------------------------------------------------------------------
class _Evaluations:
    """Calls ``f`` for the indices not asked for before, checks and counts what it returns.

    A multi-index is encoded as ``W`` int64 words (mixed radix over consecutive groups of modes whose
    sizes multiply below 2^62), and the words of a fiber's points are sums of the words of its left and
    right index sets, so a fiber is looked up without building its index rows. The cache is sorted by an
    int64 key searched with ``searchsorted``: the word itself when ``W = 1`` (grids of fewer than 2^62
    points), else a hash of the words, with every hit checked against the stored words (a hash collision
    can only cost a repeated evaluation, never a wrong value).
    """

    def __init__(self, f: Callable[[Any], Any], shape: tuple[int, ...], max_evals: int | None, like: Any):
        self.f, self.shape, self.max_evals, self.like = f, shape, max_evals, like
        d = len(shape)
        groups: list[list[int]] = [[]]
        size = 1
        for k, n in enumerate(shape):
            if groups[-1] and size * n >= _WORD:
                groups.append([])
                size = 1
            groups[-1].append(k)
            size *= n
        self.words = len(groups)
        self.radix = np.zeros((d, self.words), dtype=np.int64)
        for w, modes in enumerate(groups):
            place = 1
            for k in reversed(modes):
                self.radix[k, w] = place
                place *= shape[k]
        # odd multipliers of a multiplicative hash (int64 products wrap around, as intended)
        self.mix = np.random.default_rng(_HASH_SEED).integers(1, 2**62, self.words, dtype=np.int64) * 2 + 1
        self.keys = np.empty(0, dtype=np.int64)
        self.stored = np.empty((0, self.words), dtype=np.int64)  # words of the cached points (W > 1)
        self.values = np.empty(0, dtype=np.float64)
        self.count = 0
        self.calls = 0
        self.exponent = 0  # values are stored divided by 2^exponent (set from the first call)

    def encode(self, rows: np.ndarray, start: int) -> np.ndarray:
        """Words ``(m, W)`` of index rows over modes ``start, start + 1, ...``."""
        if rows.shape[1] == 0:
            return np.zeros((rows.shape[0], self.words), dtype=np.int64)
        return rows @ self.radix[start : start + rows.shape[1]]

    def _keys(self, words: np.ndarray) -> np.ndarray:
        if self.words == 1:
            return words[:, 0]
        with np.errstate(over="ignore"):
            key = words @ self.mix
            return key ^ (key >> 31)

    def _lookup(self, keys: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = np.empty(keys.shape[0], dtype=np.float64)
        if self.keys.shape[0] == 0:
            return values, np.ones(keys.shape[0], dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.shape[0] - 1)
        found = self.keys[at] == keys
        if self.words > 1:
            found &= np.all(self.stored[at] == words, axis=1)
        values[found] = self.values[at[found]]
        return values, ~found

    def _store(self, keys: np.ndarray, words: np.ndarray, values: np.ndarray) -> None:
        """Add new (absent, distinct) points to the sorted cache (a stable sort of the concatenation of
        two sorted runs, which numpy's timsort merges in about linear time)."""
        order = np.argsort(np.concatenate([self.keys, keys]), kind="stable")
        self.keys = np.concatenate([self.keys, keys])[order]
        self.values = np.concatenate([self.values, values])[order]
        if self.words > 1:
            self.stored = np.concatenate([self.stored, words])[order]

    def points(self, rows: np.ndarray) -> np.ndarray:
        """Values at arbitrary index rows ``(m, d)`` (repeats and cached rows are not re-evaluated)."""
        words = self.encode(rows, 0)
        keys = self._keys(words)
        values, missing = self._lookup(keys, words)
        positions = np.flatnonzero(missing)
        if positions.size:
            _, first, inverse = np.unique(words[positions], axis=0, return_index=True, return_inverse=True)
            fresh = self._call(rows[positions[first]])
            values[positions] = fresh[inverse.reshape(-1)]
            self._store(keys[positions[first]], words[positions[first]], fresh)
        return values

    def fiber(
        self, left: np.ndarray, left_words: np.ndarray, k: int, right: np.ndarray, right_words: np.ndarray
    ) -> np.ndarray:
        """Values ``(p, n_k, q)`` at the points ``(left[a], i, right[b])`` (rows distinct by construction)."""
        n = self.shape[k]
        p, q = left.shape[0], right.shape[0]
        mode = np.arange(n, dtype=np.int64)[:, None] * self.radix[k]
        words = (
            left_words[:, None, None, :] + mode[None, :, None, :] + right_words[None, None, :, :]
        ).reshape(p * n * q, self.words)
        keys = self._keys(words)
        values, missing = self._lookup(keys, words)
        positions = np.flatnonzero(missing)
        if positions.size:
            a, rest = np.divmod(positions, n * q)
            i, b = np.divmod(rest, q)
            rows = np.concatenate([left[a], i[:, None], right[b]], axis=1)
            fresh = self._call(rows)
            values[positions] = fresh
            self._store(keys[positions], words[positions], fresh)
        return values.reshape(p, n, q)

    def _call(self, rows: np.ndarray) -> np.ndarray:
        m, d = rows.shape
        if self.max_evals is not None and self.count + m > self.max_evals:
            raise _Budget
        index = rows
        if self.like is not None and B.backend_name(self.like) != "numpy":
            index = B.to_backend(rows, B.backend_name(self.like), device=B.device(self.like))
        out = self.f(index)
        if isinstance(out, np.ndarray) and out.shape == (m,) and out.dtype.kind in "fiu":
            values = out.astype(np.float64, copy=False)  # the common case, checked in three steps
        else:
            values = _host_values(out, m, d)
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values))
            j = int(bad[0])
            raise ValueError(
                f"cross: f returned {values[j]} at index {tuple(int(i) for i in rows[j])} ({bad.size} of "
                f"{m} values are not finite); cross needs finite values: check f's domain there (a log, a "
                "square root or a division by zero)"
            )
        self.count += m
        self.calls += 1
        if self.calls == 1:
            top = float(np.max(np.abs(values))) if m else 0.0
            if top > 0 and not 2.0**-100 < top < 2.0**100:  # far from 1: keep the algebra in range
                self.exponent = math.frexp(top)[1]
        if self.exponent:
            values = np.ldexp(values, -self.exponent)
            if not np.all(np.isfinite(values)):
                raise ValueError(
                    "cross: f's values span more than float64's range relative to each other; rescale f"
                )
        return values


def _host_values(out: Any, m: int, d: int) -> np.ndarray:
    """What ``f`` returned for ``m`` indices, checked and brought to the host as float64."""
    if not B.is_array(out):
        raise TypeError(
            f"cross: f returned a {type(out).__name__}; it must return an array (numpy or torch) of "
            f"{m} values, one per row of its ({m}, {d}) index argument"
        )
    if tuple(int(s) for s in out.shape) != (m,):
        raise ValueError(
            f"cross: f returned an array of shape {tuple(out.shape)} for {m} indices; it must return "
            f"shape ({m},), one value per row of the ({m}, {d}) index array (reduce over axis 1, "
            "e.g. f = lambda idx: np.sin(idx.sum(axis=1)))"
        )
    if B.is_complex(out) or str(out.dtype) in ("bool", "torch.bool"):
        raise TypeError(f"cross: f returned dtype {out.dtype}; it must return real numbers")
    if B.backend_name(out) == "torch":
        out = out.detach().cpu().double()
    return np.asarray(B.to_backend(out, "numpy"), dtype=np.float64)


# --- the sweeps -----------------------------------------------------------------------------------
def _host_gather(cores: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Entries of the TT with numpy ``cores`` at index rows ``(m, d)``."""
    values = cores[0][0][rows[:, 0]]  # (m, r_1)
    for k in range(1, len(cores)):
        values = np.einsum("ma,amb->mb", values, cores[k][:, rows[:, k], :])
    return values[:, 0]


class _Sweeps:
    """Index sets and cores of the alternating maxvol cross (see :func:`cross`)."""

    def __init__(self, evaluations: _Evaluations, eps: float, caps: list[int | None], rng: Any):
        self.evaluations = evaluations
        self.shape = evaluations.shape
        d = len(self.shape)
        self.d, self.caps, self.rng = d, caps, rng
        self.useful = max_ranks(self.shape)
        self.delta = _TRUNCATION * eps / math.sqrt(max(d - 1, 1))
        self.cap_reached = False
        self.pivots: dict[tuple[int, bool], np.ndarray] = {}  # keys of the rows maxvol chose, per step
        self.chosen = 0  # how many of the rows _select returned maxvol chose
        anchor = np.stack([rng.integers(0, n, _ANCHORS) for n in self.shape], axis=1).astype(np.int64)
        # left[k]: rows of indices of the modes before k, right[k]: of modes k, k + 1, ... (and their words);
        # left[k > 0] is set by the first half-sweep before it is read
        self.left: list[Any] = [np.zeros((1, 0), dtype=np.int64)] + [None] * d
        # the tails of the anchors, repeats dropped (a set index never repeats a row)
        tails = [list(dict.fromkeys(map(tuple, anchor[:, k:].tolist()))) for k in range(d + 1)]
        self.right: list[Any] = [
            np.array(tail, dtype=np.int64).reshape(len(tail), d - k) for k, tail in enumerate(tails)
        ]
        self.left_words: list[Any] = [evaluations.encode(self.left[0], 0)] + [None] * d
        self.right_words: list[Any] = [evaluations.encode(self.right[k], k) for k in range(d + 1)]
        self.cores: list[Any] = [None] * d

    def half_sweep(self, forward: bool) -> None:
        for k in range(self.d) if forward else range(self.d - 1, -1, -1):
            self._step(k, forward)

    def _step(self, k: int, forward: bool) -> None:
        left, right = self.left[k], self.right[k + 1]
        fiber = self.evaluations.fiber(left, self.left_words[k], k, right, self.right_words[k + 1])
        p, n, q = fiber.shape
        if (k == self.d - 1) if forward else (k == 0):
            self.cores[k] = fiber  # the end of the sweep keeps the values themselves
            return
        radix = self.evaluations.radix[k]
        if forward:
            candidates = self.left_words[k][:, None, :] + np.arange(n)[None, :, None] * radix
            keys = self.evaluations._keys(candidates.reshape(p * n, -1))
            known, start = self._previous(keys, self.left_words[k + 1], (k, forward))
            rows, coefficient = self._select(fiber.reshape(p * n, q), k, known, start)
            self.cores[k] = coefficient.reshape(p, n, rows.size)
            a, i = np.divmod(rows, n)
            self.left[k + 1] = np.concatenate([left[a], i[:, None]], axis=1)
            self.left_words[k + 1] = self.left_words[k][a] + i[:, None] * radix
        else:
            candidates = np.arange(n)[:, None, None] * radix + self.right_words[k + 1][None, :, :]
            keys = self.evaluations._keys(candidates.reshape(n * q, -1))
            known, start = self._previous(keys, self.right_words[k], (k, forward))
            rows, coefficient = self._select(fiber.reshape(p, n * q).T, k - 1, known, start)
            self.cores[k] = coefficient.T.reshape(rows.size, n, q)
            i, b = np.divmod(rows, q)
            self.right[k] = np.concatenate([i[:, None], right[b]], axis=1)
            self.right_words[k] = i[:, None] * radix + self.right_words[k + 1][b]
        self.pivots[(k, forward)] = keys[rows[: self.chosen]]

    def _previous(self, keys: np.ndarray, previous: Any, step: tuple[int, bool]) -> tuple[np.ndarray, Any]:
        """Which candidate rows (their ``keys``) are in the bond's previous index set, and the positions
        of the rows maxvol chose at this step last time (None before the first time)."""
        if previous is None:
            return np.zeros(keys.shape[0], dtype=bool), None
        old = np.sort(self.evaluations._keys(previous))
        known = old[np.minimum(np.searchsorted(old, keys), old.shape[0] - 1)] == keys
        pivots = self.pivots.get(step)
        if pivots is None:
            return known, None
        order = np.argsort(keys)
        at = np.minimum(np.searchsorted(keys, pivots, sorter=order), keys.shape[0] - 1)
        start = order[at]
        return known, start[keys[start] == pivots]

    def _select(
        self, matrix: np.ndarray, bond: int, known: np.ndarray, start: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the unfolded fiber ``matrix`` (N, q) to keep as the next index set, and the
        interpolation coefficients ``U_s pinv(U_s[rows])`` (N, len(rows)). Maxvol starts from the rows
        it chose at this step in the previous sweep when they are all still there (``start``). The extra
        rows are drawn at random, first among the ``known`` rows (those of the bond's previous index
        set): index sets then settle, and once they have, a half-sweep finds its fibers in the cache."""
        n_rows, n_cols = matrix.shape
        u, s, _ = np.linalg.svd(matrix, full_matrices=False)
        tail = np.sqrt(np.cumsum((s * s)[::-1])[::-1])  # tail[j] = ||s[j:]||
        keep = int(np.count_nonzero(tail > self.delta * tail[0])) if tail[0] > 0 else 1
        keep = max(keep, 1)
        cap = self.caps[bond]
        if cap is not None and keep >= cap and min(n_rows, self.useful[bond]) > cap:
            self.cap_reached = True  # the fiber has at least `cap` significant directions
        grow = _KICK if keep < n_cols else max(_KICK, keep // 4)  # full rank: more columns are needed
        # a capped bond still explores with _KICK rows more; the result is rounded to the cap
        limit = min(n_rows, self.useful[bond], cap + _KICK if cap is not None else n_rows)
        target = min(keep + grow, limit)
        keep = min(keep, target)
        basis = u[:, :keep]
        self.chosen = keep
        if target == n_rows:  # every row is kept: no choice to make
            self.chosen = 0
            rows = np.arange(n_rows)
            return rows, basis @ basis.T if keep < n_rows else np.eye(n_rows)
        rows, coefficient = _maxvol.maxvol(basis, start=start)
        if target > keep:  # exploration: random further rows, so that the next fibers see new directions
            draw = self.rng.random(n_rows) - known  # known rows first
            draw[rows] = np.inf
            extra = np.argpartition(draw, target - keep - 1)[: target - keep]
            rows = np.concatenate([rows, extra])
            coefficient = _maxvol.coefficients(basis, rows)
        return rows, coefficient


def _relative_error(approx: np.ndarray, exact: np.ndarray, scale: float) -> float:
    """``||approx - exact|| / ||exact||`` (``scale`` stands in for ``||exact||`` when it is zero)."""
    reference = float(np.linalg.norm(exact)) or scale
    difference = float(np.linalg.norm(approx - exact))
    if reference == 0.0:
        return 0.0 if difference == 0.0 else math.inf
    return difference / reference


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
    rows = _ops._index_rows(fn, validation, shape, "validation")
    if rows.shape[0] == 0:
        raise ValueError(f"{fn}: validation has no rows; give at least one index")
    return rows


def _check_evals(fn: str, max_evals: Any) -> int | None:
    if max_evals is None:
        return None
    if isinstance(max_evals, bool) or not isinstance(max_evals, numbers.Integral):
        raise TypeError(f"{fn}: max_evals must be an int or None, got {type(max_evals).__name__}")
    if max_evals < 1:
        raise ValueError(f"{fn}: max_evals must be >= 1, got {max_evals}")
    return int(max_evals)


def _restore(cores: list[np.ndarray], exponent: int) -> list[np.ndarray]:
    """The train times ``2^exponent`` (on the last core, or spread over all when it is large)."""
    if exponent == 0:
        return cores
    if abs(exponent) < 900:
        return [*cores[:-1], np.ldexp(cores[-1], exponent)]
    share, rest = divmod(exponent, len(cores))
    return [np.ldexp(c, share + (rest if k == 0 else 0)) for k, c in enumerate(cores)]


@B.exact
def cross(
    f: Callable[[Any], Any],
    shape: Sequence[int],
    *,
    eps: float = 1e-10,
    max_rank: int | Sequence[int] | None = None,
    max_evals: int | None = None,
    seed: Any = None,
    like: Any = None,
    dtype: Any = None,
    validation: Any = 100,
    return_error: bool = False,
) -> Any:
    """A TT of the tensor ``x[i] = f(i)`` over ``shape``, from a few evaluations of ``f`` (TT-cross).

    Parameters
    ----------
    f : callable
        Takes an integer array of shape ``(k, d)`` (row j is the multi-index ``(i_1..i_d)``; numpy int64,
        or int64 on ``like``'s backend and device) and returns ``k`` real values (numpy or torch array of
        shape ``(k,)``). Called once per sweep step, only with indices it has not been given before.
    shape : mode sizes ``(n_1, ..., n_d)``, d >= 1.
    eps : relative accuracy (> 0): the search stops when the relative error on the validation indices is
        at most ``eps / 2``, and the result is rounded with ``eps / 2``.
    max_rank : int or one int per bond capping the result's ranks (the search explores with index sets
        of up to ``max_rank + 2`` and rounds to the cap); if it keeps the error above eps, a
        :class:`~tensornet.RankCapWarning` gives the estimated error.
    max_evals : cap on the number of indices ``f`` is asked for (validation included); if it stops the
        search before eps is met, an :class:`EvalCapWarning` gives the estimated error.
    seed : anything ``numpy.random.default_rng`` takes; the result is deterministic for a given seed.
    like, dtype : backend, device and dtype of the result, as :func:`tensornet.random_tt` (default numpy
        float64). The search itself runs in float64 on the host.
    validation : how many random indices (default 100) measure the error, or a ``(k, d)`` integer array of
        chosen ones. They are evaluated once and count in ``max_evals``.
    return_error : also return the relative error estimated on the validation indices.

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
    finds its values in the cache and costs no evaluations.

    After each half-sweep the current TT is compared with ``f`` on the validation indices; the search
    stops when the relative error there is at most ``eps / 2``. When it stops halving, ``delta``
    (initially ``eps / (20 sqrt(d - 1))``) is divided by 10; after 4 half-sweeps in a row without halving
    the best error, the search ends with a warning (so it always ends: the error cannot halve forever).
    The result is rounded with ``eps / 2`` (the rule of :func:`tensornet.round`), so the total error is
    about ``eps`` or less; the kept estimate is the rounded train's error on the validation indices (a
    sample estimate, not a bound: a feature that no sampled index sees, e.g. a narrow peak, is invisible
    to any cross). Values of ``f`` far from 1 are divided by a power of two while searching (exact) and
    the factor is put back. The result carries no gradient of ``f``'s values (they are detached).

    Cost: ``O(r^2 n)`` evaluations and ``O(r^3 n)`` operations per core and half-sweep, ``O(d r^2 n)``
    memory, for ranks r and mode sizes n.

    Raises
    ------
    TypeError
        ``f`` not callable or returning something that is not an array of real numbers; bad ``like``,
        ``dtype``, ``max_rank``, ``max_evals`` or ``validation``.
    ValueError
        ``f`` returning the wrong shape or a NaN/inf (the message names the index); ``eps`` not > 0;
        ``max_evals`` too small to finish the first half-sweep; bad shapes or index arrays.
    """
    if not callable(f):
        raise TypeError(f"cross: f must be callable (index array (k, d) -> k values), got {type(f).__name__}")
    shape = _check_shape("cross", "shape", shape)
    eps_value = _check_eps("cross", eps)
    if not eps_value:
        raise ValueError(f"cross: eps must be > 0 (a relative accuracy), got {eps}; e.g. 1e-14 for float64's")
    caps = _check_max_rank("cross", max_rank, len(shape) - 1)
    budget = _check_evals("cross", max_evals)
    reference = _reference("cross", like)
    rng = np.random.default_rng(seed)
    rows = _validation_rows("cross", validation, shape, rng)
    evaluations = _Evaluations(f, shape, budget, reference)
    if budget is not None and budget < np.unique(rows, axis=0).shape[0]:
        raise ValueError(
            f"cross: max_evals={budget} is less than the {rows.shape[0]} validation indices; raise it or "
            "pass a smaller validation="
        )
    exact = evaluations.points(rows)
    cores, error, reason = _search(evaluations, rows, exact, eps_value, caps, rng)
    cores, error = _rounded(cores, rows, exact, eps_value, error, evaluations, caps)
    if error > eps_value and reason is not None:
        _warn(reason, eps_value, error, rows.shape[0], budget, evaluations.count)
    result = TT._trusted(_place("cross", _restore(cores, evaluations.exponent), like, dtype))
    return (result, error) if return_error else result


def _search(
    evaluations: _Evaluations,
    rows: np.ndarray,
    exact: np.ndarray,
    eps: float,
    caps: list[int | None],
    rng: Any,
) -> tuple[list[np.ndarray], float, str | None]:
    """Half-sweeps until the validation error is at most eps / 2 or the search stops; returns the last
    complete TT, its validation error and why it stopped (None: converged)."""
    sweeps = _Sweeps(evaluations, eps, caps, rng)
    scale = math.sqrt(rows.shape[0]) * float(np.max(np.abs(exact), initial=0.0))
    best, stalls = math.inf, 0
    state: tuple[list[np.ndarray], float] | None = None
    for half in itertools.count():
        sweeps.cap_reached = False
        try:
            sweeps.half_sweep(forward=half % 2 == 0)
        except _Budget:
            if state is None:
                raise ValueError(
                    f"cross: max_evals={evaluations.max_evals} ran out during the first half-sweep, after "
                    f"{evaluations.count} evaluations ({rows.shape[0]} of them for validation); a first "
                    f"half-sweep of shape {evaluations.shape} needs at least "
                    f"{sum(evaluations.shape)} more. Raise max_evals"
                ) from None
            return state[0], state[1], "evals"
        cores = list(sweeps.cores)
        scale = scale or math.sqrt(rows.shape[0]) * float(np.max(np.abs(evaluations.values), initial=0.0))
        error = _relative_error(_host_gather(cores, rows), exact, scale)
        state = (cores, error)
        if error <= eps / 2:
            return cores, error, None
        if error <= best / 2:
            best, stalls = error, 0
            continue
        stalls += 1
        sweeps.delta = max(sweeps.delta / 10, _FLOOR)
        if stalls >= _STALL_LIMIT:
            return cores, error, "rank" if sweeps.cap_reached else "stall"
    raise AssertionError("unreachable")


def _round_host(cores: list[np.ndarray], eps: float, caps: list[int | None]) -> list[np.ndarray]:
    """TT rounding of host float64 cores with the rule of :func:`tensornet.round` (a QR sweep, then SVDs
    each dropping a tail of norm at most ``eps / sqrt(d - 1) ||x||``; ranks at most ``caps``), written out
    for the small cores of a cross, whose scale is already near 1. The QR sweep runs left to right and
    the SVDs right to left: a cross ends with its own values in the first core, and starting there
    leaves the least round-off (measured: about half of the other direction's)."""
    d = len(cores)
    if d == 1:
        return cores
    cores = list(cores)
    for k in range(d - 1):
        r, n, right = cores[k].shape
        q, factor = np.linalg.qr(cores[k].reshape(r * n, right))
        cores[k] = q.reshape(r, n, q.shape[1])
        _, n1, r1 = cores[k + 1].shape
        cores[k + 1] = (factor @ cores[k + 1].reshape(right, n1 * r1)).reshape(q.shape[1], n1, r1)
    threshold = eps / math.sqrt(d - 1) * float(np.linalg.norm(cores[-1]))
    for k in range(d - 1, 0, -1):
        r, n, right = cores[k].shape
        u, s, vh = np.linalg.svd(cores[k].reshape(r, n * right), full_matrices=False)
        tail = np.concatenate([np.sqrt(np.cumsum((s * s)[::-1])[::-1]), [0.0]])
        rank = max(1, int(np.flatnonzero(tail <= threshold)[0]))
        cap = caps[k - 1]
        rank = rank if cap is None else min(rank, cap)
        cores[k] = vh[:rank].reshape(rank, n, right)
        r0, n0, _ = cores[k - 1].shape
        cores[k - 1] = (cores[k - 1].reshape(r0 * n0, r) @ (u[:, :rank] * s[:rank])).reshape(r0, n0, rank)
    return cores


def _rounded(
    cores: list[np.ndarray],
    rows: np.ndarray,
    exact: np.ndarray,
    eps: float,
    error: float,
    evaluations: _Evaluations,
    caps: list[int | None],
) -> tuple[list[np.ndarray], float]:
    """The cores rounded with eps / 2 (and to the caps) and their validation error; the unrounded ones
    if rounding would take a train that meets eps and the caps above eps."""
    rounded = _round_host(cores, eps / 2, caps)
    scale = math.sqrt(rows.shape[0]) * float(np.max(np.abs(evaluations.values), initial=0.0))
    rounded_error = _relative_error(_host_gather(rounded, rows), exact, scale)
    within = all(cap is None or int(c.shape[2]) <= cap for c, cap in zip(cores, caps))
    if rounded_error > eps >= error and within:
        return cores, error
    return rounded, rounded_error


def _warn(reason: str, eps: float, error: float, checks: int, budget: int | None, count: int) -> None:
    estimate = f"the relative error estimated on {checks} validation indices is {error:.3g}"
    if reason == "evals":
        message = f"cross: max_evals={budget} stopped the search before eps={eps:g} was met; {estimate}. "
        message += "Raise max_evals to meet eps."
        category: type[Warning] = EvalCapWarning
    elif reason == "rank":
        message = f"cross: max_rank kept the result from meeting eps={eps:g}; {estimate}. Raise max_rank."
        category = RankCapWarning
    else:
        message = (
            f"cross: the error stopped improving before eps={eps:g} was met ({count} evaluations); "
            f"{estimate}. f may be noisy, eps below its precision, or the tensor of high rank (then a "
            "larger eps, or a max_rank to bound the work, may be what you want)."
        )
        category = ConvergenceWarning
    warnings.warn(message, category, stacklevel=3)


@B.exact
def apply(
    f: Callable[..., Any],
    *trains: Any,
    eps: float = 1e-10,
    max_rank: int | Sequence[int] | None = None,
    max_evals: int | None = None,
    seed: Any = None,
    validation: Any = 100,
    return_error: bool = False,
) -> Any:
    """An elementwise function of one or more trains of one shape, by cross on their entries.

    ``f(v_1, ..., v_m)`` takes ``m`` arrays of ``k`` entries (one per train, on the trains' backend) and
    returns the ``k`` values, e.g. ``tn.apply(np.exp, t)``, ``tn.apply(lambda a, b: a / b, t, u)``;
    entries are gathered from the cores (:func:`tensornet.gather`), never through ``full()``.
    The result is a train of the same type (TT or TTM, modes ``m_k n_k`` merged for the cross), backend,
    dtype and device. Other arguments as :func:`cross`.

    Notes: ``y[i] = f(x_1[i], ..., x_m[i])`` is approximated by :func:`cross` on the index function
    ``i -> f(gather(x_1, i), ...)``. Cost: that of :func:`cross` plus ``O(d r^2)`` per entry gathered
    from each train of rank r.

    Raises TypeError for no trains, trains of different types, backends or dtypes, or a non-callable
    ``f``; ValueError for different shapes or devices; and as :func:`cross`.
    """
    if not callable(f):
        raise TypeError(
            f"apply: f must be callable (entries of the trains -> values), got {type(f).__name__}"
        )
    if not trains:
        raise TypeError("apply: give at least one TT or TTM after f, e.g. tn.apply(np.exp, t)")
    first = trains[0]
    _ops._require_train("apply", first, "train 0")
    for other in trains[1:]:
        _ops._check_same_structure("apply", first, other)
    flat = [TT._trusted(_ops._flat_cores(t)) for t in trains]

    def entries(index: Any) -> Any:
        return f(*(_ops.gather(t, index) for t in flat))

    result = cross(
        entries,
        flat[0].shape,
        eps=eps,
        max_rank=max_rank,
        max_evals=max_evals,
        seed=seed,
        like=first,
        validation=validation,
        return_error=return_error,
    )
    train, error = result if return_error else (result, None)
    train = _ops._like(first, train.cores)
    return (train, error) if return_error else train
