"""Adjoint (vector-Jacobian product) rules for tensornet's contractions, as pure functions.

Each rule takes the primal arguments and a cotangent of the result and returns the cotangents of the
arguments: core gradients as lists of arrays shaped like the cores. They work on any backend the
cores use (numpy for hand-written optimisers, torch where they back the autograd bindings) and go
through planned contractions (:mod:`tensornet.contract`). The core gradients of one train share
their intermediates: left and right environments (partial products of the other cores) are built
once per call, so all d gradients cost about as much as two contractions of the whole network.

Cotangents of train-valued results (``matvec``, ``matmul``, ``hadamard``) are given core by core,
shaped like the result's cores (a TT/TTM or a list of arrays): these ops act core-wise, so the VJP is
core-wise too. No rule differentiates through ``round`` or renormalisation. The solvers' rules
(:func:`solve`: one adjoint solve; :func:`eigsh`: Hellmann-Feynman for the values) take the cotangent of the
solution as a tensor instead: their results' cores come out of iterations whose gauge means nothing.

Complex trains follow torch's convention for complex gradients: for a real loss ``L`` the gradient of
a complex argument ``z`` is ``dL/dRe z + i dL/dIm z``, so a holomorphic op ``y = f(x)`` (``full``,
``hadamard``, ``matvec``, ``matmul``) has the VJP ``x_bar = J^H y_bar``, and ``dot`` (conjugate-linear in
its first argument) the corresponding rule; a real argument gets the real part of its gradient. The rules
agree with torch's autograd on the same data (tested).

Which ops use which rule with torch: ``linear`` has a custom autograd Function built on
:func:`linear` (it saves only ``x`` and the cores unless ``save_weight`` is asked for); the other ops
use plain autograd through their einsums, which for them keeps no more than their (small) inputs and
the result cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _backend as B
from . import _checks, _linear, _train_checks
from ._backend import Array
from ._einsum import einsum
from ._layout import reshape_each, tt_layout

# The rules of the solvers live with them (tensornet.linalg, which does not import this module); they are
# re-exported here so that every VJP rule of the package has one home.
from .linalg._vjp import eigsh, solve
from .tt import TT, TTM, Train, TrainT

__all__ = ["dot", "eigsh", "full", "hadamard", "linear", "matmul", "matvec", "solve"]

CoreGrads = list[Array]
"""One gradient per core, shaped like the cores."""


# --- helpers ----------------------------------------------------------------------------------------
def _cotangent_cores(fn: str, grad: Any, expected: Sequence[tuple[int, ...]]) -> list[Array]:
    cores = list(grad.cores) if isinstance(grad, (TT, TTM)) else list(grad)
    if len(cores) != len(expected):
        raise ValueError(
            f"adjoint.{fn}: the cotangent has {len(cores)} cores but the result has {len(expected)}; "
            "give one cotangent core per result core"
        )
    for k, (core, shape) in enumerate(zip(cores, expected)):
        if tuple(int(s) for s in core.shape) != tuple(shape):
            raise ValueError(
                f"adjoint.{fn}: cotangent core {k} has shape {tuple(core.shape)} but result core {k} has "
                f"shape {tuple(shape)}; they must match"
            )
    return cores


def _check_same_modes(fn: str, ca: Sequence[Array], cb: Sequence[Array]) -> None:
    if len(ca) != len(cb):
        raise ValueError(f"adjoint.{fn}: the trains have {len(ca)} and {len(cb)} cores; they must match")
    for k, (x, y) in enumerate(zip(ca, cb)):
        if int(x.shape[1]) != int(y.shape[1]):
            raise ValueError(
                f"adjoint.{fn}: core {k} has mode size {int(x.shape[1])} in the first train and "
                f"{int(y.shape[1])} in the second; they must match"
            )


def _shapes(cores: Sequence[Array]) -> list[tuple[int, ...]]:
    return [tuple(int(s) for s in c.shape) for c in cores]


def _widened(*groups: Sequence[Array]) -> list[list[Array]]:
    """Each group of arrays in the one dtype they all combine in (numpy's promotion: real with complex is complex)."""
    target = str(np.result_type(*(B.dtype_name(a.dtype) for group in groups for a in group)))
    return [
        [
            a if B.dtype_name(a.dtype) == target else B.to_backend(a, B.backend_name(a), dtype=target)
            for a in group
        ]
        for group in groups
    ]


def _conjugated(arrays: Sequence[Array]) -> list[Array]:
    return [B.conj(a) for a in arrays]


# --- rules ------------------------------------------------------------------------------------------
@B.exact
def full(x: Train, grad: Array) -> CoreGrads:
    """VJP of :func:`tensornet.full`: the core gradients of ``sum(grad * full(x))``.

    Parameters
    ----------
    x : TT or TTM
    grad : array
        The dense cotangent, of shape ``x.shape`` (``(M, N)`` for a TTM).

    Returns
    -------
    list of arrays
        One gradient per core of ``x``, shaped like it.

    Raises
    ------
    TypeError
        ``x`` not a train.
    ValueError
        ``grad`` of another shape.

    Cost: ``O(r prod(n))`` for the first core, geometrically less for the others (one GEMM each, the
    right environments shared).
    """
    _train_checks.check_train("adjoint.full", x, "x")
    if tuple(int(s) for s in grad.shape) != tuple(x.shape):
        raise ValueError(
            f"adjoint.full: grad has shape {tuple(grad.shape)} but full(x) has shape {tuple(x.shape)}"
        )
    # J^H y_bar = conj(J^T conj(y_bar)): the real rule on the conjugated cotangent, conjugated
    (grad,), flat = _widened([B.conj(grad)], x._tt_layout())
    ops = _linear.array_ops(grad, *flat)
    if isinstance(x, TTM):
        grad = _linear.dense_to_interleaved(x.cores, grad, ops)
    grads = _conjugated(_linear.tt_grads_from_dense(flat, grad, ops))
    return reshape_each(B.as_primal(grads, x.cores), _shapes(x.cores))


@B.exact
def dot(a: TrainT, b: TrainT, grad: Any = 1.0) -> tuple[CoreGrads, CoreGrads]:
    """VJP of :func:`tensornet.dot` (``<a, b>``) for the scalar cotangent ``grad``.

    Parameters
    ----------
    a, b : TT or TTM
        The arguments of the inner product, of one type and mode sizes.
    grad : float or 0-d array
        The cotangent of the scalar ``<a, b>``.

    Returns
    -------
    (list of arrays, list of arrays)
        ``(d<a, b>/d a's cores, d<a, b>/d b's cores)`` times ``grad``.

    Raises
    ------
    TypeError
        Not two trains of one type.
    ValueError
        Different numbers of cores or mode sizes.

    Notes
    -----
    Left environments ``L_k`` (``r_a x r_b``) and right environments ``R_k`` are built once; core k's
    gradient is ``L_k`` and ``R_{k+1}`` around the other train's core k. Unlike ``dot`` itself this does
    not renormalise: trains whose partial products overflow need rescaling first.

    Cost: ``O(d n r s (r + s))``.
    """
    _train_checks.check_train("adjoint.dot", a, "a")
    _train_checks.check_train("adjoint.dot", b, "b")
    if type(a) is not type(b):
        raise TypeError(f"adjoint.dot: cannot combine a {type(a).__name__} with a {type(b).__name__}")
    ca, cb = a._tt_layout(), b._tt_layout()
    _check_same_modes("dot", ca, cb)
    # <a, b> = p(conj(a), b) with p bilinear; torch's convention then gives a_bar = p_a(conj(a), b) conj(g)
    # (no outer conjugate: a enters conjugated) and b_bar = conj(p_b(conj(a), b) conj(g))
    complex_ = (
        any(B.is_complex(c) for c in (*ca, *cb))
        or isinstance(grad, complex)
        or (B.is_array(grad) and B.is_complex(grad))
    )
    ca, cb = _widened(_conjugated(ca), cb)
    if complex_:
        grad = grad.conjugate() if isinstance(grad, (int, float, complex)) else B.conj(grad)
    xp = B.namespace(*ca, *cb)
    d = len(ca)
    one = xp.ones((1, 1), dtype=ca[0].dtype, device=B.device(ca[0]))
    left = [one]
    for k in range(d - 1):
        left.append(einsum("ab,anc,bnd->cd", left[k], ca[k], cb[k]))
    right = [one] * (d + 1)
    for k in range(d - 1, 0, -1):
        right[k] = einsum("anc,bnd,cd->ab", ca[k], cb[k], right[k + 1])
    grads_a = [einsum("ab,bnd,cd->anc", left[k], cb[k], right[k + 1]) * grad for k in range(d)]
    grads_b = _conjugated([einsum("ab,anc,cd->bnd", left[k], ca[k], right[k + 1]) * grad for k in range(d)])
    return (
        reshape_each(B.as_primal(grads_a, a.cores), _shapes(a.cores)),
        reshape_each(B.as_primal(grads_b, b.cores), _shapes(b.cores)),
    )


@B.exact
def hadamard(a: TrainT, b: TrainT, grad: Any) -> tuple[CoreGrads, CoreGrads]:
    """VJP of :func:`tensornet.hadamard` (``a * b``), core-wise.

    Parameters
    ----------
    a, b : TT or TTM
        The factors of the elementwise product, of one type and mode sizes.
    grad : TT, TTM or list of arrays
        Cotangent cores shaped like the result's ``(r s, n, r' s')`` (``(r s, m, n, r' s')`` for TTM).

    Returns
    -------
    (list of arrays, list of arrays)
        One gradient per core of ``a``, then one per core of ``b``, each shaped like its core.

    Raises
    ------
    ValueError
        Mode sizes that differ, cotangent cores of the wrong number or shape.

    Cost: ``O(d n r^2 s^2)``.
    """
    _train_checks.check_train("adjoint.hadamard", a, "a")
    _train_checks.check_train("adjoint.hadamard", b, "b")
    ca, cb = a._tt_layout(), b._tt_layout()
    _check_same_modes("hadamard", ca, cb)
    expected = [
        (
            int(x.shape[0]) * int(y.shape[0]),
            *(int(s) for s in xc.shape[1:-1]),
            int(x.shape[2]) * int(y.shape[2]),
        )
        for x, y, xc in zip(ca, cb, a.cores)
    ]
    gy = tt_layout(_cotangent_cores("hadamard", grad, expected))
    ca, cb, gy = _widened(ca, cb, _conjugated(gy))  # J^H y_bar = conj(J^T conj(y_bar))
    xp = B.namespace(*ca, *cb, *gy)
    grads_a, grads_b = [], []
    for x, y, g in zip(ca, cb, gy):
        ra, n, ra2 = (int(s) for s in x.shape)
        rb, _, rb2 = (int(s) for s in y.shape)
        g5 = xp.reshape(g, (ra, rb, n, ra2, rb2))
        grads_a.append(B.conj(einsum("acnbd,cnd->anb", g5, y)))
        grads_b.append(B.conj(einsum("acnbd,anb->cnd", g5, x)))
    return (
        reshape_each(B.as_primal(grads_a, a.cores), _shapes(a.cores)),
        reshape_each(B.as_primal(grads_b, b.cores), _shapes(b.cores)),
    )


def _product_expected(ca: Sequence[Array], cb: Sequence[Array]) -> list[tuple[int, ...]]:
    """The result's core shapes ``(r s, m, n, r' s')`` of the TTM product of cores ``ca`` and ``cb``."""
    return [
        (
            int(p.shape[0]) * int(q.shape[0]),
            int(p.shape[1]),
            int(q.shape[2]),
            int(p.shape[3]) * int(q.shape[3]),
        )
        for p, q in zip(ca, cb)
    ]


def _product_grads(
    ca: Sequence[Array], cb: Sequence[Array], gy: Sequence[Array]
) -> tuple[CoreGrads, CoreGrads]:
    """Core-wise VJP of the TTM product ``C_k[:, i, j, :] = sum_l A_k[:, i, l, :] (x) B_k[:, l, j, :]``.

    ``J^H y_bar = conj(J^T conj(y_bar))``; a real core gets the real part of its gradient.
    """
    primal_a, primal_b = ca, cb
    ca, cb, gy = _widened(ca, cb, _conjugated(gy))
    xp = B.namespace(*ca, *cb, *gy)
    grads_a, grads_b = [], []
    for p, q, g in zip(ca, cb, gy):
        ra, m, _, ra2 = (int(s) for s in p.shape)
        rb, _, n, rb2 = (int(s) for s in q.shape)
        g6 = xp.reshape(g, (ra, rb, m, n, ra2, rb2))
        grads_a.append(B.conj(einsum("acmnbe,ckne->amkb", g6, q)))
        grads_b.append(B.conj(einsum("acmnbe,amkb->ckne", g6, p)))
    return B.as_primal(grads_a, primal_a), B.as_primal(grads_b, primal_b)


@B.exact
def matvec(a: TTM, x: TT, grad: Any) -> tuple[CoreGrads, CoreGrads]:
    """VJP of :func:`tensornet.matvec` (``A @ x``), core-wise.

    ``x`` (a TT of shape ``A.col_shape``) is the TTM with one column (``n_k = 1``), so the rule, its
    returns and its errors are :func:`matmul`'s; ``grad`` (a TT or a list of arrays) has the result's
    core shapes ``(r s, m, r' s')``.

    Cost: ``O(d m n r^2 s^2)``.
    """
    _checks.check_type("adjoint.matvec", a, TTM, "A")
    _checks.check_type("adjoint.matvec", x, TT, "x")
    if a.col_shape != x.shape:
        raise ValueError(f"adjoint.matvec: A has col_shape {a.col_shape} but x has shape {x.shape}")
    columns = reshape_each(x.cores, [(r, n, 1, s) for r, n, s in _shapes(x.cores)])
    expected = _product_expected(a.cores, columns)
    gy = _cotangent_cores("matvec", grad, [(e[0], e[1], e[3]) for e in expected])
    grads_a, grads_x = _product_grads(a.cores, columns, reshape_each(gy, expected))
    return grads_a, reshape_each(grads_x, _shapes(x.cores))


@B.exact
def matmul(a: TTM, b: TTM, grad: Any) -> tuple[CoreGrads, CoreGrads]:
    """VJP of :func:`tensornet.matmul` (``A @ B``), core-wise.

    Parameters
    ----------
    a, b : TTM
        With ``A.col_shape == B.row_shape``.
    grad : TTM or list of arrays
        Cotangent cores shaped like the result's ``(r s, m, n, r' s')``.

    Returns
    -------
    (list of arrays, list of arrays)
        The gradients of ``A``'s and ``B``'s cores.

    Raises
    ------
    TypeError
        Not two TTMs.
    ValueError
        ``A.col_shape != B.row_shape``, cotangent cores of the wrong number or shape.

    Cost: ``O(d m k n r^2 s^2)``.
    """
    _checks.check_type("adjoint.matmul", a, TTM, "A")
    _checks.check_type("adjoint.matmul", b, TTM, "B")
    if a.col_shape != b.row_shape:
        raise ValueError(f"adjoint.matmul: A has col_shape {a.col_shape} but B has row_shape {b.row_shape}")
    gy = _cotangent_cores("matmul", grad, _product_expected(a.cores, b.cores))
    return _product_grads(a.cores, b.cores, gy)


def linear(
    x: Array, w: TTM, grad_y: Array, *, need_x: bool = True, need_cores: bool = True
) -> tuple[Array | None, CoreGrads | None]:
    """VJP of :func:`tensornet.linear` (``y = x @ W.full().T``): ``(grad_x, grads of W's cores)``.

    Parameters
    ----------
    x : array of shape ``(..., N)``
    w : TTM of shape (M, N)
    grad_y : array of shape ``(..., M)``
        With ``x``'s leading dimensions.
    need_x, need_cores : bool
        Which gradients to form; unrequested ones are None.

    Returns
    -------
    (array or None, list of arrays or None)
        ``grad_x`` shaped like ``x`` and the gradients of ``W``'s cores. A bias's gradient is ``grad_y``
        summed over the leading dimensions.

    Raises
    ------
    TypeError
        ``W`` not a TTM; ``x``, ``grad_y`` and ``W`` of different backends or dtypes.
    ValueError
        ``x`` not ending in N, ``grad_y`` not ending in M, leading dimensions that differ, devices that
        differ.

    Notes
    -----
    The path is planned per token bucket (:func:`tensornet.contract.plan_linear`): at large batch
    ``dx = dy W`` and ``dW = dy^T x`` (two GEMMs, W rebuilt) then the core gradients from ``dW`` with
    shared environments; at small batch reverse mode through the factorised sweep.

    Cost: ``~4 B M N + O(M N r)`` or ``~2x`` the factorised forward, whichever is planned cheaper.
    """
    _checks.check_type("adjoint.linear", w, TTM, "W")
    if B.is_complex(w.cores[0]) or B.is_complex(x) or B.is_complex(grad_y):
        raise TypeError(
            "adjoint.linear: complex operands are not supported (as tn.linear); use adjoint.matvec"
        )
    cores = w.cores
    _linear.check_operands("adjoint.linear", {"x": x, "grad_y": grad_y, "W": cores[0]})
    out_features, in_features = w.shape
    if int(x.shape[-1]) != in_features or int(grad_y.shape[-1]) != out_features:
        raise ValueError(
            f"adjoint.linear: x has shape {tuple(x.shape)} and grad_y {tuple(grad_y.shape)} but W is "
            f"(M, N) = {w.shape}; x must end in N and grad_y in M"
        )
    if tuple(x.shape[:-1]) != tuple(grad_y.shape[:-1]):
        raise ValueError(
            f"adjoint.linear: x has leading dimensions {tuple(x.shape[:-1])} but grad_y has "
            f"{tuple(grad_y.shape[:-1])}; they must match"
        )
    xp = B.namespace(x, grad_y, *cores)
    x2d = xp.reshape(x, (-1, in_features))
    gy2d = xp.reshape(grad_y, (-1, out_features))
    if int(x2d.shape[0]) == 0:
        grad_x = xp.zeros(x.shape, dtype=x.dtype, device=B.device(x)) if need_x else None
        return grad_x, ([xp.zeros_like(c) for c in cores] if need_cores else None)
    plan = _linear.planned(x2d, cores, B.backend_name(x2d))
    strategy, path = plan.backward.strategy, plan.backward.path
    grad_x, grads = _linear.linear_backward(
        x2d, cores, gy2d, strategy, need_x=need_x, need_cores=need_cores, path=path
    )
    return (xp.reshape(grad_x, x.shape) if grad_x is not None else None), grads
