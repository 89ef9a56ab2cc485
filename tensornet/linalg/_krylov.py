"""Krylov solvers for the local problems, written on the array namespace (numpy, torch; CPU or GPU).

* :func:`cg` -- preconditioned conjugate gradients for Hermitian positive definite operators;
* :func:`gmres` -- restarted GMRES with right preconditioning for any operator;
* :func:`block_eigh` -- the k extreme eigenpairs of a Hermitian operator by a restarted block Krylov
  (Davidson form without preconditioner, i.e. block Lanczos with Rayleigh-Ritz and thick restarts).

Vectors are ``(N, p)`` arrays on the operator's device; the small projected problems (Hessenberg, Ritz
matrices) are solved on the host in float64/complex128. Every routine returns its residual norm measured
on the device (Lanczos: its Ritz residual, exact up to rounding under full reorthogonalisation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._backend import Array
from ._ops import Ops

Apply = Callable[[Array], Array]


@dataclass
class KrylovResult:
    x: Array
    residual: float  # ||f - A x||, absolute
    products: int  # operator applications (columns)
    converged: bool
    breakdown: bool = False  # cg met a direction of non-positive curvature


def cg(
    ops: Ops, apply: Apply, f: Array, x0: Array, target: float, maxiter: int, precond: Apply | None
) -> KrylovResult:
    """Preconditioned CG for ``A x = f`` (one column) until ``||f - A x|| <= target``."""
    x = x0
    r = f - apply(x)
    products = 1
    res = ops.norm(r)
    if res <= target:
        return KrylovResult(x, res, products, True)
    z = precond(r) if precond is not None else r
    p = z
    rz = _real(ops, ops.inner(r, z))
    for _ in range(maxiter):
        q = apply(p)
        products += 1
        curvature = _real(ops, ops.inner(p, q))
        if not curvature > 0.0 or not math.isfinite(curvature):
            return KrylovResult(x, res, products, False, breakdown=True)
        alpha = rz / curvature
        x = x + alpha * p
        r = r - alpha * q
        res = ops.norm(r)
        if res <= target:
            break
        z = precond(r) if precond is not None else r
        rz_new = _real(ops, ops.inner(r, z))
        p = z + (rz_new / rz) * p
        rz = rz_new
    # the recurrence drifts from the true residual: measure it
    true = ops.norm(f - apply(x))
    return KrylovResult(x, true, products + 1, true <= target)


def gmres(
    ops: Ops,
    apply: Apply,
    f: Array,
    x0: Array,
    target: float,
    maxiter: int,
    precond: Apply | None,
    restart: int = 40,
) -> KrylovResult:
    """Restarted GMRES(restart), right-preconditioned, for ``A x = f`` until ``||f - A x|| <= target``."""
    x = x0
    products = 0
    while products < maxiter:
        r = f - apply(x)
        products += 1
        beta = ops.norm(r)
        if beta <= target or beta == 0.0:
            return KrylovResult(x, beta, products, True)
        steps = min(restart, maxiter - products)
        if steps <= 0:
            break
        basis = [r / beta]
        hess = np.zeros((steps + 1, steps), dtype=np.complex128 if ops.complex else np.float64)
        cols = []  # preconditioned directions (right preconditioning: x = x0 + M^{-1} V y)
        used = 0
        for j in range(steps):
            zj = precond(basis[j]) if precond is not None else basis[j]
            cols.append(zj)
            w = apply(zj)
            products += 1
            stacked = ops.concat(basis, axis=1)
            for _ in range(2):  # classical Gram-Schmidt, twice (stable as modified GS, in GEMMs)
                coef = ops.inner(stacked, w)
                w = w - ops.mm(stacked, coef)
                hess[: j + 1, j] += ops.host(coef)[:, 0]
            norm = ops.norm(w)
            hess[j + 1, j] = norm
            used = j + 1
            e1 = np.zeros(used + 1, dtype=hess.dtype)
            e1[0] = beta
            y, *_ = np.linalg.lstsq(hess[: used + 1, :used], e1, rcond=None)
            estimate = float(np.linalg.norm(hess[: used + 1, :used] @ y - e1))
            if estimate <= 0.5 * target or norm <= 1e-14 * beta:
                break
            basis.append(w / norm)
        e1 = np.zeros(used + 1, dtype=hess.dtype)
        e1[0] = beta
        y, *_ = np.linalg.lstsq(hess[: used + 1, :used], e1, rcond=None)
        step = ops.mm(ops.concat(cols[:used], axis=1), ops.asarray(y.reshape(-1, 1)))
        x = x + step
    true = ops.norm(f - apply(x))
    return KrylovResult(x, true, products + 1, true <= target)


def _real(ops: Ops, value: Array) -> float:
    return float(np.real(ops.host(value)).reshape(-1)[0])


# --- eigenproblems --------------------------------------------------------------------------------------
@dataclass
class EigResult:
    values: np.ndarray  # (k,) ascending (host, real)
    vectors: Array  # (N, k), orthonormal columns
    residual: float  # max_i ||A v_i - lambda_i v_i||
    products: int
    converged: bool
    initial: float = math.nan  # the largest residual of the first Rayleigh-Ritz pairs (of the guess)


def _orthonormal_block(ops: Ops, block: Array, against: Array | None, drop: float) -> Array | None:
    """``block`` orthogonalised against the orthonormal ``against`` and orthonormalised (None if nothing is left).

    Classical Gram-Schmidt, twice; columns that keep less than ``drop`` of their norm are dropped.
    """
    if against is not None:
        for _ in range(2):
            block = block - ops.mm(against, ops.inner(against, block))
    if int(block.shape[1]) == 1:
        size = ops.norm(block)
        return block / size if size > 0.0 and math.isfinite(size) else None
    q, r = ops.qr(block)
    diag = np.abs(np.diagonal(ops.host(r)))
    good = np.nonzero(diag > drop * max(float(np.max(diag)), 1e-300))[0]
    if good.size == 0:
        return None
    if good.size < int(q.shape[1]):
        q = ops.xp.take(q, ops.xp.asarray(good, device=ops.device), axis=1)
    return q


def block_eigh(
    ops: Ops,
    apply: Apply,
    x0: Array,
    k: int,
    target: float,
    maxiter: int,
    *,
    largest: bool = False,
    max_basis: int | None = None,
    precond: Apply | None = None,
) -> EigResult:
    """The ``k`` smallest (``largest``: largest) eigenpairs of the Hermitian ``apply`` from the guess ``x0``.

    Rayleigh-Ritz on a basis grown by the current residuals (block Lanczos in Davidson form, the projected
    matrix updated one block at a time; restarted from the Ritz vectors when the basis would exceed
    ``max_basis``), until every residual ``||A v_i - theta_i v_i|| <= target`` or ``maxiter`` operator
    applications (columns). With ``precond`` (an approximate inverse of A, for the smallest eigenvalues of a
    positive definite A) the residuals are preconditioned first: Davidson's method, which converges like
    inverse iteration when ``precond`` is close to ``A^{-1}``.
    """
    n = int(x0.shape[0])
    max_basis = min(max_basis or max(4 * k, k + 20), n)
    v = _orthonormal_block(ops, x0, None, 1e-10)
    if v is None or int(v.shape[1]) < k:  # a degenerate guess: completed with a fixed random block
        fill = ops.asarray(np.random.default_rng(0).standard_normal((n, k)))
        v = _orthonormal_block(ops, fill if v is None else ops.concat([v, fill], axis=1), None, 1e-10)
        v = v[:, :k] if v is not None and int(v.shape[1]) > k else v
    assert v is not None  # a random block of k <= n columns has full rank
    av = apply(v)
    products = int(v.shape[1])
    g = ops.host(ops.inner(v, av))
    initial = math.nan
    while True:
        theta, y = np.linalg.eigh((g + g.conj().T) / 2)
        order = np.argsort(-theta if largest else theta, kind="stable")[:k]
        theta, y = theta[order], y[:, order]
        yd = ops.asarray(y)
        x, ax = ops.mm(v, yd), ops.mm(av, yd)
        resid = ax - x * ops.real_asarray(theta.reshape(1, -1))
        norms = ops.col_norms(resid)
        res_norm = float(np.max(norms))
        initial = res_norm if math.isnan(initial) else initial
        if res_norm <= target or products >= maxiter:
            break
        active = np.nonzero(norms > target)[0]
        block = (
            resid
            if active.size == k
            else ops.xp.take(resid, ops.xp.asarray(active, device=ops.device), axis=1)
        )
        if precond is not None:
            block = precond(block)
        if int(v.shape[1]) + int(block.shape[1]) > max_basis:  # restart from the Ritz vectors (no products)
            v, av, g = x, ax, np.diag(theta).astype(g.dtype)
        new = _orthonormal_block(ops, block, v, 1e-8)
        if new is None:
            break
        a_new = apply(new)
        products += int(new.shape[1])
        cross = ops.host(ops.inner(v, a_new))
        corner = ops.host(ops.inner(new, a_new))
        g = np.block([[g, cross], [cross.conj().T, corner]])
        v, av = ops.concat([v, new], axis=1), ops.concat([av, a_new], axis=1)
    return EigResult(np.asarray(theta, dtype=np.float64), x, res_norm, products, res_norm <= target, initial)


def lanczos(
    ops: Ops, apply: Apply, x0: Array, target: float, maxiter: int, *, largest: bool = False
) -> EigResult:
    """The smallest (``largest``: largest) eigenpair of the Hermitian ``apply`` by Lanczos from ``x0``.

    Full reorthogonalisation (classical Gram-Schmidt against the whole basis, in two GEMVs per step), so the
    Ritz residual ``beta_m |y_m|`` is the true residual ``||A x - theta x||`` up to rounding; stops when it is
    at most ``target`` or after ``maxiter`` products. The basis is at most ``maxiter`` vectors.
    """
    n = int(x0.shape[0])
    size = ops.norm(x0)
    if not (size > 0.0 and math.isfinite(size)):
        x0, size = ops.asarray(np.random.default_rng(0).standard_normal((n, 1))), 0.0
        size = ops.norm(x0)
    basis = [x0 / size]
    alphas: list[float] = []
    betas: list[float] = []
    initial = math.nan
    theta, y, residual = 0.0, np.ones(1), math.inf
    w = apply(basis[0])
    for step in range(1, max(2, min(maxiter, n) + 1)):
        alpha = _real(ops, ops.inner(basis[-1], w))
        alphas.append(alpha)
        stacked = ops.concat(basis, axis=1) if len(basis) > 1 else basis[0]
        w = w - ops.mm(stacked, ops.inner(stacked, w))
        w = w - ops.mm(stacked, ops.inner(stacked, w))  # twice is enough (Kahan)
        beta = ops.norm(w)
        tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        values, vectors = np.linalg.eigh(tri)
        pick = -1 if largest else 0
        theta, y = float(values[pick]), vectors[:, pick]
        residual = beta * abs(float(y[-1]))
        initial = residual if math.isnan(initial) else initial
        if residual <= target or step >= min(maxiter, n) or beta <= 1e-14 * max(abs(theta), 1e-300):
            break
        betas.append(beta)
        basis.append(w / beta)
        w = apply(basis[-1])
    stacked = ops.concat(basis, axis=1) if len(basis) > 1 else basis[0]
    x = ops.mm(stacked, ops.asarray(y.reshape(-1, 1)))
    products = len(alphas)
    return EigResult(np.array([theta]), x, residual, products, residual <= target, initial)


def dense_eigh(ops: Ops, h: Array, k: int, *, largest: bool = False) -> EigResult:
    """The k extreme eigenpairs of a small assembled Hermitian matrix (one ``eigh``)."""
    sym = (h + ops.H(h)) / 2
    values, vectors = ops.eigh(sym)
    n = int(values.shape[0])
    order = np.arange(n - 1, n - 1 - k, -1) if largest else np.arange(k)
    host = ops.host(values).real.astype(np.float64)[order]
    x = ops.xp.take(vectors, ops.xp.asarray(order, device=ops.device), axis=1)
    resid = ops.mm(h, x) - x * ops.real_asarray(host.reshape(1, -1))
    return EigResult(host, x, float(np.max(ops.col_norms(resid))), k, True)
