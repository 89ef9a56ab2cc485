"""The torch binding of ``linear`` and its autograd Function (imports torch; loaded for torch inputs).

:func:`linear_torch` is the one place that reads autocast, casts, plans and calls the Function. Where no
gradient is wanted (``torch.no_grad``, inference mode, nothing requiring one) it runs the planned kernels
directly: the Function's ``apply`` would be host time with nothing to record.

The Function saves only ``x`` and the cores for backward (no intermediates: the activation memory of a
dense layer's input plus the parameters) and recomputes what the backward strategy needs from them with
the same kernels :func:`tensornet.adjoint.linear` uses. The cores may be given as one packed vector (a TT
layer's single parameter) with their shapes: the Function then takes views of it and returns one
gradient for it.

* Autocast: :func:`linear_torch` casts ``x``, the cores and the bias to the autocast dtype once, so the
  kernels run in bf16/fp16 and the backward runs under the forward's autocast state; gradients come back
  in the inputs' dtypes.
* ``save_weight``: a forward that rebuilds W for a ``dense`` backward keeps W (if x needs a gradient) and
  the halves of its product (if the cores do) instead of rebuilding them in backward.
* Double backward (``create_graph=True``: gradient penalties, Hessian-vector products) is exact: the
  backward then rebuilds W with plain differentiable ops and lets autograd form the gradients and their
  graph (the memory rule does not apply to that pass).
* ``torch.func`` (``grad``, ``vmap``, ``jvp``, per-sample gradients) and forward-mode AD are supported:
  :func:`function_for` picks the Function form each needs (see :func:`_make_function`).
* ``torch.compile``: the routes of all token buckets for the cores are made once while tracing
  (:func:`_route_table`, a constant for dynamo), so the graph only compares the (possibly symbolic) token
  count with a few bounds. Compiled with gradients on, the Function runs inside a checkpointed region: AOT
  autograd would otherwise merge the backward's rebuild of W with the forward's and save W, so the compiled
  graph saves at most x and the cores too. Not under ``torch.export``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint

from . import kernels as K
from . import plan as P
from .api import operand_mismatch
from .strategies import BACKWARD, FORWARD

__all__ = ["LINEAR_NAMES", "function_for", "linear_torch"]

# positions of Function.apply's arguments
_ROUTE, _X, _BIAS, _CORES = 0, 1, 2, 3
_MAX_BUCKET_EXPONENT = 24


def _unpack(tensors: Sequence[torch.Tensor], packed: K.CoreShapes | None) -> list[torch.Tensor]:
    """The cores: ``tensors``, or views of the packed vector ``tensors[0]`` (``packed``: their shapes)."""
    return list(tensors) if packed is None else K.unpack(tensors[0], packed)


def _pack(grads: Sequence[torch.Tensor]) -> Any:
    return torch.cat([g.reshape(-1) for g in grads])


def _forward(
    route: tuple[Any, ...], x2d: torch.Tensor, bias: torch.Tensor | None, tensors: Sequence[Any]
) -> Any:
    """The product: ``y``, or with ``keep`` ``(y, W, *halves)`` for :func:`_setup_context` to save."""
    y, weight, parts = _product(route, x2d, bias, tensors)
    if route[4] and parts is not None:
        return (y, weight, *parts)
    return y


def _setup_context(ctx: Any, device_type: str, inputs: tuple[Any, ...], output: Any, returned: bool) -> None:
    """Saves ``x2d`` and the cores, and with ``keep`` what the backward reads of W and the halves.

    ``returned``: W and the halves are outputs of the Function (marked not differentiable), as a
    ``torch.func`` Function's forward must return what ``setup_context`` saves.
    """
    route, x2d, bias, *tensors = inputs
    ctx.route, ctx.has_bias, ctx.count = route, bias is not None, len(tensors)
    ctx.autocast = autocast_dtype(device_type)
    ctx.kept, ctx.kept_outputs = None, ()
    if isinstance(output, tuple):
        extras = output[1:]
        if returned:
            ctx.kept_outputs = extras
            ctx.mark_non_differentiable(*extras)
        # save_weight: keep only what backward reads (W for grad x, the halves for the cores)
        keep_w = ctx.needs_input_grad[_X]
        keep_halves = any(ctx.needs_input_grad[_CORES:])
        kept = ([extras[0]] if keep_w else []) + (list(extras[1:]) if keep_halves else [])
        ctx.kept = (keep_w, keep_halves)
        ctx.save_for_backward(x2d, *kept, *tensors)
    else:
        ctx.save_for_backward(x2d, *tensors)


def _product(
    route: tuple[Any, ...], x2d: torch.Tensor, bias: torch.Tensor | None, tensors: Sequence[Any]
) -> tuple[Any, Any, Any]:
    """``(y, W, (L, R))`` by the route's forward; W and its halves are None unless it rebuilds W.

    The Function's forward, and the whole product where no gradient is wanted (no Function then).
    """
    forward, path, packed = route[0], route[1], route[5]
    cores = _unpack(tensors, packed)
    if forward != "rebuild":
        y = FORWARD[forward].forward(x2d, cores, K.torch_ops(), path)
        # under autocast y is in the autocast dtype; keep it there (as nn.Linear does)
        return (y if bias is None else y + bias.to(y.dtype)), None, None
    recipe = K.rebuild_recipe(tuple(tuple(c.shape) for c in cores))
    weight, parts = K.rebuild(cores, recipe, K.torch_ops(), parts=True)
    if bias is not None:
        # bias fused into the GEMM as nn.Linear does (a separate add re-reads all of y)
        return torch.addmm(bias, x2d, weight.mT), weight, parts
    return x2d @ weight.mT, weight, parts


def _saved(ctx: Any) -> tuple[Any, tuple[Any, ...], Any]:
    """``(x2d, the saved core tensors, (W or None, halves or None) or None)`` from the Function's ctx."""
    saved = ctx.saved_tensors
    x2d, tensors = saved[0], saved[len(saved) - ctx.count :]
    if ctx.kept is None:
        return x2d, tensors, None
    keep_w, keep_halves = ctx.kept
    extra = list(saved[1 : len(saved) - ctx.count])
    weight = extra.pop(0) if keep_w else None
    return x2d, tensors, (weight, tuple(extra) if keep_halves else None)


def _backward(ctx: Any, grad_y: torch.Tensor) -> tuple[Any, ...]:
    """The Function's backward by the planned strategy, from what the forward saved."""
    _, _, backward, path, _, packed = ctx.route
    x2d, tensors, kept = _saved(ctx)
    need_x = ctx.needs_input_grad[_X]
    need_cores = any(ctx.needs_input_grad[_CORES:])
    cores = _unpack(tensors, packed)
    grad_x, grads = BACKWARD[backward].backward(
        x2d, cores, grad_y, K.torch_ops(), path, need_x=need_x, need_cores=need_cores, kept=kept
    )
    if grads is None:
        tensor_grads: list[Any] = [None] * len(tensors)
    else:
        tensor_grads = [_pack(grads)] if packed is not None else list(grads)
    return _finish(ctx, grad_y, x2d, tensors, grad_x, tensor_grads)


def _jvp(ctx: Any, x_t: Any, bias_t: Any, tensor_ts: Sequence[Any]) -> Any:
    """Forward-mode AD: the tangent of ``y`` for tangents of ``x2d``, the bias and the cores (None: zero).

    ``W`` is multilinear in the cores, so its tangent is the sum over cores of W rebuilt with that core
    replaced by its tangent; ``y_t = x_t W^T + x W_t^T + bias_t``.
    """
    packed = ctx.route[5]
    x2d, *tensors = ctx.saved_tensors  # what the forward gave save_for_forward
    cores = _unpack(tensors, packed)
    ops = K.torch_ops()
    recipe = K.rebuild_recipe(tuple(tuple(c.shape) for c in cores))
    y_t = None if bias_t is None else bias_t.expand(x2d.shape[0], -1)
    if x_t is not None:
        term = x_t @ K.rebuild(cores, recipe, ops).mT
        y_t = term if y_t is None else y_t + term
    if any(t is not None for t in tensor_ts):
        core_ts = _unpack(tensor_ts, packed) if packed is not None else list(tensor_ts)
        for k, t in enumerate(core_ts):
            if t is not None:
                term = x2d @ K.rebuild([*cores[:k], t, *cores[k + 1 :]], recipe, ops).mT
                y_t = term if y_t is None else y_t + term
    if y_t is None:
        y_t = x2d.new_zeros((x2d.shape[0], recipe.size[-2]))
    return y_t


def _differentiable_backward(ctx: Any, grad_y: torch.Tensor) -> tuple[Any, ...]:
    """The backward as a graph of plain torch ops (``create_graph=True``).

    Autograd differentiates ``x2d @ W.T`` with W rebuilt from the cores, recording how the gradients
    depend on grad_y, x2d and the cores.
    """
    packed = ctx.route[-1]
    saved = ctx.saved_tensors
    x2d, tensors = saved[0], list(saved[len(saved) - ctx.count :])
    wanted = [x2d] if ctx.needs_input_grad[_X] else []
    wanted += [t for t, need in zip(tensors, ctx.needs_input_grad[_CORES:]) if need]
    grads: list[Any] = []
    if wanted:
        with torch.enable_grad():
            cores = _unpack(tensors, packed)
            recipe = K.rebuild_recipe(tuple(tuple(c.shape) for c in cores))
            y = x2d @ K.rebuild(cores, recipe, K.torch_ops()).mT
            grads = list(torch.autograd.grad(y, wanted, grad_y, create_graph=True, allow_unused=True))
    grad_x = grads.pop(0) if ctx.needs_input_grad[_X] else None
    core_grads = [grads.pop(0) if need else None for need in ctx.needs_input_grad[_CORES:]]
    return _finish(ctx, grad_y, x2d, tensors, grad_x, core_grads)


def _finish(
    ctx: Any,
    grad_y: torch.Tensor,
    x2d: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    grad_x: Any,
    tensor_grads: list[Any],
) -> tuple[Any, ...]:
    """The Function's gradients in the inputs' dtypes: ``(None, grad_x, grad_bias, *grads of tensors)``."""
    if grad_x is not None and grad_x.dtype != x2d.dtype:
        grad_x = grad_x.to(x2d.dtype)
    grad_bias = grad_y.sum(0) if ctx.has_bias and ctx.needs_input_grad[_BIAS] else None
    tensor_grads = [
        g if g is None or g.dtype == t.dtype else g.to(t.dtype) for g, t in zip(tensor_grads, tensors)
    ]
    return (None, grad_x, grad_bias, *tensor_grads)


def _make_function(device_type: str) -> tuple[type, type, type]:
    """The autograd Functions for tensors on ``device_type`` (the backward restores that device's autocast).

    ``(compiled, eager, functorch)``:

    * compiled: forward and backward (dynamo traces no custom ``jvp``);
    * eager: also forward-mode AD (``jvp``, e.g. ``torch.autograd.forward_ad``);
    * functorch, for ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``): the same in the form they need
      (a ctx-free forward and ``setup_context``), which ``Function.apply`` pays for with a signature binding
      on every call (~40 us), hence not the default.
    """

    def backward_fn(ctx: Any, grad_y: torch.Tensor, *_: Any) -> Any:
        if torch.is_grad_enabled():  # create_graph=True: the gradients will be differentiated
            return _differentiable_backward(ctx, grad_y)
        if ctx.autocast is not None:
            with torch.autocast(device_type, dtype=ctx.autocast):
                return _backward(ctx, grad_y)
        if autocast_dtype(device_type) is not None:  # the forward ran without autocast
            with torch.autocast(device_type, enabled=False):
                return _backward(ctx, grad_y)
        return _backward(ctx, grad_y)

    def jvp_fn(ctx: Any, _: Any, x_t: Any, bias_t: Any, *tensor_ts: Any) -> Any:
        y_t = _jvp(ctx, x_t, bias_t, tensor_ts)
        return (y_t, *(None for _ in ctx.kept_outputs)) if ctx.kept_outputs else y_t

    class TTMLinearCompiledFunction(torch.autograd.Function):
        """``y = x2d @ W.T (+ bias)`` for ``x2d`` (B, N) and TTM cores; saves x2d and the cores only.

        With ``keep`` also the rebuilt W and/or its halves, as far as backward reads them.
        ``route = (forward, forward path, backward, backward path, keep, packed core shapes or None)``.
        """

        @staticmethod
        def forward(
            ctx: Any, route: tuple[Any, ...], x2d: torch.Tensor, bias: torch.Tensor | None, *tensors: Any
        ) -> Any:
            output = _forward(route, x2d, bias, tensors)
            _setup_context(ctx, device_type, (route, x2d, bias, *tensors), output, returned=False)
            return _first(output)

        backward = staticmethod(backward_fn)  # type: ignore[assignment]

    class TTMLinearFunction(TTMLinearCompiledFunction):
        """The eager Function: its parent with forward-mode AD (``jvp``)."""

        @staticmethod
        def forward(
            ctx: Any, route: tuple[Any, ...], x2d: torch.Tensor, bias: torch.Tensor | None, *tensors: Any
        ) -> Any:
            ctx.save_for_forward(x2d, *tensors)  # for jvp (references)
            return TTMLinearCompiledFunction.forward(ctx, route, x2d, bias, *tensors)

        jvp = staticmethod(jvp_fn)

    class TTMLinearFuncFunction(torch.autograd.Function):
        """The Function in the form ``torch.func`` transforms need (and a vmap rule generated from it)."""

        generate_vmap_rule = True

        @staticmethod
        def forward(
            route: tuple[Any, ...], x2d: torch.Tensor, bias: torch.Tensor | None, *tensors: Any
        ) -> Any:
            return _forward(route, x2d, bias, tensors)

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
            _setup_context(ctx, device_type, inputs, output, returned=True)
            ctx.save_for_forward(inputs[1], *inputs[3:])

        backward = staticmethod(backward_fn)  # type: ignore[assignment]
        jvp = staticmethod(jvp_fn)

    for cls in (TTMLinearCompiledFunction, TTMLinearFunction, TTMLinearFuncFunction):
        cls.__qualname__ = f"{cls.__name__}[{device_type}]"
    return TTMLinearCompiledFunction, TTMLinearFunction, TTMLinearFuncFunction


# made at import: dynamo cannot trace a class definition, so a miss inside a compiled region would break
_FUNCTIONS: dict[str, tuple[type, type, type]] = {
    device: _make_function(device) for device in ("cpu", "cuda")
}


def function_for(device_type: str, compiled: bool = False) -> Any:
    """The autograd Function class for tensors on ``device_type`` ('cpu', 'cuda', ...).

    ``compiled``: the one dynamo traces; under a ``torch.func`` transform the one those need; else the eager one.
    """
    functions = _FUNCTIONS.get(device_type)
    if functions is None:
        functions = _FUNCTIONS[device_type] = _make_function(device_type)
    if compiled:
        return functions[0]
    return functions[2] if torch._C._are_functorch_transforms_active() else functions[1]


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


def _first(output: Any) -> Any:
    """``y`` of the Function's output (``(y, W, *halves)`` where ``save_weight`` keeps them)."""
    return output[0] if isinstance(output, tuple) else output


def autocast_dtype(device_type: str) -> Any:
    """The autocast dtype when autocast is on for ``device_type``, else None.

    The one place tensornet reads autocast; devices without autocast, such as ``meta``, have none.
    """
    if device_type in ("cpu", "cuda", "xpu", "mps", "hpu", "xla") and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def compute_dtype(dtype: Any, device_type: str) -> Any:
    """The dtype a product of inputs of ``dtype`` runs in.

    It is the autocast dtype for the floating dtypes autocast casts (not float64, as torch's autocast), else
    ``dtype`` itself.
    """
    cast = autocast_dtype(device_type)
    if cast is None or dtype == torch.float64 or not dtype.is_floating_point:
        return dtype
    return cast


# the names a message gives the function and its operands (x, W, bias): tensornet.linear's, or a layer's
LINEAR_NAMES = ("linear", "x", "W", "bias")


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


def _route(
    x2d: torch.Tensor, tensors: Sequence[torch.Tensor], packed: K.CoreShapes | None, shapes: K.CoreShapes
) -> tuple[Any, Any, Any, Any]:
    """``(forward, path, backward, path)`` for these rows: from the compiled route table or the plan cache."""
    tokens = x2d.shape[0]
    if torch.compiler.is_compiling():
        return _compiled_route(tokens, shapes, x2d.dtype, x2d.device)
    plan = P.lookup(shapes, tokens, x2d.dtype, x2d.device, "torch")
    if P.autotune() and not plan.autotuned:
        plan = P.tune(plan, x2d, _unpack(tensors, packed), "torch")
    return plan.route


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
    wants_grad = torch.is_grad_enabled() and (
        x2d.requires_grad
        or (bias is not None and bias.requires_grad)
        or any(t.requires_grad for t in tensors)
    )
    if x2d.shape[0] == 0:
        if not wants_grad:
            return x2d.new_zeros((0, rows)).reshape(*lead, rows)
        # zero rows with gradients on: a graph as nn.Linear's (zero gradients), by the one route whose kernels
        # do not depend on the rows (W rebuilt, then GEMMs with an empty dimension)
        route: tuple[Any, ...] = ("rebuild", None, "dense", None, False, packed)
    else:
        forward, path, backward, backward_path = _route(x2d, tensors, packed, shapes)
        # save_weight applies where the forward rebuilds W for a backward that works from the dense W
        keep = save_weight and forward == "rebuild" and backward == "dense"
        route = (forward, path, backward, backward_path, keep, packed)
        if not wants_grad:
            # no gradient wanted (decoding, evaluation): the kernels alone, no autograd Function around them
            return _product(route, x2d, bias, tensors)[0].reshape(*lead, rows)
    keep = route[4]
    function = function_for(x.device.type, torch.compiler.is_compiling())
    if (
        torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not keep
        and torch.is_grad_enabled()
    ):
        # compiled, AOT autograd would merge the backward's rebuild of W with the forward's and save it; in
        # a checkpointed region its partitioner recomputes instead (the big GEMM is not needed by backward,
        # so it is not recomputed). Where save_weight keeps W, the compiler may keep it.
        def run(x2d: torch.Tensor, bias: torch.Tensor | None, *tensors: Any) -> Any:
            return _first(function.apply(route, x2d, bias, *tensors))

        y = torch.utils.checkpoint.checkpoint(run, x2d, bias, *tensors, use_reentrant=False)
    else:
        y = _first(function.apply(route, x2d, bias, *tensors))
    return y.reshape(*lead, rows)
