"""The ``torch.autograd.Function`` behind :func:`tensornet.linear` on torch tensors (imports torch).

Loaded lazily by ``tensornet.linear`` only when ``x`` is a torch tensor, so ``import tensornet`` stays
free of torch. The Function saves only ``x`` and the cores for backward (no intermediates: activation
memory is that of a dense layer's input plus the parameters) and recomputes what the backward plan
needs from them, with the kernels of :mod:`tensornet._linear` (the same ones
:func:`tensornet.adjoint.linear` uses). The one exception is opt-in: with ``save_weight`` a forward that
rebuilt W keeps W and the halves of its product, and the backward uses them instead of rebuilding.

* Autocast: forward and backward run under the autocast state of the forward
  (``torch.amp.custom_fwd`` / ``custom_bwd`` for the tensor's device type); the matrix products inside
  are autocast ops, so they run in bf16/fp16. Gradients are returned in the dtypes of the inputs.
* ``torch.compile``: the plan is passed to the Function as constants (strings). While tracing, the
  plans of all token buckets for the cores are made once (``_plan_table``, marked constant for dynamo)
  and the graph only compares the token count (possibly symbolic) with their bounds; the kernels are
  reshapes, permutes and matmuls (``_TorchOps``, not the array-API namespace). ``fullgraph=True``
  works (tested with ``aot_eager``). torch 2.13's dynamo itself emits a DeprecationWarning
  ("autograd.function.Function should not be instantiated") when tracing any custom Function. Compiled
  with gradients on, the Function runs inside a checkpointed region: AOT autograd would otherwise merge
  the backward's rebuild of W with the forward's and save W; so the compiled graph saves at most x and
  the cores too. Where ``save_weight=True`` keeps W in eager there is no region and the compiler may keep
  W (what else it keeps is its choice). Not under ``torch.export``.
* Double backward (gradient penalties, Hessian-vector products) is exact: when the backward itself is
  differentiated (``create_graph=True``) it rebuilds W with plain differentiable torch ops and lets
  autograd form the gradients and their graph, so second derivatives are those of ``x @ W.T + b``
  (the memory rule does not apply to that pass: it keeps what autograd keeps for the dense product).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.utils.checkpoint

from . import _linear
from . import contract as _contract

__all__ = ["linear", "linear_function"]

_FUNCTIONS: dict[str, type] = {}


class _TorchOps:
    """The few array operations the kernels use, as torch calls (traceable by dynamo, unlike the
    array-API namespace lookup)."""

    reshape = staticmethod(torch.reshape)
    permute_dims = staticmethod(torch.permute)
    recipe = staticmethod(_linear._memo_recipe)

    @staticmethod
    def run_path(equation: str, path: Any, *operands: Any) -> Any:
        return _contract.run_path(equation, path, operands, torch.einsum)


class _TracedOps(_TorchOps):
    """As :class:`_TorchOps` under torch.compile: shape recipes recomputed (dynamo folds them to
    constants) rather than read from the eager memo dict."""

    recipe = staticmethod(_linear._rebuild_recipe)


def _ops() -> type:
    return _TracedOps if torch.compiler.is_compiling() else _TorchOps


_MAX_BUCKET_EXPONENT = 24


def _assume_constant_result(fn: Any) -> Any:
    # What torch.compiler.assume_constant_result does (dynamo calls fn at trace time and bakes in the
    # result), without importing torch._dynamo (~3 s) when this module is imported.
    fn._dynamo_marked_constant = True
    return fn


@_assume_constant_result
def _plan_table(core_shapes: str, dtype: str, device: str) -> tuple[tuple[int, str, Any, str, Any], ...]:
    """Under torch.compile: the plans of every token bucket up to 2^24 for these cores, merged into
    ranges ``(max_tokens, forward, path, backward)``. Made once at trace time and baked in as
    constants, so the compiled graph only compares the (possibly symbolic) token count with a few
    bounds instead of calling the planner. ``core_shapes`` is a string (dynamo wants constants)."""
    shapes = [tuple(int(s) for s in part.split("x")) for part in core_shapes.split(",")]
    table: list[tuple[int, str, Any, str, Any]] = []
    for exponent in range(_MAX_BUCKET_EXPONENT + 1):
        plan = _contract.plan_linear((1 << exponent, 1), shapes, dtype=dtype, device=device, backend="torch")
        entry = (
            1 << exponent,
            plan.forward.strategy,
            plan.forward.path,
            plan.backward.strategy,
            plan.backward.path,
        )
        if table and table[-1][1:] == entry[1:]:
            table[-1] = entry
        else:
            table.append(entry)
    last = table[-1]
    table[-1] = (2**62, *last[1:])
    return tuple(table)


def _compiled_plan(tokens: Any, cores: Sequence[Any], dtype: str, device: str) -> tuple[str, Any, str, Any]:
    key = ",".join("x".join(str(int(s)) for s in c.shape) for c in cores)
    for bound, forward, path, backward, backward_path in _plan_table(key, dtype, device):
        if tokens <= bound:
            return forward, path, backward, backward_path
    raise AssertionError("unreachable: the last range is unbounded")


def _make_function(device_type: str) -> type:
    class TTMLinearFunction(torch.autograd.Function):
        """``y = x2d @ W.T (+ bias)`` for ``x2d`` (B, N) and TTM cores; saves x2d and the cores only
        (with ``save_weight``: also the rebuilt W and/or its halves, as far as backward reads them)."""

        @staticmethod
        @torch.amp.custom_fwd(device_type=device_type)
        def forward(
            ctx: Any,
            forward: str,
            path: Any,
            backward: str,
            backward_path: Any,
            keep: bool,
            x2d: Any,
            bias: Any,
            *cores: Any,
        ) -> Any:
            ctx.backward_strategy = backward
            ctx.backward_path = backward_path
            ctx.has_bias = bias is not None
            ctx.n_cores = len(cores)
            ctx.kept = None
            if forward == "rebuild":
                weight, parts = _linear.rebuild(cores, xp=_ops(), halves=True)
                if keep and parts is not None:
                    # save_weight: what the rebuild made is kept so that backward does not rebuild, and
                    # only what backward reads: W for grad x, the halves for the core gradients
                    keep_w = ctx.needs_input_grad[5]
                    keep_halves = any(ctx.needs_input_grad[7:])
                    kept = ([weight] if keep_w else []) + (list(parts[:2]) if keep_halves else [])
                    ctx.kept = (keep_w, keep_halves, parts[2])
                    ctx.save_for_backward(x2d, *kept, *cores)
                else:
                    ctx.save_for_backward(x2d, *cores)
                if bias is not None:
                    # bias fused into the GEMM as nn.Linear does (a separate add re-reads all of y: ~2.5%
                    # of a 2,048-token 768->3072 fwd+bwd on CPU); addmm is an autocast op, so bias follows
                    return torch.addmm(bias, x2d, weight.T)
                return x2d @ weight.T
            ctx.save_for_backward(x2d, *cores)
            y = _linear.linear_forward(x2d, cores, forward, path, xp=_ops())
            # under autocast y is in the autocast dtype; keep it there (as nn.Linear does)
            return y if bias is None else y + bias.to(y.dtype)

        @staticmethod
        @torch.amp.custom_bwd(device_type=device_type)
        def backward(ctx: Any, grad_y: Any) -> Any:  # type: ignore[override]
            if torch.is_grad_enabled():  # create_graph=True: the gradients will be differentiated
                return _differentiable_backward(ctx, grad_y)
            rebuilt = None
            x2d, *cores = ctx.saved_tensors
            if ctx.kept is not None:
                keep_w, keep_halves, split = ctx.kept
                weight = cores.pop(0) if keep_w else None
                parts = (cores.pop(0), cores.pop(0), split) if keep_halves else None
                rebuilt = (weight, parts)
            need_x = ctx.needs_input_grad[5]
            need_bias = ctx.has_bias and ctx.needs_input_grad[6]
            need_cores = any(ctx.needs_input_grad[7:])
            grad_x, grad_cores = _linear.linear_backward(
                x2d,
                cores,
                grad_y,
                ctx.backward_strategy,
                need_x=need_x,
                need_cores=need_cores,
                xp=_ops(),
                path=ctx.backward_path,
                rebuilt=rebuilt,
            )
            if grad_x is not None and grad_x.dtype != x2d.dtype:
                grad_x = grad_x.to(x2d.dtype)
            grad_bias = grad_y.sum(0) if need_bias else None
            if grad_cores is None:
                grad_cores = [None] * len(cores)
            else:
                grad_cores = [g if g.dtype == c.dtype else g.to(c.dtype) for g, c in zip(grad_cores, cores)]
            return (None, None, None, None, None, grad_x, grad_bias, *grad_cores)

    def _differentiable_backward(ctx: Any, grad_y: Any) -> Any:
        """The backward as a graph of plain torch ops (for double backward): autograd differentiates
        ``x2d @ W.T`` with W rebuilt from the cores, recording how the gradients depend on grad_y, x2d
        and the cores."""
        saved = ctx.saved_tensors
        x2d, cores = saved[0], list(saved[len(saved) - ctx.n_cores :])
        wanted = [x2d] if ctx.needs_input_grad[5] else []
        wanted += [c for c, need in zip(cores, ctx.needs_input_grad[7:]) if need]
        grads: list[Any] = []
        if wanted:
            with torch.enable_grad():
                y = x2d @ _linear.rebuild(cores, xp=_ops()).T
                grads = list(torch.autograd.grad(y, wanted, grad_y, create_graph=True, allow_unused=True))
        grad_x = grads.pop(0) if ctx.needs_input_grad[5] else None
        if grad_x is not None and grad_x.dtype != x2d.dtype:
            grad_x = grad_x.to(x2d.dtype)
        grad_cores = [grads.pop(0) if need else None for need in ctx.needs_input_grad[7:]]
        grad_cores = [
            g if g is None or g.dtype == c.dtype else g.to(c.dtype) for g, c in zip(grad_cores, cores)
        ]
        grad_bias = grad_y.sum(0) if ctx.has_bias and ctx.needs_input_grad[6] else None
        return (None, None, None, None, None, grad_x, grad_bias, *grad_cores)

    TTMLinearFunction.__qualname__ = f"TTMLinearFunction[{device_type}]"
    return TTMLinearFunction


# made at import: dynamo cannot trace a class definition, so a miss inside a compiled region would break
_FUNCTIONS.update({device_type: _make_function(device_type) for device_type in ("cpu", "cuda")})


def linear_function(device_type: str) -> Any:
    """The autograd Function class for tensors on ``device_type`` ('cpu', 'cuda', ...)."""
    function = _FUNCTIONS.get(device_type)
    if function is None:
        function = _FUNCTIONS[device_type] = _make_function(device_type)
    return function


# The hot path's memo of the planner cache: (bucket, compute dtype, device, core shapes...) ->
# (generation, autotuned, forward, path, backward, backward_path). Valid while the planner cache's
# generation is unchanged (it changes when a plan is added, autotuned or the cache is cleared), so a hit
# costs one dict lookup instead of rebuilding the planner's key from strings (~30 us per call).
_MEMO: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_GENERATION = _contract._generation
_SETTINGS = _contract._settings


def _plan(x2d: Any, cores: Sequence[Any], compute: Any) -> tuple[Any, ...]:
    tokens = x2d.shape[0]
    key = (1 << (tokens - 1).bit_length(), compute, x2d.device, *[c.shape for c in cores])
    entry = _MEMO.get(key)
    if entry is not None and entry[0] == _GENERATION[0] and (entry[1] or not _SETTINGS["autotune"]):
        _contract.count_hit()
        return entry
    plan = _linear.planned(x2d, cores, dtype=compute)
    if len(_MEMO) >= 1024:
        _MEMO.clear()
    entry = (
        _GENERATION[0],
        plan.autotuned,
        plan.forward.strategy,
        plan.forward.path,
        plan.backward.strategy,
        plan.backward.path,
    )
    _MEMO[key] = entry
    return entry


def linear(x: Any, cores: Sequence[Any], bias: Any = None, save_weight: bool = False) -> Any:
    """``x @ W.T + bias`` for torch ``x`` of shape ``(..., N)`` (validated by ``tensornet.linear``)."""
    device_type = x.device.type
    autocast = torch.is_autocast_enabled(device_type)
    compute = torch.get_autocast_dtype(device_type) if autocast else x.dtype
    if not autocast and (x.dtype != cores[0].dtype or (bias is not None and bias.dtype != x.dtype)):
        raise TypeError(
            f"linear: x is {x.dtype} but W is {cores[0].dtype}"
            + (f" and bias {bias.dtype}" if bias is not None else "")
            + "; use one dtype (or run under torch.autocast)"
        )
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    rows = 1
    for c in cores:
        rows *= c.shape[1]
    if x2d.shape[0] == 0:
        out = x2d.new_zeros((0, rows))
        return out.reshape(*lead, rows)
    if torch.compiler.is_compiling():
        forward, path, backward, backward_path = _compiled_plan(
            x2d.shape[0], cores, str(compute), str(x.device)
        )
    else:
        _, _, forward, path, backward, backward_path = _plan(x2d, cores, compute)
    function = linear_function(device_type)
    # save_weight applies where the forward rebuilds W for a backward that works from the dense W
    keep = save_weight and forward == "rebuild" and backward == "dense"
    if (
        torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
        and not keep
        and torch.is_grad_enabled()
    ):
        # Compiled, AOT autograd would merge the backward's rebuild of W with the forward's (or keep a
        # sweep's intermediates) and save them; in a checkpointed region its partitioner recomputes
        # instead, so the compiled graph saves at most x and the cores, as the eager Function does (the
        # big GEMM is not needed by backward, so it is not recomputed). Where save_weight keeps W in
        # eager, the compiler is left free to keep it. Not under torch.export (strict export refuses
        # the region with gradients on).
        def run(x2d: Any, bias: Any, *cores: Any) -> Any:
            return function.apply(forward, path, backward, backward_path, False, x2d, bias, *cores)

        y = torch.utils.checkpoint.checkpoint(run, x2d, bias, *cores, use_reentrant=False)
    else:
        y = function.apply(forward, path, backward, backward_path, keep, x2d, bias, *cores)
    return y.reshape(*lead, rows)
