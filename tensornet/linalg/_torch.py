"""Autograd bindings of :func:`solve` and :func:`eigsh` for torch cores (imported only when cores need gradients).

The forward runs the solver on detached cores; the backward applies the rules of :mod:`tensornet.linalg._vjp`:
one adjoint solve for ``solve`` (the per-core gradients of the returned, left-orthonormal solution are first
lifted to a tensor cotangent, :func:`tensornet.linalg._vjp.tangent_cotangent`), Hellmann-Feynman for the values
of ``eigsh`` (the vectors are returned without a graph).
"""

from __future__ import annotations

from typing import Any

import torch

from .._backend import Array
from ..decomp import orthogonalize
from ..tt import TT, TTM
from . import _vjp
from ._ops import Ops


class SolveFunction(torch.autograd.Function):
    """``x = A^{-1} b`` with A's and b's cores as inputs and x's cores as outputs."""

    @staticmethod
    def forward(ctx: Any, run: Any, na: int, tol: float, *cores: Array) -> tuple[Array, ...]:  # type: ignore[override]
        a = TTM._trusted([c.detach() for c in cores[:na]])
        b = TT._trusted([c.detach() for c in cores[na:]])
        x = orthogonalize(run(a, b), center="left")
        ctx.na, ctx.tol = na, tol
        ctx.save_for_backward(*cores, *x.cores)
        ctx.nb = len(cores) - na
        return tuple(x.cores)

    @staticmethod
    def backward(ctx: Any, *grads: Array) -> tuple[Any, ...]:  # type: ignore[override]
        saved = ctx.saved_tensors
        na, nb = ctx.na, ctx.nb
        a = TTM._trusted([c.detach() for c in saved[:na]])
        b = TT._trusted([c.detach() for c in saved[na : na + nb]])
        x_cores = [c.detach() for c in saved[na + nb :]]
        ops = Ops(x_cores[0])
        grads = tuple(torch.zeros_like(c) if g is None else g.detach() for g, c in zip(grads, x_cores))
        cotangent = _vjp.tangent_cotangent(ops, x_cores, list(grads))
        grads_a, grads_b = _vjp.solve(a, b, TT._trusted(x_cores), cotangent, tol=ctx.tol)
        needs = ctx.needs_input_grad[3:]
        out = [g if need else None for g, need in zip([*grads_a, *grads_b], needs)]
        return (None, None, None, *out)


class EigValuesFunction(torch.autograd.Function):
    """The values of ``eigsh`` as a function of A's cores (vectors carry no graph)."""

    @staticmethod
    def forward(ctx: Any, run: Any, *cores: Array) -> Array:  # type: ignore[override]
        a = TTM._trusted([c.detach() for c in cores])
        values, vectors, info = run(a)
        ctx.vectors, ctx.extra = vectors, (vectors, info)
        ctx.save_for_backward(*cores)
        return values

    @staticmethod
    def backward(ctx: Any, grad: Array) -> tuple[Any, ...]:  # type: ignore[override]
        a = TTM._trusted([c.detach() for c in ctx.saved_tensors])
        grads = _vjp.eigsh(a, ctx.vectors, grad.detach())
        return (None, *(g if need else None for g, need in zip(grads, ctx.needs_input_grad[1:])))


def solve(a: TTM, b: TT, tol: float, run: Any) -> TT:
    """``run(a, b)`` (a solve on detached cores) inside the autograd graph of A's and b's cores."""
    cores = SolveFunction.apply(run, a.ncores, tol, *a.cores, *b.cores)
    return TT._trusted(list(cores))


def eig_values(a: TTM, run: Any) -> tuple[Array, list[TT], Any]:
    """``run(a) -> (values, vectors, info)`` with the values attached to the graph of A's cores."""
    holder: dict[str, Any] = {}

    def wrapped(detached: TTM) -> tuple[Array, list[TT], Any]:
        values, vectors, info = run(detached)
        holder["vectors"], holder["info"] = vectors, info
        return values, vectors, info

    values = EigValuesFunction.apply(wrapped, *a.cores)
    return values, holder["vectors"], holder["info"]
