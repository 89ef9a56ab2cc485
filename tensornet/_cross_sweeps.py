"""The alternating maxvol sweeps of TT-cross: index sets, fibers and interpolation cores.

See :func:`tensornet.cross` for the algorithm; :class:`Sweeps` holds its state between half-sweeps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _maxvol
from ._cross_cache import Evaluations
from .shapes import useful_ranks

_ANCHORS = 3  # random multi-indices whose tails are the first right index sets
_KICK = 2  # random extra rows per bond and step: the rank grows by at least this while it is short
_TRUNCATION = 0.05  # fiber truncation threshold, relative to eps / sqrt(d - 1) (tightened on stalls)


def host_gather(cores: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Entries of the TT with numpy ``cores`` at index rows ``(m, d)``."""
    values = cores[0][0][rows[:, 0]]  # (m, r_1)
    for k in range(1, len(cores)):
        values = np.einsum("ma,amb->mb", values, cores[k][:, rows[:, k], :])
    return values[:, 0]


class Sweeps:
    """Index sets and cores of the alternating maxvol cross (see :func:`cross`)."""

    def __init__(self, evaluations: Evaluations, eps: float, caps: list[int | None], rng: Any):
        self.evaluations = evaluations
        self.shape = evaluations.shape
        d = len(self.shape)
        self.d, self.caps, self.rng = d, caps, rng
        self.useful = useful_ranks(self.shape)
        self.delta = _TRUNCATION * eps / math.sqrt(max(d - 1, 1))
        self.cap_reached = False
        # explore: the random extra rows prefer rows outside the bond's previous index set (set on a stall:
        # index sets that settled on too few distinct indices otherwise keep seeing the same low rank)
        self.explore = False
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
            keys = self.evaluations.key_of(candidates.reshape(p * n, -1))
            known, start = self._previous(keys, self.left_words[k + 1], (k, forward))
            rows, coefficient = self._select(fiber.reshape(p * n, q), k, known, start, np.arange(p * n) % n)
            self.cores[k] = coefficient.reshape(p, n, rows.size)
            a, i = np.divmod(rows, n)
            self.left[k + 1] = np.concatenate([left[a], i[:, None]], axis=1)
            self.left_words[k + 1] = self.left_words[k][a] + i[:, None] * radix
        else:
            candidates = np.arange(n)[:, None, None] * radix + self.right_words[k + 1][None, :, :]
            keys = self.evaluations.key_of(candidates.reshape(n * q, -1))
            known, start = self._previous(keys, self.right_words[k], (k, forward))
            rows, coefficient = self._select(
                fiber.reshape(p, n * q).T, k - 1, known, start, np.arange(n * q) // q
            )
            self.cores[k] = coefficient.T.reshape(rows.size, n, q)
            i, b = np.divmod(rows, q)
            self.right[k] = np.concatenate([i[:, None], right[b]], axis=1)
            self.right_words[k] = i[:, None] * radix + self.right_words[k + 1][b]
        self.pivots[(k, forward)] = keys[rows[: self.chosen]]

    def _previous(self, keys: np.ndarray, previous: Any, step: tuple[int, bool]) -> tuple[np.ndarray, Any]:
        """Which candidate rows (their ``keys``) are in the bond's previous index set, and maxvol's last choice.

        The second is the positions of the rows maxvol chose at this step last time (None before the
        first time).
        """
        if previous is None:
            return np.zeros(keys.shape[0], dtype=bool), None
        old = np.sort(self.evaluations.key_of(previous))
        known = old[np.minimum(np.searchsorted(old, keys), old.shape[0] - 1)] == keys
        pivots = self.pivots.get(step)
        if pivots is None:
            return known, None
        order = np.argsort(keys)
        at = np.minimum(np.searchsorted(keys, pivots, sorter=order), keys.shape[0] - 1)
        start = order[at]
        return known, start[keys[start] == pivots]

    def _select(
        self, matrix: np.ndarray, bond: int, known: np.ndarray, start: Any, modes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the unfolded fiber ``matrix`` (N, q) to keep as the next index set, and their coefficients.

        The coefficients are the interpolation ``U_s pinv(U_s[rows])`` (N, len(rows)). Maxvol starts from
        the rows it chose at this step in the previous sweep when they are all still there (``start``).
        The extra rows are drawn at random: first rows whose index of the step's mode (``modes``, one per
        row) no kept row has yet, so that the next index set holds as many distinct indices of that mode
        as it has rows (a set with too few cannot see the bond's rank); then, while the search improves,
        rows of the bond's previous index set (``known``), so that index sets settle and a half-sweep over
        settled sets finds its fibers in the cache; after a stall (``explore``), other rows first.
        """
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
            return rows, basis @ basis.conj().T if keep < n_rows else np.eye(n_rows)
        rows, coefficient = _maxvol.maxvol(basis, start=start)
        if target > keep:  # exploration: random further rows, so that the next fibers see new directions
            draw = self.rng.random(n_rows) + np.where(known, 1.0 if self.explore else -1.0, 0.0)
            draw[rows] = np.inf
            count = target - keep
            extra = (
                _uncovered_first(draw, modes, rows, count)
                if self.explore
                else np.argpartition(draw, count - 1)[:count]
            )
            rows = np.concatenate([rows, extra.astype(rows.dtype)])
            coefficient = _maxvol.coefficients(basis, rows)
        return rows, coefficient


def _uncovered_first(draw: np.ndarray, modes: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """``count`` rows by smallest ``draw``, each taken among rows whose mode index no kept row has yet.

    ``draw`` is the random priority of each row (inf for the ``rows`` already kept); ``modes`` gives each
    row's index of the step's mode. Falls back to any row once every mode index is covered.
    """
    draw = draw.copy()
    covered = np.zeros(int(modes.max()) + 1, dtype=bool)
    covered[modes[rows]] = True
    extra = []
    for _ in range(count):  # a few rows: 2, or a quarter of the rank
        row = int(np.argmin(draw + 4.0 * covered[modes]))  # draw < 2: an uncovered row always wins
        extra.append(row)
        draw[row] = np.inf
        covered[modes[row]] = True
    return np.asarray(extra, dtype=np.int64)


def relative_error(approx: np.ndarray, exact: np.ndarray, scale: float) -> float:
    """``||approx - exact|| / ||exact||`` (``scale`` stands in for ``||exact||`` when it is zero)."""
    reference = float(np.linalg.norm(exact)) or scale
    difference = float(np.linalg.norm(approx - exact))
    if reference == 0.0:
        return 0.0 if difference == 0.0 else math.inf
    return difference / reference
