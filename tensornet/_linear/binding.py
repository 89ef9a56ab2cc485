"""The torch binding of ``linear``: the one interface the layers of :mod:`tensornet.nn` use (imports torch).

:func:`linear_torch` is the one place that reads autocast, casts, plans and calls the autograd Function
(:mod:`.autograd`). Where no gradient is wanted (``torch.no_grad``, inference mode, nothing requiring one)
it runs the planned kernels directly: the Function's ``apply`` would be host time with nothing to record.

What :mod:`tensornet.nn` needs below the public ``tensornet.linear`` is here and nowhere else, so the kernels,
the plan cache and the Function can change behind it:

* :func:`layer_product` -- a TT layer's ``x @ W.T + bias`` from its one packed parameter;
* :func:`autocast_dtype`, :func:`compute_dtype` -- the dtype a product runs in under autocast;
* :func:`operand_mismatch` -- the message naming the operand whose dtype or device differs;
* :func:`rebuilds_in_group`, :func:`rebuild_stacked`, :func:`rebuild_stacked_grads` -- the batched rebuild
  of the dense weights of layers with equal core shapes (:func:`tensornet.nn.materialize`);
* :func:`layer_halves`, :func:`add_rebuilt`, :func:`rebuild_layer_grads` -- one layer's W from its packed
  cores added to another weight, and the VJP back to the cores (the TT adapter's folded product,
  :class:`tensornet.nn.TTAdapter`).

``torch.compile``: the routes of all token buckets for the cores are made once while tracing
(:func:`_route_table`, a constant for dynamo), so the graph only compares the (possibly symbolic) token count
with a few bounds. Compiled with gradients on, the Function runs inside a checkpointed region: AOT autograd
would otherwise merge the backward's rebuild of W with the forward's and save W, so the compiled graph saves
at most x and the cores too. Not under ``torch.export``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint

from . import kernels as K
from . import plan as P
from .api import operand_mismatch
from .autograd import Route, autocast_dtype, compute_dtype, first_output, function_for, route_product

__all__ = [
    "LINEAR_NAMES",
    "CoreShapes",
    "add_rebuilt",
    "autocast_dtype",
    "compute_dtype",
    "layer_halves",
    "layer_product",
    "linear_torch",
    "operand_mismatch",
    "rebuild_layer_grads",
    "rebuild_stacked",
    "rebuild_stacked_grads",
    "rebuilds_in_group",
]

CoreShapes = K.CoreShapes  # the shapes ``(r_{k-1}, rows_k, cols_k, r_k)`` of a layer's cores

# the names a message gives the function and its operands (x, W, bias): tensornet.linear's, or a layer's
LINEAR_NAMES = ("linear", "x", "W", "bias")
_MAX_BUCKET_EXPONENT = 24


def _assume_constant_result(fn: Any) -> Any:
    # What torch.compiler.assume_constant_result does (dynamo calls fn at trace time and bakes in the
    # result), without importing torch._dynamo (~3 s) when this module is imported.
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _route_table(shapes: str, dtype: str, device: str) -> tuple[tuple[Any, ...], ...]:
    """Under torch.compile: the routes of every token bucket up to 2^24 for these cores.

    They are merged into ranges ``(max_tokens, route)``, baked into the graph as constants (``shapes`` is a
    string: dynamo wants constants).
    """
    core_shapes = tuple(tuple(int(s) for s in part.split("x")) for part in shapes.split(","))
    table: list[tuple[Any, ...]] = []
    for exponent in range(_MAX_BUCKET_EXPONENT + 1):
        route = P.lookup(core_shapes, 1 << exponent, dtype, device, "torch").route  # type: ignore[arg-type]
        if table and table[-1][1] == route:
            table[-1] = (1 << exponent, route)
        else:
            table.append((1 << exponent, route))
    table[-1] = (2**62, table[-1][1])
    return tuple(table)


def _compiled_route(tokens: Any, shapes: K.CoreShapes, dtype: Any, device: Any) -> tuple[Any, ...]:
    key = ",".join("x".join(str(s) for s in shape) for shape in shapes)
    for bound, route in _route_table(key, str(dtype), str(device)):
        if tokens <= bound:
            return route
    raise AssertionError("unreachable: the last range is unbounded")


def _cast(
    x: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    bias: torch.Tensor | None,
    names: tuple[str, str, str, str] = LINEAR_NAMES,
) -> tuple[torch.Tensor, Sequence[torch.Tensor], torch.Tensor | None]:
    """``x``, the cores and the bias in the dtype the product runs in.

    Cast once, as autocast casts ``nn.Linear``'s input and weight; ``TypeError`` naming the operand that
    differs when they still disagree.
    """
    device_type = x.device.type
    if autocast_dtype(device_type) is not None:
        x = x.to(compute_dtype(x.dtype, device_type))
        tensors = [t.to(compute_dtype(t.dtype, device_type)) for t in tensors]
        if bias is not None:
            bias = bias.to(compute_dtype(bias.dtype, device_type))
    if x.dtype != tensors[0].dtype or (bias is not None and bias.dtype != tensors[0].dtype):
        fn, x_name, w_name, bias_name = names
        dtypes = {x_name: x.dtype, w_name: tensors[0].dtype} | (
            {} if bias is None else {bias_name: bias.dtype}
        )
        raise TypeError(
            f"{fn}: {operand_mismatch(dtypes, w_name)}; use one dtype (.to(dtype) converts a tensor or a layer), "
            "or run under torch.autocast"
        )
    return x, tensors, bias


def _planned_route(
    x2d: torch.Tensor, tensors: Sequence[torch.Tensor], packed: K.CoreShapes | None, save_weight: bool
) -> Route:
    """The route for these rows: from the compiled route table or the plan cache (autotuned if asked)."""
    shapes = packed if packed is not None else K.core_shapes(tensors)
    tokens = x2d.shape[0]
    if torch.compiler.is_compiling():
        forward, path, backward, backward_path = _compiled_route(tokens, shapes, x2d.dtype, x2d.device)
    else:
        plan = P.lookup(shapes, tokens, x2d.dtype, x2d.device, "torch")
        if P.autotune() and not plan.autotuned:
            cores = list(tensors) if packed is None else K.unpack(tensors[0], packed)
            plan = P.tune(plan, x2d, cores, "torch")
        forward, path, backward, backward_path = plan.route
    # save_weight applies where the forward rebuilds W for a backward that works from the dense W
    keep = save_weight and forward == "rebuild" and backward == "dense"
    return Route(forward, path, backward, backward_path, keep, packed)


def _wants_grad(x2d: torch.Tensor, bias: torch.Tensor | None, tensors: Sequence[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and (
        x2d.requires_grad
        or (bias is not None and bias.requires_grad)
        or any(t.requires_grad for t in tensors)
    )


def _apply(route: Route, x2d: torch.Tensor, bias: torch.Tensor | None, tensors: Sequence[Any]) -> Any:
    """``y`` by the autograd Function (inside a checkpointed region where compiled with gradients on)."""
    function = function_for(x2d.device.type, torch.compiler.is_compiling())
    if (
        torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not route.keep
        and torch.is_grad_enabled()
    ):
        # compiled, AOT autograd would merge the backward's rebuild of W with the forward's and save it; in
        # a checkpointed region its partitioner recomputes instead (the big GEMM is not needed by backward,
        # so it is not recomputed). Where save_weight keeps W, the compiler may keep it.
        def run(x2d: torch.Tensor, bias: torch.Tensor | None, *tensors: Any) -> Any:
            return first_output(function.apply(route, x2d, bias, *tensors))

        return torch.utils.checkpoint.checkpoint(run, x2d, bias, *tensors, use_reentrant=False)
    return first_output(function.apply(route, x2d, bias, *tensors))


def linear_torch(
    x: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    bias: torch.Tensor | None = None,
    *,
    save_weight: bool = False,
    packed: K.CoreShapes | None = None,
    names: tuple[str, str, str, str] = LINEAR_NAMES,
) -> Any:
    """``x @ W.T + bias`` for torch ``x`` of shape ``(..., N)`` and TTM cores ``tensors``.

    ``tensors`` may be one packed vector with ``packed`` = the core shapes. Validated by the caller but
    for dtypes (they may differ under autocast): a mismatch is named with ``names`` (the function, x, W,
    bias).
    """
    x, tensors, bias = _cast(x, tensors, bias, names)
    shapes = packed if packed is not None else K.core_shapes(tensors)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    rows = 1
    for shape in shapes:  # a loop, not math.prod of a generator: dynamo traces it
        rows *= shape[1]
    wants_grad = _wants_grad(x2d, bias, tensors)
    if x2d.shape[0] == 0:
        if not wants_grad:
            return x2d.new_zeros((0, rows)).reshape(*lead, rows)
        # zero rows with gradients on: a graph as nn.Linear's (zero gradients), by the one route whose kernels
        # do not depend on the rows (W rebuilt, then GEMMs with an empty dimension)
        route = Route("rebuild", None, "dense", None, False, packed)
    else:
        route = _planned_route(x2d, tensors, packed, save_weight)
        if not wants_grad:
            # no gradient wanted (decoding, evaluation): the kernels alone, no autograd Function around them
            return route_product(route, x2d, bias, tensors)[0].reshape(*lead, rows)
    return _apply(route, x2d, bias, tensors).reshape(*lead, rows)


def layer_product(
    x: torch.Tensor,
    packed: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    shapes: K.CoreShapes,
    save_weight: bool,
    names: tuple[str, str, str, str],
) -> Any:
    """``x @ W.T + bias`` for a TT layer whose cores of ``shapes`` are packed in the one vector ``packed``.

    The caller has checked the shapes and devices; dtypes are checked here (they may differ under autocast)
    and a mismatch is named with ``names`` (the layer, its input, weight and bias). ``save_weight``: keep
    the rebuilt W for backward where the plan rebuilds it. One gradient for ``packed``.
    """
    return linear_torch(x, (packed,), bias, save_weight=save_weight, packed=shapes, names=names)


def rebuilds_in_group(shapes: K.CoreShapes, tokens: int, dtype: Any, device: Any, count: int) -> bool:
    """Whether ``count`` layers of cores ``shapes`` should rebuild their W together at ``tokens`` rows.

    The plan's verdict (:meth:`tensornet._linear.plan.LinearPlan.rebuilds_in_group`) for the bucket of
    ``tokens`` in ``dtype`` on ``device``.
    """
    return P.lookup(shapes, tokens, dtype, device, "torch").rebuilds_in_group(count)


def rebuild_stacked(stacked: torch.Tensor, shapes: K.CoreShapes, *, parts: bool = False) -> Any:
    """The dense W ``(G, M, N)`` of ``G`` layers from their packed cores stacked as ``(G, P)``.

    By batched GEMMs. With ``parts``: ``(W, halves)``, the halves of the product that
    :func:`rebuild_stacked_grads` reuses.
    """
    recipe = K.rebuild_recipe(shapes, (int(stacked.shape[0]),))
    return K.rebuild(K.unpack(stacked, shapes), recipe, K.torch_ops(), parts=parts)


def rebuild_stacked_grads(
    stacked: torch.Tensor, shapes: K.CoreShapes, grad_w: torch.Tensor, halves: Any = None
) -> torch.Tensor:
    """The gradients ``(G, P)`` of the stacked packed cores for the cotangent ``grad_w`` ``(G, M, N)`` of W.

    ``halves``: those :func:`rebuild_stacked` gave with ``parts=True`` (recomputed when None).
    """
    count = int(stacked.shape[0])
    recipe = K.rebuild_recipe(shapes, (count,))
    core_grads = K.rebuild_grads(K.unpack(stacked, shapes), grad_w, recipe, K.torch_ops(), halves or None)
    return torch.cat([g.reshape(count, -1) for g in core_grads], dim=1)


def layer_halves(packed: torch.Tensor, shapes: K.CoreShapes) -> Any:
    """The halves ``(L, R)`` of one layer's rebuild from its packed cores ``(P,)``; None for one core.

    Small (``O(sqrt(M N) r)`` for balanced shapes): what :func:`add_rebuilt` and
    :func:`rebuild_layer_grads` need of the cores. Plain torch operations.
    """
    if len(shapes) == 1:
        return None
    return K.halves(K.unpack(packed, shapes), K.rebuild_recipe(shapes), K.torch_ops())


def add_rebuilt(
    weight: torch.Tensor,
    packed: torch.Tensor,
    halves: Any,
    shapes: K.CoreShapes,
    scaling: float,
    *,
    transposed: bool = False,
) -> torch.Tensor:
    """``weight + scaling * W`` (``W.T`` when ``transposed``), a new tensor in ``weight``'s layout and dtype.

    ``W`` is the layer's ``(M, N)`` matrix from its packed cores, through their ``halves``
    (:func:`layer_halves`), ``L`` over modes ``(M_<s, N_<s)`` and ``R`` over ``(M_>=s, N_>=s)``: row
    ``(i_<, i_>)`` of ``W`` is the ``(N_<s, N_>=s)`` block ``L[i_<] @ R[:, i_>]``, so one batched GEMM
    with ``weight`` as its addend writes the sum in ``weight``'s layout (``W`` is never formed, and there
    is no permuting copy of it). ``transposed``: row ``(j_<, j_>)`` of ``W.T`` is ``L[:, j_<] @ R[..., j_>]``.
    Plain torch operations (differentiable). Cost: ``2 M N r_s``, one pass over ``weight``.
    """
    if halves is None:  # one core: W is the core itself
        dense = packed.view(shapes[0][1], shapes[0][2]).to(weight.dtype)
        return torch.add(weight, dense.mT if transposed else dense, alpha=scaling)
    m_left, n_left, m_right, n_right = K.rebuild_recipe(shapes).blocks
    left, right = halves
    bond = int(left.shape[-1])
    left = left.to(weight.dtype).view(m_left, n_left, bond)
    right = right.to(weight.dtype).view(bond, m_right, n_right)
    if transposed:  # batch (j_<, j_>): (M_<s, r) @ (r, M_>=s)
        rows = left.permute(1, 0, 2).unsqueeze(1).expand(n_left, n_right, m_left, bond)
        cols = right.permute(2, 0, 1).unsqueeze(0).expand(n_left, n_right, bond, m_right)
        blocks = (n_left * n_right, m_left, m_right)
    else:  # batch (i_<, i_>): (N_<s, r) @ (r, N_>=s)
        rows = left.unsqueeze(1).expand(m_left, m_right, n_left, bond)
        cols = right.permute(1, 0, 2).unsqueeze(0).expand(m_left, m_right, bond, n_right)
        blocks = (m_left * m_right, n_left, n_right)
    batch = blocks[0]
    total = torch.baddbmm(
        weight.reshape(blocks),
        rows.reshape(batch, blocks[1], bond),
        cols.reshape(batch, bond, blocks[2]),
        alpha=scaling,
    )
    return total.view(weight.shape)


def rebuild_layer_grads(
    packed: torch.Tensor, shapes: K.CoreShapes, grad_w: torch.Tensor, halves: Any = None
) -> torch.Tensor:
    """The gradient ``(P,)`` of one layer's packed cores for the cotangent ``grad_w`` ``(M, N)`` of its W.

    ``halves``: those of :func:`layer_halves` (recomputed when None). Plain torch
    operations, so under ``create_graph`` autograd records them. Cost: ``4 M N r_s`` plus the halves.
    """
    recipe = K.rebuild_recipe(shapes)
    grads = K.rebuild_grads(K.unpack(packed, shapes), grad_w, recipe, K.torch_ops(), halves or None)
    return torch.cat([g.reshape(-1) for g in grads])
