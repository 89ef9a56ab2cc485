"""The differentiable result of TT-cross: the cross interpolant at the returned train's skeleton.

When ``f``'s values carry an autograd graph (torch values that require grad: ``apply`` on trains that
require grad, or ``f`` closing over parameters), :func:`tensornet.cross` returns a train whose cores are
built from values of ``f`` by differentiable operations, so a loss of the result has the exact gradient of
that result with respect to everything ``f`` depends on.

The train is the cross interpolant (Oseledets & Tyrtyshnikov 2010) on nested index sets taken from the
search's rounded result ``y0``: left sets ``I_k`` (modes ``0..k``) and right sets ``J_k`` (modes
``k+1..d-1``), ``r_k`` of each, chosen by maxvol on ``y0``'s orthogonal factors, so the pivot matrices
``P_k = f(I_k, J_k)`` are as well conditioned as ``y0`` allows. With fibers ``C_k = f(I_{k-1}, :, J_k)``
(shape ``(r_{k-1}, n_k, r_k)``), core ``k < d - 1`` is ``C_k P_k^{-1}`` (computed as ``Q Q[pos_k]^{-1}``
from a QR of the unfolded fiber, ``pos_k`` the rows of ``I_k`` in ``I_{k-1} x [n_k]``) and the last core is
``C_{d-1}``. The interpolant equals ``f`` on every fiber, and equals ``y0`` exactly when ``f`` is ``y0``
(a train of those ranks), so it is as accurate as ``y0`` up to the quasi-optimality factor of maxvol
interpolation; the error returned is measured on it.

Cost: one more call of ``f`` at ``sum_k r_{k-1} n_k r_k`` points and ``O(d n r^3)`` operations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend as B
from . import _maxvol
from ._cross_cache import Evaluations


def _left_sets(cores: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Left index sets ``I_k`` (one per bond) and the positions of ``I_k`` in ``I_{k-1} x [n_k]``."""
    sets = [np.zeros((1, 0), dtype=np.int64)]
    positions = []
    carry = np.ones((1, 1))
    for core in cores[:-1]:
        r, n, r2 = core.shape
        unfolded = (carry @ core.reshape(r, n * r2)).reshape(-1, r2)  # y0 at rows I_{k-1} x [n_k]
        q, _ = np.linalg.qr(unfolded)
        rows, _ = _maxvol.maxvol(q)
        a, i = np.divmod(rows, n)
        sets.append(np.concatenate([sets[-1][a], i[:, None]], axis=1))
        positions.append(rows)
        carry = unfolded[rows]
    return sets, positions


def _right_sets(cores: list[np.ndarray]) -> list[np.ndarray]:
    """Right index sets: ``J_k`` over modes ``k+1..d-1`` for each bond k (and the empty set after the last)."""
    d = len(cores)
    sets: list[np.ndarray] = [np.zeros((1, 0), dtype=np.int64)]
    carry = np.ones((1, 1))
    for k in range(d - 1, 0, -1):
        r, n, _ = cores[k].shape
        unfolded = (cores[k].reshape(r * n, -1) @ carry).reshape(r, -1).T  # (n q, r): y0 at [n_k] x J_k
        q, _ = np.linalg.qr(unfolded)
        rows, _ = _maxvol.maxvol(q)
        i, b = np.divmod(rows, unfolded.shape[0] // n)
        sets.insert(0, np.concatenate([i[:, None], sets[0][b]], axis=1))
        carry = unfolded[rows].T
    return sets


def fiber_rows(cores: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int, int]], list[np.ndarray]]:
    """The index rows of every fiber ``C_k`` (stacked), each fiber's shape, and the pivot positions."""
    left, positions = _left_sets(cores)
    right = _right_sets(cores)
    blocks, shapes = [], []
    for k, core in enumerate(cores):
        n = core.shape[1]
        p, q = left[k].shape[0], right[k].shape[0]
        a, i, b = np.meshgrid(np.arange(p), np.arange(n), np.arange(q), indexing="ij")
        blocks.append(np.concatenate([left[k][a.ravel()], i.reshape(-1, 1), right[k][b.ravel()]], axis=1))
        shapes.append((p, n, q))
    return np.concatenate(blocks, axis=0), shapes, positions


def interpolant(values: Any, shapes: list[tuple[int, int, int]], positions: list[np.ndarray]) -> list[Any]:
    """The cores ``C_k P_k^{-1}`` (and ``C_{d-1}``) from the stacked fiber values, differentiably."""
    xp = B.namespace(values)
    cores, start = [], 0
    for k, (p, n, q) in enumerate(shapes):
        fiber = xp.reshape(values[start : start + p * n * q], (p * n, q))
        start += p * n * q
        if k == len(shapes) - 1:
            cores.append(xp.reshape(fiber, (p, n, q)))
            continue
        basis, _ = B.qr(fiber)
        pivots = xp.take(basis, _index(positions[k], basis), axis=0)
        core = xp.linalg.solve(xp.permute_dims(pivots, (1, 0)), xp.permute_dims(basis, (1, 0)))
        cores.append(xp.reshape(xp.permute_dims(core, (1, 0)), (p, n, q)))
    return cores


def _index(positions: np.ndarray, like: Any) -> Any:
    xp = B.namespace(like)
    return xp.asarray(positions, dtype=xp.int64, device=B.device(like))


def graph_train(evaluations: Evaluations, cores: list[np.ndarray], dtype: Any) -> list[Any]:
    """The differentiable cores for the search's result ``cores`` (host float64, exponent not restored)."""
    rows, shapes, positions = fiber_rows(cores)
    values = evaluations.with_graph(rows)
    xp = B.namespace(values)
    wide = xp.complex128 if B.is_complex(values) else xp.float64
    values = xp.astype(values, wide)  # the interpolation in double precision, as the search; cast at the end
    return [xp.astype(c, dtype) for c in interpolant(values, shapes, positions)]
