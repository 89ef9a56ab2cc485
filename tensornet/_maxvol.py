"""Maximum-volume row selection for the cross approximation (host numpy, float64).

A ``(N, r)`` matrix ``U`` of full column rank has a *dominant* set of ``r`` rows ``I`` when every entry of
``B = U U[I]^{-1}`` is at most ``tol`` in magnitude; then ``U = B U[I]`` reconstructs every row from the
chosen ones with coefficients bounded by ``tol``, which is what keeps interpolation from amplifying
errors (Goreinov, Oseledets, Savostyanov, Tyrtyshnikov, Zamarashkin 2010, "How to find a good
submatrix"). The start is the row order of Gaussian elimination with partial pivoting (as the LU
factorisation of U chooses it), usually close to dominant; each swap of the ``maxvol`` iteration then
multiplies the volume ``|det U[I]|`` by more than ``tol``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["coefficients", "maxvol"]

_TOL = 1.05  # swap while some |B_ij| > 1.05: each swap grows |det U[I]| by at least 5%
_MAX_SWAPS = 100  # a bound, never reached in practice: the greedy start is close to dominant
_WARM_LIMIT = 1e3  # a warm start whose coefficients exceed this is too far from dominant: start afresh


def maxvol(u: np.ndarray, *, tol: float = _TOL, start: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, B)``: ``r`` dominant rows of the tall ``(N, r)`` matrix ``u`` and ``B = u @ inv(u[rows])``.

    The matrix ``u`` has full column rank; ``B = u @ inv(u[rows])`` bounded by ``tol`` entrywise (or after
    ``_MAX_SWAPS`` swaps). ``start``: ``r`` distinct rows to begin the swaps from (a previous answer) instead
    of the greedy selection; ignored if they are not ``r`` or their submatrix is (nearly) singular.

    Cost: ``O(N r^2)`` for the greedy start and ``O(N r)`` per swap.
    """
    n, r = u.shape
    if n == r:
        return np.arange(r), np.eye(r)
    if start is not None and len(start) == r:
        rows = np.array(start, dtype=np.int64)
        try:
            coefficient = np.linalg.solve(u[rows].T, u.T).T
        except np.linalg.LinAlgError:
            coefficient = None
        if coefficient is not None and np.all(np.abs(coefficient) < _WARM_LIMIT):
            return _swaps(rows, coefficient, tol)
    # Gaussian elimination with partial pivoting on u (N, r): column j picks the row of largest
    # remaining magnitude, the rank-one update removes it from the others (the start LAPACK's LU gives)
    work = u.copy()
    rows = np.empty(r, dtype=np.int64)
    for j in range(r):
        column = work[:, j]
        i = int(np.abs(column).argmax())
        rows[j] = i
        work -= np.multiply.outer(column / column[i], work[i])
    return _swaps(rows, np.linalg.solve(u[rows].T, u.T).T, tol)


def _swaps(rows: np.ndarray, coefficient: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """The maxvol iteration from ``rows`` with ``coefficient = u inv(u[rows])``."""
    r = rows.shape[0]
    for _ in range(_MAX_SWAPS):
        i, j = divmod(int(np.argmax(np.abs(coefficient))), r)
        b = coefficient[i, j]
        if abs(b) <= tol:
            break
        # replacing row rows[j] by row i: B <- B - B[:, j] (B[i] - e_j) / B[i, j] (Sherman-Morrison)
        rows[j] = i
        update = coefficient[i].copy()
        update[j] -= 1.0
        coefficient -= np.outer(coefficient[:, j], update / b)
    return rows, coefficient


def coefficients(u: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``u @ pinv(u[rows])`` for ``len(rows) >= r`` rows of the ``(N, r)`` matrix ``u``.

    The submatrix ``u[rows]`` has full column rank: the least-squares interpolation from the chosen rows (the
    rectangular cross of Mikhalev & Oseledets 2018, "Rectangular maximum-volume submatrices and their
    applications"). Cost: ``O(N r k)`` for ``k`` rows.
    """
    chosen = u[rows]
    adjoint = chosen.conj().T  # pinv(C) = (C^H C)^{-1} C^H (C^T for real data)
    return u @ np.linalg.solve(adjoint @ chosen, adjoint)
