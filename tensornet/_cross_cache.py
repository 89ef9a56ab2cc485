"""The exact cache of TT-cross: ``f`` asked only for indices it has not been given before.

A multi-index is encoded as ``W`` int64 words (mixed radix over consecutive groups of modes whose sizes
multiply below 2^62), and the words of a fiber's points are sums of the words of its left and right index
sets, so a fiber is looked up without building its index rows. The cache is sorted by an int64 key
searched with ``searchsorted``: the word itself when ``W = 1`` (grids of fewer than 2^62 points), else a
hash of the words, with every hit checked against the stored words (a hash collision can only cost a
repeated evaluation, never a wrong value).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _backend as B

_WORD = 2**62  # a multi-index is stored as int64 words, each a mixed-radix number below this
_HASH_SEED = 20100611  # fixed: the cache keys of huge grids are the same in every run


class Budget(Exception):
    """Raised inside the sweeps when the next call of ``f`` would exceed ``max_evals``."""


# --- f behind an exact cache --------------------------------------------------------------------
class Evaluations:
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
        self.graph = False  # whether f's values carry an autograd graph (then the result is rebuilt with it)
        self.graph_count = 0  # evaluations made to rebuild the result with the graph (not in max_evals)

    def encode(self, rows: np.ndarray, start: int) -> np.ndarray:
        """Words ``(m, W)`` of index rows over modes ``start, start + 1, ...``."""
        if rows.shape[1] == 0:
            return np.zeros((rows.shape[0], self.words), dtype=np.int64)
        return rows @ self.radix[start : start + rows.shape[1]]

    def key_of(self, words: np.ndarray) -> np.ndarray:
        if self.words == 1:
            return words[:, 0]
        with np.errstate(over="ignore"):
            key = words @ self.mix
            return key ^ (key >> 31)

    def _lookup(self, keys: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = np.empty(keys.shape[0], dtype=self.values.dtype)  # float64, or complex128 once f gave one
        if self.keys.shape[0] == 0:
            return values, np.ones(keys.shape[0], dtype=bool)
        at = np.minimum(np.searchsorted(self.keys, keys), self.keys.shape[0] - 1)
        found = self.keys[at] == keys
        if self.words > 1:
            found &= np.all(self.stored[at] == words, axis=1)
        values[found] = self.values[at[found]]
        return values, ~found

    def _store(self, keys: np.ndarray, words: np.ndarray, values: np.ndarray) -> None:
        """Add new (absent, distinct) points to the sorted cache.

        A stable sort of the concatenation of two sorted runs, which numpy's timsort merges in about
        linear time.
        """
        order = np.argsort(np.concatenate([self.keys, keys]), kind="stable")
        self.keys = np.concatenate([self.keys, keys])[order]
        self.values = np.concatenate([self.values, values])[order]
        if self.words > 1:
            self.stored = np.concatenate([self.stored, words])[order]

    def points(self, rows: np.ndarray) -> np.ndarray:
        """Values at arbitrary index rows ``(m, d)`` (repeats and cached rows are not re-evaluated)."""
        words = self.encode(rows, 0)
        keys = self.key_of(words)
        values, missing = self._lookup(keys, words)
        positions = np.flatnonzero(missing)
        if positions.size:
            _, first, inverse = np.unique(words[positions], axis=0, return_index=True, return_inverse=True)
            fresh = self._call(rows[positions[first]])
            values = values.astype(np.result_type(values, fresh), copy=False)
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
        keys = self.key_of(words)
        values, missing = self._lookup(keys, words)
        positions = np.flatnonzero(missing)
        if positions.size:
            a, rest = np.divmod(positions, n * q)
            i, b = np.divmod(rest, q)
            rows = np.concatenate([left[a], i[:, None], right[b]], axis=1)
            fresh = self._call(rows)
            values = values.astype(np.result_type(values, fresh), copy=False)
            values[positions] = fresh
            self._store(keys[positions], words[positions], fresh)
        return values.reshape(p, n, q)

    def _call(self, rows: np.ndarray) -> np.ndarray:
        m, d = rows.shape
        if self.max_evals is not None and self.count + m > self.max_evals:
            raise Budget
        index = rows
        if self.like is not None and B.backend_name(self.like) != "numpy":
            index = B.to_backend(rows, B.backend_name(self.like), device=B.device(self.like))
        out = self.f(index)
        self.graph = self.graph or bool(getattr(out, "requires_grad", False))
        if isinstance(out, np.ndarray) and out.shape == (m,) and out.dtype.kind in "fiu":
            values = out.astype(np.float64, copy=False)  # the common case, checked in three steps
        elif isinstance(out, np.ndarray) and out.shape == (m,) and out.dtype.kind == "c":
            values = out.astype(np.complex128, copy=False)
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
            values = B.scale_pow2(values, -self.exponent)
            if not np.all(np.isfinite(values)):
                raise ValueError(
                    "cross: f's values span more than float64's range relative to each other; rescale f"
                )
        return values

    def with_graph(self, rows: np.ndarray) -> Any:
        """``f`` at ``rows`` as it returns them (an array carrying its autograd graph), checked as :meth:`points`.

        Not cached and not counted in ``max_evals`` (``graph_count`` counts them).
        """
        m, d = rows.shape
        index = B.to_backend(rows, B.backend_name(self.like), device=B.device(self.like))
        out = self.f(index)
        values = _host_values(out, m, d)
        if not np.isfinite(values).all():
            j = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(
                f"cross: f returned {values[j]} at index {tuple(int(i) for i in rows[j])}; cross needs finite "
                "values: check f's domain there (a log, a square root or a division by zero)"
            )
        self.graph_count += m
        return out


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
    if str(out.dtype) in ("bool", "torch.bool"):
        raise TypeError(f"cross: f returned dtype {out.dtype}; it must return real or complex numbers")
    wide = np.complex128 if B.is_complex(out) else np.float64
    if B.backend_name(out) == "torch":
        out = out.detach().cpu()
    return np.asarray(B.to_backend(out, "numpy"), dtype=wide)


# --- the sweeps -----------------------------------------------------------------------------------
