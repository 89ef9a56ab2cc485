"""The one home of the TTM layer product ``y = x @ W.T``.

``tensornet.linear``, ``TTMLinear``, the tied TT head and ``tensornet.adjoint.linear`` all call into it.

Read it top down:

* :mod:`.api` -- ``linear(x, W, bias)``: validates once and dispatches (numpy: plan and run; torch:
  :mod:`.binding`);
* :mod:`.binding` -- the torch binding: the one place that reads autocast, casts and plans; and the one
  interface :mod:`tensornet.nn` uses (a layer's product, the compute dtype, the batched rebuild);
* :mod:`.autograd` -- the autograd Function (saves only ``x`` and the cores);
* :mod:`.plan` -- the one plan cache: per (core shapes, dtype, backend, device, token bucket) the cheapest
  forward and backward strategy, from the cost model or measured (autotune);
* :mod:`.strategies` -- rebuild / sweep / einsum, each one object with its cost model next to its
  kernels, both from the same recipe;
* :mod:`.kernels` -- the array kernels (reshapes, permutes, matrix products) and their shape recipes;
* :mod:`.sweep_kernels` -- the factorised sweep (core by core, never forming W) and its reverse;
* :mod:`.cost` -- the roofline model the strategies price their steps with.
"""

from __future__ import annotations

from .api import check_operands, linear, linear_backward, linear_forward, operand_mismatch
from .kernels import (
    ArrayOps,
    array_ops,
    dense_to_interleaved,
    rebuild,
    rebuild_grads,
    rebuild_recipe,
    split_point,
    tt_grads_from_dense,
)
from .plan import planned

__all__ = [
    "ArrayOps",
    "array_ops",
    "check_operands",
    "dense_to_interleaved",
    "linear",
    "linear_backward",
    "linear_forward",
    "operand_mismatch",
    "planned",
    "rebuild",
    "rebuild_grads",
    "rebuild_recipe",
    "split_point",
    "tt_grads_from_dense",
]
