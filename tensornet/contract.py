"""Contraction planning: cached ``opt_einsum`` expressions, the ``linear`` planner, and explanations.

Every network tensornet contracts (``full``, ``dot``, ``matvec``, ``matmul``, ``hadamard``, the adjoint
networks) goes through :func:`einsum`: the path is found once per (equation, operand shapes) by
``opt_einsum`` (``optimal`` for few operands, ``dp`` for moderate and ``greedy`` for many) and the
compiled expression is reused. Paths depend on shapes only, so these plans are shared by every
backend, dtype and device.

``linear(x, W)`` (x of shape ``(B, N)``, W a TTM) is planned by :func:`plan_linear` among strategies
that compute the same thing in different orders:

* ``rebuild``: W rebuilt as the product of the train's two halves, one permuting copy, then one
  ``(B, N) x (N, M)`` GEMM. Best at training batch sizes: the rebuild costs ``O(M N r)``, small next
  to the GEMM's ``2 B M N`` once ``B`` exceeds a few ranks.
* ``sweep``: the factorised core-by-core product, one GEMM and one 2-D transpose per core, never
  forming an ``M x N`` array. Best at small B (decoding): it reads far fewer bytes than W.
* ``einsum``: the FLOP-optimal path ``opt_einsum`` finds for the whole network, executed pairwise.

and the backward among ``dense`` (``dx = dy W``, ``dW = dy^T x``, core gradients from ``dW``) and
``sweep`` (reverse mode through the factorised sweep). FLOPs alone mislead (a FLOP-optimal
factorised path can be several times slower than dense because of transposes and tiny GEMMs), so
candidates are ranked by a roofline cost model: per step ``max(flops / (peak * efficiency),
bytes / bandwidth) + launch``, with GEMM efficiency falling for thin dimensions and permuting copies
charged as memory traffic; each strategy charges exactly the kernels it runs. With :func:`autotune` on,
the candidates are instead timed once per shape bucket on the real arrays and the fastest is cached
(like cuDNN's benchmark mode).

Linear plans are cached by (core shapes, dtype, backend, device, token bucket); the bucket rounds the
number of rows up to a power of two, so generation with a growing length does not re-plan every token.
:func:`cache_info` counts planner invocations (misses) and hits of both caches.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from . import _einsum
from ._einsum import NetworkPlan, expression, optimizer_for, plan_network, run_path, symbols
from ._linear import plan as _linear_plan
from ._linear.cost import Candidate, Machine
from ._linear.plan import LinearPlan, autotune, plan_linear, token_bucket
from ._linear.strategies import linear_equation, linear_grad_equations

__all__ = [
    "CacheInfo",
    "Candidate",
    "LinearPlan",
    "Machine",
    "NetworkPlan",
    "autotune",
    "cache_clear",
    "cache_info",
    "einsum",
    "explain",
    "expression",
    "linear_equation",
    "linear_grad_equations",
    "optimizer_for",
    "plan_linear",
    "plan_network",
    "run_path",
    "symbols",
    "token_bucket",
]

CacheInfo = _einsum.CacheInfo


def einsum(equation: str, *operands: Any, optimize: Any = None) -> Any:
    """Contract ``operands`` (numpy arrays or torch tensors) by ``equation`` with a cached, path-optimised expression.

    The path is found once per (equation, operand shapes) by ``opt_einsum`` (see the module notes) and each
    pairwise step runs on the operands' backend. Operands of different dtypes are promoted as numpy promotes
    them on either backend (torch's own ``einsum`` refuses them): a float64 with a complex128 operand gives
    complex128, a float32 with a float64 one float64.

    >>> import numpy as np
    >>> import tensornet as tn
    >>> float(tn.contract.einsum("ij,jk,ki->", np.eye(2), np.eye(2), np.eye(2)))
    2.0

    Cost: the contraction's FLOPs along the chosen path; the path search once per equation and shapes.
    """
    torch = sys.modules.get("torch")
    dtypes = {getattr(o, "dtype", None) for o in operands}
    if torch is not None and len(dtypes) > 1 and all(isinstance(o, torch.Tensor) for o in operands):
        target = functools.reduce(torch.promote_types, [o.dtype for o in operands])
        operands = tuple(o.to(target) for o in operands)
    return _einsum.einsum(equation, *operands, optimize=optimize)


def cache_info() -> CacheInfo:
    """Hits and misses of the network and ``linear`` plan caches together, and the plans they hold."""
    networks, linear = _einsum.cache_info(), _linear_plan.cache_info()
    return CacheInfo(
        networks.hits + linear.hits, networks.misses + linear.misses, networks.currsize + linear.currsize
    )


def cache_clear() -> None:
    """Forget every plan and reset the counters (plans are rebuilt on next use)."""
    _einsum.cache_clear()
    _linear_plan.cache_clear()


def explain(x_shape: Any, w: Any, *more: Any, optimize: Any = None) -> LinearPlan | NetworkPlan:
    """How tensornet contracts a network, as a plan whose ``repr`` is a readable cost table.

    Parameters
    ----------
    x_shape : tuple of int, array, or str
        ``explain(x_shape, W)`` for ``linear(x, W)``: the shape of ``x`` or ``x`` itself.
        ``explain(equation, *shapes)`` for any einsum network.
    w : TTM, list of core shapes, or an operand shape
        The weight of ``linear`` (a TTM or the shapes ``(r, m, n, r')`` of its cores), or the first
        operand's shape of ``equation``.
    *more : tuple of int
        The other operands' shapes of ``equation``.
    optimize : optional
        An ``opt_einsum`` optimizer or path for ``equation``.

    Returns
    -------
    LinearPlan or NetworkPlan
        For ``linear``: the candidates compared, their FLOPs, bytes moved, largest intermediate and
        modelled (or measured) time, and why the chosen one won. For a network: the ``opt_einsum`` path
        and its cost.

    Cost: one cost-model evaluation per new shape bucket (cached).
    """
    if isinstance(x_shape, str):
        return plan_network(x_shape, w, *more, optimize=optimize)
    if hasattr(x_shape, "shape"):  # an input array itself: its shape is what the plan depends on
        x_shape = x_shape.shape
    cores = getattr(w, "cores", w)
    if hasattr(w, "cores"):
        device = getattr(w, "device", "cpu")
        return plan_linear(tuple(x_shape), cores, dtype=w.dtype, device=device, backend=w.backend)
    return plan_linear(tuple(x_shape), [tuple(s) for s in cores])
