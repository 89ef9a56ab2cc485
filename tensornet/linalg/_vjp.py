"""Adjoint (VJP) rules of :func:`solve` and :func:`eigsh` (pure functions, any backend).

They are re-exported by :mod:`tensornet.adjoint`.

* ``x = A^{-1} b``: for a loss L with tensor gradient ``g = dL/dx``, one adjoint solve ``A^H lambda = g`` gives
  ``dL/db = lambda`` and ``dL/dA = -lambda x^H``; both reach the cores by the chain rule through the forms
  ``<lambda, b>`` and ``<lambda, A x>``, contracted with environments (never densely).
* ``A v_i = lambda_i v_i`` (symmetric or Hermitian A, unit v_i): ``d lambda_i = v_i^H dA v_i``
  (Hellmann-Feynman), so the cores of A get ``sum_i g_i d<v_i, A v_i>/dA``.

Complex cores follow torch's convention (the gradient of a real loss is ``dL/dRe + i dL/dIm``): a core's
gradient is ``J_k^H`` applied to the cotangent, the conjugate of the environments' holomorphic derivative
``J_k^T conj(lambda)``.

The cotangent of a solution is a *tensor* (a TT), not per-core: the solution's cores come out of an iterative
method whose gauge carries no meaning. :func:`tangent_cotangent` turns the per-core gradients torch delivers
into that tensor for a solution in left-orthonormal gauge (exact where the solution's ranks are maximal,
otherwise the projection on the tangent space of the fixed-rank manifold at x).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _backend as B
from .._backend import Array
from .._einsum import einsum
from .._train_checks import promoted
from ..tt import TT, TTM
from ._api import solve as solve_tt
from ._checks import adjoint as adjoint_ttm
from ._checks import check_square, check_tol, check_vector
from ._local import op_left, op_right, vec_left, vec_right
from ._ops import Ops


def _operator_grads(ops: Ops, a: list[Array], bra: list[Array], ket: list[Array]) -> list[Array]:
    """Gradients of ``<bra, A ket>`` with respect to A's cores (bra conjugated), shaped like them."""
    d = len(a)
    one = ops.reshape(ops.eye(1), (1, 1, 1))
    left: list[Any] = [one] + [None] * d
    right: list[Any] = [None] * d + [one]
    for k in range(d - 1):
        left[k + 1] = op_left(ops, left[k], bra[k], a[k], ket[k])
    right[d - 1] = one
    for k in range(d - 1, 0, -1):
        right[k - 1] = op_right(ops, right[k], bra[k], a[k], ket[k])
    return [einsum("xay,xib,yjd,bBd->aijB", left[k], ops.conj(bra[k]), ket[k], right[k]) for k in range(d)]


def _vector_grads(ops: Ops, bra: list[Array], ket: list[Array]) -> list[Array]:
    """Gradients of ``<bra, ket>`` with respect to ket's cores (bra conjugated), shaped like them."""
    d = len(ket)
    one = ops.eye(1)
    left: list[Any] = [one] + [None] * d
    right: list[Any] = [None] * d + [one]
    for k in range(d - 1):
        left[k + 1] = vec_left(ops, left[k], bra[k], ket[k])
    right[d - 1] = one
    for k in range(d - 1, 0, -1):
        right[k - 1] = vec_right(ops, right[k], bra[k], ket[k])
    return [einsum("xy,xjb,bd->yjd", left[k], ops.conj(bra[k]), right[k]) for k in range(d)]


@B.exact
def solve(A: TTM, b: TT, x: TT, grad: TT, *, tol: float = 1e-8) -> tuple[list[Array], list[Array]]:
    """VJP of :func:`tensornet.linalg.solve`: the core gradients of ``L(A^{-1} b)`` given ``dL/dx``.

    Parameters
    ----------
    A : TTM
        The (square) operator of the solve.
    b : TT
        Its right-hand side.
    x : TT
        The solution ``A^{-1} b`` (as returned by ``solve``).
    grad : TT
        The cotangent ``dL/dx`` as a tensor, of x's shape (for ``L = <c, x>`` it is c).
    tol : float
        Relative residual of the adjoint solve ``A^H lambda = grad``.

    Returns
    -------
    (list of arrays, list of arrays)
        The gradients of A's cores and of b's cores, shaped like them.

    Raises
    ------
    TypeError, ValueError
        As :func:`tensornet.linalg.solve` for A, b, x and grad (shapes that disagree, non-square A, bad tol).

    Warns
    -----
    ConvergenceWarning
        The adjoint solve missed ``tol`` (the gradients then carry its residual).

    Notes
    -----
    ``dL/db = lambda`` and ``dL/dA = -lambda x^H`` with ``A^H lambda = grad``; core k of b gets
    ``E_{<k} lambda_k E_{>k}`` (environments of ``<lambda, b>``), core k of A the environments of
    ``-<lambda, A x>`` around ``lambda_k`` and ``x_k``.

    Cost: one :func:`solve` with ``A^H``, plus ``O(d (R r_l r_x n (r_l + r_x) + ...))`` for the environments.
    """
    fn = "adjoint.solve"
    given = check_square(fn, A)
    b_given = check_vector(fn, "b", b, given)
    x = check_vector(fn, "x", x, given)
    grad = check_vector(fn, "grad", grad, given)
    tol = check_tol(fn, tol)
    a, b, x, grad = promoted(given, b_given, x, grad)
    lam = solve_tt(adjoint_ttm(a), grad, tol=tol)
    ops = Ops(a.cores[0])
    # the environments give the holomorphic derivatives J^T conj(lambda); torch's convention wants J^H lambda
    grads_b = [B.conj(g) for g in _vector_grads(ops, list(lam.cores), list(b.cores))]
    grads_a = [-B.conj(g) for g in _operator_grads(ops, list(a.cores), list(lam.cores), list(x.cores))]
    return B.as_primal(grads_a, given.cores), B.as_primal(grads_b, b_given.cores)


@B.exact
def eigsh(A: TTM, vectors: list[TT], grad_values: Any) -> list[Array]:
    """VJP of the values of :func:`tensornet.linalg.eigsh` (Hellmann-Feynman): A's core gradients.

    Parameters
    ----------
    A : TTM
        The symmetric operator.
    vectors : list of k TTs
        Its unit eigenvectors (as returned by ``eigsh``).
    grad_values : sequence of k floats or 1-D array
        The cotangents ``dL/d lambda_i``.

    Returns
    -------
    list of arrays
        The gradients of A's cores, shaped like them.

    Raises
    ------
    TypeError, ValueError
        A not a square TTM, vectors of another shape, a count of cotangents that differs from the vectors'.

    Notes
    -----
    ``d lambda_i = v_i^H dA v_i`` for a simple eigenvalue and a unit ``v_i``; a repeated eigenvalue has no
    derivative of its individual values (only of symmetric functions of them, e.g. their sum, which this
    rule gives correctly).

    Cost: ``O(k d (R r^3 n + R^2 r^2 n^2))``.
    """
    fn = "adjoint.eigsh"
    given = check_square(fn, A)
    if isinstance(vectors, TT):
        vectors = [vectors]
    vectors = [check_vector(fn, f"vectors[{i}]", v, given) for i, v in enumerate(vectors)]
    a, *vectors = promoted(given, *vectors)
    weights = np.asarray(
        B.to_backend(grad_values, "numpy") if B.is_array(grad_values) else grad_values
    ).reshape(-1)
    if weights.size != len(vectors):
        raise ValueError(
            f"{fn}: {weights.size} cotangents for {len(vectors)} vectors; give one per eigenvalue"
        )
    ops = Ops(a.cores[0])
    total: list[Any] = [None] * a.ncores
    for weight, v in zip(weights, vectors):
        if float(weight) == 0.0:
            continue
        grads = _operator_grads(ops, list(a.cores), list(v.cores), list(v.cores))
        total = [g * float(weight) if t is None else t + g * float(weight) for t, g in zip(total, grads)]
    grads = [ops.xp.zeros_like(c) if t is None else B.conj(t) for t, c in zip(total, a.cores)]  # J^H
    return B.as_primal(grads, given.cores)


def tangent_cotangent(ops: Ops, x: list[Array], grads: list[Array]) -> TT:
    """The tensor Z with ``J^T Z = grads`` in the tangent space at x (x left-orthonormal up to its last core).

    ``Z = sum_k X_{<k} W_k X_{>k}`` with ``W_d = grads_d`` and ``W_k = (I - U_k U_k^H) grads_k G_k^+`` for k < d
    (U_k the left unfolding of core k, ``G_k`` the Gram matrix of ``X_{>k}``; its pseudo-inverse drops
    directions below ``1e-13`` of its largest eigenvalue), as a train of rank 2r.
    """
    d = len(x)
    if d == 1:
        return TT._trusted([grads[0]])
    grams: list[Any] = [None] * d
    grams[d - 1] = ops.eye(1)
    for k in range(d - 1, 0, -1):
        grams[k - 1] = vec_right(ops, grams[k], x[k], x[k])
    w = []
    for k in range(d - 1):
        r0, n, r1 = (int(v) for v in x[k].shape)
        u = ops.reshape(x[k], (r0 * n, r1))
        g = ops.reshape(grads[k], (r0 * n, r1))
        g = g - ops.mm(u, ops.inner(u, g))
        w.append(ops.reshape(ops.mm(g, _pinv(ops, grams[k])), (r0, n, r1)))
    w.append(grads[d - 1])
    cores = []
    for k in range(d):
        xk, wk = x[k], w[k]
        r0, n, r1 = (int(v) for v in xk.shape)
        if k == 0:
            cores.append(ops.concat([xk, wk], axis=2))
        elif k == d - 1:
            cores.append(ops.concat([wk, xk], axis=0))
        else:
            top = ops.concat([xk, wk], axis=2)
            bottom = ops.concat([ops.zeros((r0, n, r1)), xk], axis=2)
            cores.append(ops.concat([top, bottom], axis=0))
    return TT._trusted(cores)


def _pinv(ops: Ops, gram: Array) -> Array:
    """Pseudo-inverse of a Hermitian PSD Gram matrix, dropping eigenvalues below ``1e-13`` of the largest.

    The Gram matrix is ``conj(X_{>k}) X_{>k}^T`` (bra index first, as environments are), so the transpose
    (conjugate) is what multiplies the gradient from the right.
    """
    values, vectors = ops.eigh((gram + ops.H(gram)) / 2)
    host = ops.host(values).real
    top = float(np.max(host)) if host.size else 0.0
    keep = host > 1e-13 * top if top > 0 else np.zeros_like(host, dtype=bool)
    inverse = np.where(keep, 1.0 / np.where(keep, host, 1.0), 0.0)
    inv = ops.mm(vectors * ops.real_asarray(inverse.reshape(1, -1)), ops.H(vectors))
    return ops.conj(inv) if ops.complex else inv
