"""Adjoint (vector-Jacobian product) rules for tensornet's contractions, as pure functions.

Each rule takes the primal arguments and a cotangent of the result and returns the cotangents of the
arguments: core gradients as lists of arrays shaped like the cores. They work on any backend the
cores use (numpy for hand-written optimisers, torch where they back the autograd bindings) and go
through planned contractions (:mod:`tensornet.contract`). The core gradients of one train share
their intermediates: left and right environments (partial products of the other cores) are built
once per call, so all d gradients cost about as much as two contractions of the whole network.

Cotangents of train-valued results (``matvec``, ``matmul``, ``hadamard``) are given core by core,
shaped like the result's cores (a TT/TTM or a list of arrays): these ops act core-wise, so the VJP is
core-wise too. No rule differentiates through ``round`` or renormalisation.

Which ops use which rule with torch: ``linear`` has a custom autograd Function built on
:func:`linear` (it saves only ``x`` and the cores unless ``save_weight`` is asked for); the other ops use plain autograd through their
einsums, which for them keeps no more than their (small) inputs and the result cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _backend as B
from . import _linear
from . import tt as _tt
from ._einsum import einsum

__all__ = ["dot", "full", "hadamard", "linear", "matmul", "matvec"]


# --- helpers ----------------------------------------------------------------------------------------
def _cores(
    fn: str, train: Any, name: str, kind: type | tuple[type, ...] = (_tt.TT, _tt.TTM)
) -> tuple[Any, ...]:
    if not isinstance(train, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise TypeError(f"adjoint.{fn}: {name} must be a tensornet {names}, got {type(train).__name__}")
    cores: tuple[Any, ...] = train.cores  # type: ignore[attr-defined]
    return cores


def _cotangent_cores(fn: str, grad: Any, expected: Sequence[tuple[int, ...]]) -> list[Any]:
    cores = list(grad.cores) if isinstance(grad, (_tt.TT, _tt.TTM)) else list(grad)
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


def _flat(cores: Sequence[Any]) -> list[Any]:
    """TTM cores as TT cores over merged modes ``m n`` (TT cores unchanged)."""
    xp = B.namespace(*cores)
    if cores[0].ndim == 3:
        return list(cores)
    return [
        xp.reshape(c, (int(c.shape[0]), int(c.shape[1]) * int(c.shape[2]), int(c.shape[3]))) for c in cores
    ]


def _unflat(grads: Sequence[Any], cores: Sequence[Any]) -> list[Any]:
    xp = B.namespace(*grads)
    return [xp.reshape(g, tuple(int(s) for s in c.shape)) for g, c in zip(grads, cores)]


# --- rules ------------------------------------------------------------------------------------------
@B.exact
def full(x: Any, grad: Any) -> list[Any]:
    """VJP of :func:`tensornet.full`: the core gradients of ``sum(grad * full(x))``.

    ``grad`` has the dense shape (``x.shape`` for a TT, ``(M, N)`` for a TTM).
    Cost: ``O(r prod(n))`` for the first core, geometrically less for the others (one GEMM each,
    the right environments shared).
    """
    cores = _cores("full", x, "x")
    expected = x.shape
    if tuple(int(s) for s in grad.shape) != tuple(expected):
        raise ValueError(
            f"adjoint.full: grad has shape {tuple(grad.shape)} but full(x) has shape {tuple(expected)}"
        )
    ops = _linear.array_ops(grad, *cores)
    if isinstance(x, _tt.TTM):
        grad = _linear.dense_to_interleaved(cores, grad, ops)
    return _unflat(_linear.tt_grads_from_dense(_flat(cores), grad, ops), cores)


@B.exact
def dot(a: Any, b: Any, grad: Any = 1.0) -> tuple[list[Any], list[Any]]:
    """VJP of :func:`tensornet.dot` (``<a, b>``): ``(grads of a's cores, grads of b's cores)`` for the
    scalar cotangent ``grad``.

    Left environments ``L_k`` (``r_a x r_b``) and right environments ``R_k`` are built once; core k's
    gradient is ``L_k`` and ``R_{k+1}`` around the other train's core k. Unlike ``dot`` itself this does
    not renormalise: trains whose partial products overflow need rescaling first.
    Cost: ``O(d n r s (r + s))``.
    """
    ca, cb = _flat(_cores("dot", a, "a")), _flat(_cores("dot", b, "b"))
    if type(a) is not type(b):
        raise TypeError(f"adjoint.dot: cannot combine a {type(a).__name__} with a {type(b).__name__}")
    _check_same_modes("dot", ca, cb)
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
    grads_b = [einsum("ab,anc,cd->bnd", left[k], ca[k], right[k + 1]) * grad for k in range(d)]
    return _unflat(grads_a, a.cores), _unflat(grads_b, b.cores)


def _check_same_modes(fn: str, ca: Sequence[Any], cb: Sequence[Any]) -> None:
    if len(ca) != len(cb):
        raise ValueError(f"adjoint.{fn}: the trains have {len(ca)} and {len(cb)} cores; they must match")
    for k, (x, y) in enumerate(zip(ca, cb)):
        if int(x.shape[1]) != int(y.shape[1]):
            raise ValueError(
                f"adjoint.{fn}: core {k} has mode size {int(x.shape[1])} in the first train and "
                f"{int(y.shape[1])} in the second; they must match"
            )


@B.exact
def hadamard(a: Any, b: Any, grad: Any) -> tuple[list[Any], list[Any]]:
    """VJP of :func:`tensornet.hadamard` for cotangent cores ``grad`` shaped like the result's
    ``(r s, n, r' s')`` (``(r s, m, n, r' s')`` for TTM). Core-wise. Cost: ``O(d n r^2 s^2)``."""
    ca, cb = _flat(_cores("hadamard", a, "a")), _flat(_cores("hadamard", b, "b"))
    _check_same_modes("hadamard", ca, cb)
    expected = [
        (x.shape[0] * y.shape[0], *tuple(int(s) for s in xc.shape[1:-1]), x.shape[2] * y.shape[2])
        for x, y, xc in zip(ca, cb, a.cores)
    ]
    gy = _flat(_cotangent_cores("hadamard", grad, [tuple(int(s) for s in e) for e in expected]))
    xp = B.namespace(*ca, *cb, *gy)
    grads_a, grads_b = [], []
    for x, y, g in zip(ca, cb, gy):
        ra, n, ra2 = (int(s) for s in x.shape)
        rb, _, rb2 = (int(s) for s in y.shape)
        g5 = xp.reshape(g, (ra, rb, n, ra2, rb2))
        grads_a.append(einsum("acnbd,cnd->anb", g5, y))
        grads_b.append(einsum("acnbd,anb->cnd", g5, x))
    return _unflat(grads_a, a.cores), _unflat(grads_b, b.cores)


@B.exact
def matvec(a: Any, x: Any, grad: Any) -> tuple[list[Any], list[Any]]:
    """VJP of :func:`tensornet.matvec` (``A @ x``) for cotangent cores ``grad`` shaped like the
    result's ``(r s, m, r' s')``: ``(grads of A's cores, grads of x's cores)``. Core-wise.
    Cost: ``O(d m n r^2 s^2)``."""
    ca = _cores("matvec", a, "A", _tt.TTM)
    cx = _cores("matvec", x, "x", _tt.TT)
    if a.col_shape != x.shape:
        raise ValueError(f"adjoint.matvec: A has col_shape {a.col_shape} but x has shape {x.shape}")
    expected = [
        (int(p.shape[0]) * int(q.shape[0]), int(p.shape[1]), int(p.shape[3]) * int(q.shape[2]))
        for p, q in zip(ca, cx)
    ]
    gy = _cotangent_cores("matvec", grad, expected)
    xp = B.namespace(*ca, *cx, *gy)
    grads_a, grads_x = [], []
    for p, q, g in zip(ca, cx, gy):
        ra, m, _, ra2 = (int(s) for s in p.shape)
        rx, _, rx2 = (int(s) for s in q.shape)
        g5 = xp.reshape(g, (ra, rx, m, ra2, rx2))
        grads_a.append(einsum("acmbd,cnd->amnb", g5, q))
        grads_x.append(einsum("acmbd,amnb->cnd", g5, p))
    return grads_a, grads_x


@B.exact
def matmul(a: Any, b: Any, grad: Any) -> tuple[list[Any], list[Any]]:
    """VJP of :func:`tensornet.matmul` (``A @ B``) for cotangent cores ``grad`` shaped like the
    result's ``(r s, m, n, r' s')``. Core-wise. Cost: ``O(d m k n r^2 s^2)``."""
    ca = _cores("matmul", a, "A", _tt.TTM)
    cb = _cores("matmul", b, "B", _tt.TTM)
    if a.col_shape != b.row_shape:
        raise ValueError(f"adjoint.matmul: A has col_shape {a.col_shape} but B has row_shape {b.row_shape}")
    expected = [
        (
            int(p.shape[0]) * int(q.shape[0]),
            int(p.shape[1]),
            int(q.shape[2]),
            int(p.shape[3]) * int(q.shape[3]),
        )
        for p, q in zip(ca, cb)
    ]
    gy = _cotangent_cores("matmul", grad, expected)
    xp = B.namespace(*ca, *cb, *gy)
    grads_a, grads_b = [], []
    for p, q, g in zip(ca, cb, gy):
        ra, m, _, ra2 = (int(s) for s in p.shape)
        rb, _, n, rb2 = (int(s) for s in q.shape)
        g6 = xp.reshape(g, (ra, rb, m, n, ra2, rb2))
        grads_a.append(einsum("acmnbe,ckne->amkb", g6, q))
        grads_b.append(einsum("acmnbe,amkb->ckne", g6, p))
    return grads_a, grads_b


def linear(
    x: Any, w: Any, grad_y: Any, *, need_x: bool = True, need_cores: bool = True
) -> tuple[Any, list[Any] | None]:
    """VJP of :func:`tensornet.linear` (``y = x @ W.full().T``): ``(grad_x, grads of W's cores)``.

    ``x`` is ``(..., N)`` and ``grad_y`` ``(..., M)``. The path is planned per token bucket
    (:func:`tensornet.contract.plan_linear`): at large batch ``dx = dy W`` and ``dW = dy^T x`` (two
    GEMMs, W rebuilt) then the core gradients from ``dW`` with shared environments; at small batch
    reverse mode through the factorised sweep. A bias's gradient is ``grad_y`` summed over the
    leading dimensions. Unrequested gradients are None.
    Cost: ``~4 B M N + O(M N r)`` or ``~2x`` the factorised forward, whichever is planned cheaper.
    """
    cores = _cores("linear", w, "W", _tt.TTM)
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
    grad_x, grads = _linear.linear_backward(
        x2d,
        cores,
        gy2d,
        plan.backward.strategy,
        need_x=need_x,
        need_cores=need_cores,
        path=plan.backward.path,
    )
    return (xp.reshape(grad_x, x.shape) if grad_x is not None else None), grads
