"""The autograd Function of the torch ``linear`` (imports torch; loaded for torch inputs).

:func:`tensornet._linear.binding.linear_torch` reads autocast, casts, plans and calls the Function with a
:class:`Route` (or, where no gradient is wanted, :func:`route_product` alone).

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
* ``torch.compile``: the binding bakes the routes into the graph; see :mod:`tensornet._linear.binding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from . import kernels as K
from .strategies import BACKWARD, FORWARD

__all__ = ["Route", "autocast_dtype", "compute_dtype", "first_output", "function_for", "route_product"]

# positions of Function.apply's arguments
_ROUTE, _X, _BIAS, _CORES = 0, 1, 2, 3


class Route(NamedTuple):
    """How one call of the Function runs: its first argument (a tuple, so dynamo takes it as a constant)."""

    forward: str  # the forward strategy ('rebuild', 'sweep', 'einsum')
    forward_path: Any  # its contraction path (einsum), else None
    backward: str  # the backward strategy
    backward_path: Any
    keep: bool  # save_weight: the forward keeps W and its halves for a 'dense' backward
    packed: K.CoreShapes | None  # the core shapes when the cores come as one packed vector, else None


def _unpack(tensors: Sequence[torch.Tensor], packed: K.CoreShapes | None) -> list[torch.Tensor]:
    """The cores: ``tensors``, or views of the packed vector ``tensors[0]`` (``packed``: their shapes)."""
    return list(tensors) if packed is None else K.unpack(tensors[0], packed)


def _pack(grads: Sequence[torch.Tensor]) -> Any:
    return torch.cat([g.reshape(-1) for g in grads])


def _forward(route: Route, x2d: torch.Tensor, bias: torch.Tensor | None, tensors: Sequence[Any]) -> Any:
    """The product: ``y``, or with ``keep`` ``(y, W, *halves)`` for :func:`_setup_context` to save."""
    y, weight, parts = route_product(route, x2d, bias, tensors)
    if route.keep and parts is not None:
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


def route_product(
    route: Route, x2d: torch.Tensor, bias: torch.Tensor | None, tensors: Sequence[Any]
) -> tuple[Any, Any, Any]:
    """``(y, W, (L, R))`` by the route's forward; W and its halves are None unless it rebuilds W.

    The Function's forward, and the whole product where no gradient is wanted (no Function then).
    """
    cores = _unpack(tensors, route.packed)
    if route.forward != "rebuild":
        y = FORWARD[route.forward].forward(x2d, cores, K.torch_ops(), route.forward_path)
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
    route: Route = ctx.route
    packed = route.packed
    x2d, tensors, kept = _saved(ctx)
    need_x = ctx.needs_input_grad[_X]
    need_cores = any(ctx.needs_input_grad[_CORES:])
    cores = _unpack(tensors, packed)
    grad_x, grads = BACKWARD[route.backward].backward(
        x2d,
        cores,
        grad_y,
        K.torch_ops(),
        route.backward_path,
        need_x=need_x,
        need_cores=need_cores,
        kept=kept,
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
    packed = ctx.route.packed
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
    packed = ctx.route.packed
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


def _backward_entry(device_type: str) -> Any:
    """The Functions' ``backward`` for ``device_type``: under the forward's autocast state, or differentiable."""

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

    return backward_fn


def _jvp_entry(ctx: Any, _: Any, x_t: Any, bias_t: Any, *tensor_ts: Any) -> Any:
    """The Functions' ``jvp``: the tangent of ``y`` (and None for the kept W and halves, not differentiable)."""
    y_t = _jvp(ctx, x_t, bias_t, tensor_ts)
    return (y_t, *(None for _ in ctx.kept_outputs)) if ctx.kept_outputs else y_t


def _make_function(device_type: str) -> tuple[type, type, type]:
    """The autograd Functions for tensors on ``device_type`` (the backward restores that device's autocast).

    ``(compiled, eager, functorch)``:

    * compiled: forward and backward (dynamo traces no custom ``jvp``);
    * eager: also forward-mode AD (``jvp``, e.g. ``torch.autograd.forward_ad``);
    * functorch, for ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``): the same in the form they need
      (a ctx-free forward and ``setup_context``), which ``Function.apply`` pays for with a signature binding
      on every call (~40 us), hence not the default.
    """
    backward_fn = _backward_entry(device_type)

    class TTMLinearCompiledFunction(torch.autograd.Function):
        """``y = x2d @ W.T (+ bias)`` for ``x2d`` (B, N) and TTM cores; saves x2d and the cores only.

        With ``route.keep`` also the rebuilt W and/or its halves, as far as backward reads them.
        """

        @staticmethod
        def forward(
            ctx: Any, route: Route, x2d: torch.Tensor, bias: torch.Tensor | None, *tensors: Any
        ) -> Any:
            output = _forward(route, x2d, bias, tensors)
            _setup_context(ctx, device_type, (route, x2d, bias, *tensors), output, returned=False)
            return first_output(output)

        backward = staticmethod(backward_fn)  # type: ignore[assignment]

    class TTMLinearFunction(TTMLinearCompiledFunction):
        """The eager Function: its parent with forward-mode AD (``jvp``)."""

        @staticmethod
        def forward(
            ctx: Any, route: Route, x2d: torch.Tensor, bias: torch.Tensor | None, *tensors: Any
        ) -> Any:
            ctx.save_for_forward(x2d, *tensors)  # for jvp (references)
            return TTMLinearCompiledFunction.forward(ctx, route, x2d, bias, *tensors)

        jvp = staticmethod(_jvp_entry)

    class TTMLinearFuncFunction(torch.autograd.Function):
        """The Function in the form ``torch.func`` transforms need (and a vmap rule generated from it)."""

        generate_vmap_rule = True

        @staticmethod
        def forward(route: Route, x2d: torch.Tensor, bias: torch.Tensor | None, *tensors: Any) -> Any:
            return _forward(route, x2d, bias, tensors)

        @staticmethod
        def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
            _setup_context(ctx, device_type, inputs, output, returned=True)
            ctx.save_for_forward(inputs[1], *inputs[3:])

        backward = staticmethod(backward_fn)  # type: ignore[assignment]
        jvp = staticmethod(_jvp_entry)

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


def first_output(output: Any) -> Any:
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
