"""``linear(x, W)``: the dense-input TTM layer product and its kernels (forward and backward).

The kernels are written with the array-API namespace of their arguments only (numpy, torch, ...), as
plain reshapes, 2-D transposes and matrix products, so every step is one GEMM (or one copy) and the
same code backs numpy, the torch autograd Function and ``torch.compile``. Which kernel runs is decided
by :mod:`tensornet.contract` (``plan_linear``); this module only executes plans.

Layouts: ``x`` is flattened to ``(B, N)``; TTM core k is ``(r_{k-1}, m_k, n_k, r_k)``; ``y = x @ W.T`` is
``(B, M)``. "Interleaved" means the modes ordered ``(m_1, n_1, m_2, n_2, ...)`` (a TT over merged modes
``p_k = m_k n_k``); the matrix layout is ``(m_1..m_d, n_1..n_d)``.
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import array_api_compat

from . import _backend as B
from . import contract as _contract
from . import tt as _tt

__all__ = [
    "core_grads_from_dense",
    "linear",
    "linear_backward",
    "linear_forward",
    "planned",
    "rebuild",
    "right_environments",
]


# --- dense <-> TT kernels (interleaved modes) -------------------------------------------------------
def _namespace(xp: Any, *arrays: Any) -> Any:
    return xp if xp is not None else array_api_compat.array_namespace(*arrays)


def right_environments(flat_cores: Sequence[Any], *, xp: Any = None) -> list[Any]:
    """``R[k]`` for ``k >= 1``: cores ``k..d-1`` contracted, as a ``(r_{k-1}, p_k ... p_d)`` matrix. One
    GEMM per core, no transposes. ``R[0]`` (the dense train itself, the most expensive one) is not
    formed: no core gradient needs it, so it is ``None`` (for ``d = 1`` the list holds the core).
    Cost: ``O(r^2 prod(p_{>=2}))``."""
    xp = _namespace(xp, *flat_cores)
    d = len(flat_cores)
    last = flat_cores[-1]
    current = xp.reshape(last, (int(last.shape[0]), -1))
    envs: list[Any] = [None] * d
    envs[d - 1] = current
    for k in range(d - 2, 0, -1):
        core = flat_cores[k]
        left, size, right = (int(s) for s in core.shape)
        current = xp.reshape(xp.reshape(core, (left * size, right)) @ current, (left, -1))
        envs[k] = current
    return envs


def core_grads_from_dense(
    flat_cores: Sequence[Any], grad: Any, envs: Sequence[Any] | None = None, *, xp: Any = None
) -> list[Any]:
    """VJP of the dense train (interleaved modes) w.r.t. each core, for the cotangent ``grad``.

    A left-to-right sweep keeps ``P_k`` = ``grad`` contracted with cores ``< k`` (shape
    ``(r_{k-1}, p_k ... p_d)``); core k's gradient is ``P_k`` against the right environment
    ``R[k+1]``. Every step is one GEMM; intermediates are shared by all core gradients.
    Cost: ``O(r prod(p))`` for the first core, geometrically less for the others.
    """
    xp = _namespace(xp, *flat_cores)
    if envs is None:
        envs = right_environments(flat_cores, xp=xp)
    d = len(flat_cores)
    partial = xp.reshape(grad, (1, -1))
    grads = []
    for k, core in enumerate(flat_cores):
        left, size, right = (int(s) for s in core.shape)
        partial = xp.reshape(partial, (left * size, -1))
        if k == d - 1:
            grads.append(xp.reshape(partial, (left, size, right)))
            break
        grads.append(xp.reshape(partial @ envs[k + 1].T, (left, size, right)))
        partial = xp.reshape(core, (left * size, right)).T @ partial
    return grads


def _flat(cores: Sequence[Any], xp: Any) -> list[Any]:
    return [
        xp.reshape(c, (int(c.shape[0]), int(c.shape[1]) * int(c.shape[2]), int(c.shape[3]))) for c in cores
    ]


def _to_matrix_axes(d: int) -> tuple[int, ...]:
    return tuple(range(0, 2 * d, 2)) + tuple(range(1, 2 * d, 2))


def _to_interleaved_axes(d: int) -> tuple[int, ...]:
    return tuple(a for k in range(d) for a in (k, d + k))


def split_point(shapes: Sequence[tuple[int, ...]]) -> int:
    """Where the dense train is formed as one product ``L @ R`` of its left (cores ``< s``) and right
    halves: the ``s`` minimising the two halves' sizes ``(P_{<s} + P_{>=s}) r_s`` (the final GEMM costs
    ``2 P r_s`` whatever ``s``). Shapes are TT ``(r, p, r')`` or TTM ``(r, m, n, r')``."""
    sizes = [math.prod([int(v) for v in shape[1:-1]]) for shape in shapes]  # lists: dynamo traces them
    best, best_cost = 1, math.inf
    for split in range(1, len(shapes)):
        cost = (math.prod(sizes[:split]) + math.prod(sizes[split:])) * int(shapes[split][0])
        if cost < best_cost:
            best, best_cost = split, cost
    return best


def _to_interleaved(matrix: Any, cores: Sequence[Any], axis: int, xp: Any) -> Any:
    """Reorder one axis of ``matrix`` (size ``prod m_k n_k`` over ``cores``) from blocked
    ``(m_1, m_2, ..., n_1, n_2, ...)`` to interleaved ``(m_1, n_1, m_2, n_2, ...)`` order (a small copy;
    :func:`rebuild`'s recipe does the opposite direction)."""
    d = len(cores)
    if d == 1:  # (m, n) is both orders: nothing to move
        return matrix
    inner = [int(c.shape[1]) for c in cores] + [int(c.shape[2]) for c in cores]
    order = _to_interleaved_axes(d)
    other = int(matrix.shape[1 - axis])
    shape = (*inner, other) if axis == 0 else (other, *inner)
    axes = (*order, d * 2) if axis == 0 else (0, *(a + 1 for a in order))
    return xp.reshape(xp.permute_dims(xp.reshape(matrix, shape), axes), tuple(int(v) for v in matrix.shape))


def _rebuild_recipe(shapes: tuple[tuple[int, ...], ...]) -> tuple[Any, ...]:
    """Every shape and axis order :func:`rebuild` needs for TTM cores of ``shapes`` (pure: computed once
    per shape on the eager hot path, where it is memoised, and traced as constants by dynamo)."""
    d = len(shapes)
    rows = [s[1] for s in shapes]
    cols = [s[2] for s in shapes]
    split = split_point(shapes)
    r0, m0, n0, r1 = shapes[0]
    left_first = (r0 * m0 * n0, r1)
    left_steps = tuple(((s[0], s[1] * s[2] * s[3]), (-1, s[3])) for s in shapes[1:split])
    last = shapes[-1]
    right_first = (last[0], last[1] * last[2] * last[3])
    right_steps = tuple(((s[0] * s[1] * s[2], s[3]), (s[0], -1)) for s in reversed(shapes[split : d - 1]))

    def regroup(part: Sequence[tuple[int, ...]], axis: int, other: int) -> Any:
        k = len(part)
        if k == 1:  # (m, n) is already blocked: the copy would be the identity
            return None
        inner = [v for s in part for v in (s[1], s[2])]
        order = list(_to_matrix_axes(k))
        shape = (*inner, other) if axis == 0 else (other, *inner)
        axes = (*order, k * 2) if axis == 0 else (0, *(a + 1 for a in order))
        size = math.prod(inner)
        return shape, axes, ((size, other) if axis == 0 else (other, size))

    bond = shapes[split][0]
    blocks = (
        math.prod(rows[:split]),
        math.prod(cols[:split]),
        math.prod(rows[split:]),
        math.prod(cols[split:]),
    )
    return (
        split,
        left_first,
        left_steps,
        right_first,
        right_steps,
        regroup(shapes[:split], 0, bond),
        regroup(shapes[split:], 1, bond),
        blocks,
        (math.prod(rows), math.prod(cols)),
    )


_RECIPES: dict[tuple[tuple[int, ...], ...], tuple[Any, ...]] = {}


def _memo_recipe(shapes: tuple[tuple[int, ...], ...]) -> tuple[Any, ...]:
    recipe = _RECIPES.get(shapes)
    if recipe is None:
        if len(_RECIPES) >= 1024:
            _RECIPES.clear()
        recipe = _RECIPES[shapes] = _rebuild_recipe(shapes)
    return recipe


def _halves(cores: Sequence[Any], xp: Any) -> tuple[Any, Any, Any]:
    """``(L, R, recipe)``: the two halves of :func:`rebuild`'s product, reordered to blocked modes."""
    # xp.recipe: the memoised lookup for eager torch; dynamo traces the pure function instead
    shapes = tuple(tuple(int(v) for v in c.shape) for c in cores)
    recipe = getattr(xp, "recipe", _memo_recipe)(shapes)
    split, left_first, left_steps, right_first, right_steps, regroup_l, regroup_r = recipe[:7]
    reshape = xp.reshape
    left = reshape(cores[0], left_first)
    for core, (core_shape, out_shape) in zip(cores[1:split], left_steps):
        left = reshape(left @ reshape(core, core_shape), out_shape)
    right = reshape(cores[-1], right_first)
    for core, (core_shape, out_shape) in zip(reversed(cores[split:-1]), right_steps):
        right = reshape(reshape(core, core_shape) @ right, out_shape)
    if regroup_l is not None:
        shape, axes, final = regroup_l
        left = reshape(xp.permute_dims(reshape(left, shape), axes), final)
    if regroup_r is not None:
        shape, axes, final = regroup_r
        right = reshape(xp.permute_dims(reshape(right, shape), axes), final)
    return left, right, recipe


def rebuild(cores: Sequence[Any], *, xp: Any = None, halves: bool = False) -> Any:
    """The dense ``(M, N)`` matrix of TTM cores.

    The left and right halves' products ``L`` (``P_{<s} x r_s``) and ``R`` (``r_s x P_{>=s}``) are
    reordered to blocked modes (small copies), so the one big GEMM ``L @ R`` yields
    ``(M_{<s}, N_{<s}, M_{>=s}, N_{>=s})`` and a block transpose with contiguous runs of ``N_{>=s}``
    gives ``(M, N)``. With ``halves`` returns ``(W, (L, R, s))`` (blocked) for the backward.
    Cost: ``2 M N r_s`` plus the halves (``O(sqrt(M N) r^2)`` for balanced shapes).
    """
    xp = _namespace(xp, *cores)
    if len(cores) == 1:
        c = cores[0]
        dense = xp.reshape(c, (int(c.shape[1]), int(c.shape[2])))
        return (dense, None) if halves else dense
    left, right, recipe = _halves(cores, xp)
    split, blocks, size = recipe[0], recipe[7], recipe[8]
    product = xp.reshape(left @ right, blocks)
    dense = xp.reshape(xp.permute_dims(product, (0, 2, 1, 3)), size)
    return (dense, (left, right, split)) if halves else dense


def _core_grads_from_matrix(cores: Sequence[Any], grad_w: Any, parts: Any, xp: Any) -> list[Any]:
    """Core gradients for the cotangent ``grad_w`` (M, N) of the rebuilt matrix, ``parts`` from
    :func:`rebuild`: a block transpose of ``grad_w``, two GEMMs ``dL = G R^T``, ``dR = L^T G``
    (``2 M N r_s`` each), then the small halves' own core gradients (their open bond folded into the
    end core's mode)."""
    if parts is None:
        return [xp.reshape(grad_w, tuple(int(v) for v in cores[0].shape))]
    left, right, split = parts
    rows = [int(c.shape[1]) for c in cores]
    cols = [int(c.shape[2]) for c in cores]
    m_left, m_right = math.prod(rows[:split]), math.prod(rows[split:])
    n_left, n_right = math.prod(cols[:split]), math.prod(cols[split:])
    blocked = xp.permute_dims(xp.reshape(grad_w, (m_left, m_right, n_left, n_right)), (0, 2, 1, 3))
    blocked = xp.reshape(blocked, (m_left * n_left, m_right * n_right))
    grad_left = _to_interleaved(blocked @ right.T, cores[:split], 0, xp)
    grad_right = _to_interleaved(left.T @ blocked, cores[split:], 1, xp)
    flat = _flat(cores, xp)
    lefts = list(flat[:split])
    end = lefts[-1]
    lefts[-1] = xp.reshape(end, (int(end.shape[0]), int(end.shape[1]) * int(end.shape[2]), 1))
    rights = list(flat[split:])
    start = rights[0]
    rights[0] = xp.reshape(start, (1, int(start.shape[0]) * int(start.shape[1]), int(start.shape[2])))
    grads = core_grads_from_dense(lefts, grad_left, xp=xp) + core_grads_from_dense(rights, grad_right, xp=xp)
    return [xp.reshape(g, tuple(int(v) for v in c.shape)) for g, c in zip(grads, cores)]


def _dense_to_interleaved(cores: Sequence[Any], dense: Any, xp: Any) -> Any:
    rows = tuple(int(c.shape[1]) for c in cores)
    cols = tuple(int(c.shape[2]) for c in cores)
    if len(cores) == 1:
        return xp.reshape(dense, (1, -1))
    return xp.permute_dims(xp.reshape(dense, rows + cols), _to_interleaved_axes(len(cores)))


# --- factorised sweep -----------------------------------------------------------------------------
# The state before core k is a matrix with layout (r_{k-1}, in_k, IN_{>k}, B, OUT_{<k}); one GEMM with
# core k's (out_k r_k, r_{k-1} in_k) matrix and one 2-D transpose (out_k moves to the back) give the next
# state. After the last core the state is (B, OUT). "in" is n and "out" is m for y = x @ W.T; the
# transposed sweep (dx = dy @ W) swaps them.
def _sweep_matrices(cores: Sequence[Any], transpose: bool, xp: Any) -> list[Any]:
    axes = (2, 3, 0, 1) if transpose else (1, 3, 0, 2)
    out = []
    for c in cores:
        left, m, n, right = (int(s) for s in c.shape)
        size_out, size_in = (n, m) if transpose else (m, n)
        out.append(xp.reshape(xp.permute_dims(c, axes), (size_out * right, left * size_in)))
    return out


def _sweep(x2d: Any, cores: Sequence[Any], xp: Any, *, transpose: bool = False, keep: bool = False) -> Any:
    """Contract ``x2d`` (B, IN) with the cores one at a time; returns ``(y2d, states, matrices)`` when
    ``keep`` (the states are what the reverse sweep needs), else ``y2d``."""
    batch = int(x2d.shape[0])
    mats = _sweep_matrices(cores, transpose, xp)
    size_in = [int(c.shape[1 if transpose else 2]) for c in cores]
    size_out = [int(c.shape[2 if transpose else 1]) for c in cores]
    state = xp.reshape(x2d.T, (size_in[0], -1))
    states = []
    for k, mat in enumerate(mats):
        if keep:
            states.append(state)
        out = mat @ state
        state = xp.reshape(out, (size_out[k], -1)).T
        if k + 1 < len(mats):
            state = xp.reshape(state, (int(mat.shape[0]) // size_out[k] * size_in[k + 1], -1))
    y2d = xp.reshape(state, (batch, -1))
    return (y2d, states, mats) if keep else y2d


def _sweep_backward(
    x2d: Any, cores: Sequence[Any], grad_y: Any, need_x: bool, xp: Any
) -> tuple[Any, list[Any]]:
    """Reverse mode through the sweep (its states recomputed from ``x2d``): dx and every core gradient
    in one right-to-left pass, two GEMMs per core."""
    _, states, mats = _sweep(x2d, cores, xp, keep=True)
    size_out = [int(c.shape[1]) for c in cores]
    d = len(cores)
    grad_out = xp.reshape(xp.reshape(grad_y, (-1, size_out[-1])).T, (int(mats[-1].shape[0]), -1))
    grads: list[Any] = [None] * d
    grad_x = None
    for k in range(d - 1, -1, -1):
        left, m, n, right = (int(s) for s in cores[k].shape)
        grad_mat = grad_out @ states[k].T
        grads[k] = xp.permute_dims(xp.reshape(grad_mat, (m, right, left, n)), (2, 0, 3, 1))
        if k == 0 and not need_x:
            break
        grad_state = mats[k].T @ grad_out
        if k > 0:
            grad_out = xp.reshape(
                xp.reshape(grad_state, (-1, size_out[k - 1])).T, (int(mats[k - 1].shape[0]), -1)
            )
        else:
            grad_x = xp.reshape(grad_state, (int(x2d.shape[1]), -1)).T
    return grad_x, grads


def _run_network(equation: str, path: Any, operands: Sequence[Any], xp: Any) -> Any:
    runner = getattr(xp, "run_path", None)
    if runner is not None:
        return runner(equation, path, *operands)
    shapes = [tuple(o.shape) for o in operands]
    return _contract.expression(equation, *shapes, optimize=list(path) if path else None)(*operands)


def _einsum_backward(
    x2d: Any, cores: Sequence[Any], grad_y: Any, paths: Any, need_x: bool, need_cores: bool, xp: Any
) -> tuple[Any, list[Any] | None]:
    """dx and every dG_k as separate FLOP-optimal networks (``paths`` from the plan, or found here)."""
    d = len(cores)
    equations = _contract.linear_grad_equations(d)
    batch = int(x2d.shape[0])
    xr = xp.reshape(x2d, (batch, *(int(c.shape[2]) for c in cores)))
    gyr = xp.reshape(grad_y, (batch, *(int(c.shape[1]) for c in cores)))
    if paths is None:
        paths = [None] * (d + 1)
    grad_x = None
    if need_x:
        grad_x = xp.reshape(_run_network(equations[0], paths[0], [gyr, *cores], xp), (batch, -1))
    if not need_cores:
        return grad_x, None
    grads = []
    for k in range(d):
        operands = [xr, gyr, *cores[:k], *cores[k + 1 :]]
        grad = _run_network(equations[k + 1], paths[k + 1], operands, xp)
        grads.append(xp.reshape(grad, tuple(int(v) for v in cores[k].shape)))
    return grad_x, grads


# --- plans, executed ------------------------------------------------------------------------------
def linear_forward(x2d: Any, cores: Sequence[Any], strategy: str, path: Any = None, *, xp: Any = None) -> Any:
    """``x2d @ W.T`` for a ``(B, N)`` array by ``strategy`` ('rebuild', 'sweep' or 'einsum' with ``path``).

    ``xp`` (default: the arrays' array-API namespace) needs ``reshape`` and ``permute_dims``, and for
    'einsum' optionally ``run_path(equation, path, *operands)``.
    """
    xp = _namespace(xp, x2d, *cores)
    if strategy == "rebuild":
        return x2d @ rebuild(cores, xp=xp).T
    if strategy == "sweep":
        return _sweep(x2d, cores, xp)
    if strategy == "einsum":
        equation = _contract.linear_equation(len(cores))
        xr = xp.reshape(x2d, (int(x2d.shape[0]), *(int(c.shape[2]) for c in cores)))
        runner = getattr(xp, "run_path", None)
        if runner is not None:
            y = runner(equation, path, xr, *cores)
        else:
            shapes = (tuple(xr.shape), *(tuple(c.shape) for c in cores))
            y = _contract.expression(equation, *shapes, optimize=list(path) if path else None)(xr, *cores)
        return xp.reshape(y, (int(x2d.shape[0]), -1))
    raise ValueError(f"linear: unknown forward strategy {strategy!r}; use 'rebuild', 'sweep' or 'einsum'")


def linear_backward(
    x2d: Any,
    cores: Sequence[Any],
    grad_y: Any,
    strategy: str,
    *,
    need_x: bool = True,
    need_cores: bool = True,
    xp: Any = None,
    path: Any = None,
    rebuilt: Any = None,
) -> tuple[Any, list[Any] | None]:
    """``(grad_x, grad_cores)`` of ``y = x2d @ W.T`` for the cotangent ``grad_y`` (B, M).

    'dense': ``dx = dy @ W`` and ``dW = dy.T @ x`` (two GEMMs with W rebuilt, or ``rebuilt``, what
    ``rebuild(cores, halves=True)`` returned, if the forward kept it), then the core gradients from
    ``dW`` with shared environments (``O(M N r)``). 'sweep': reverse mode through the factorised sweep
    (``O(B (M + N) r^2 ...)``, no M x N array). Unneeded gradients are returned as None.
    """
    xp = _namespace(xp, x2d, *cores)
    if strategy == "einsum":
        return _einsum_backward(x2d, cores, grad_y, path, need_x, need_cores, xp)
    if strategy == "sweep":
        if not need_cores:
            return (_sweep(grad_y, cores, xp, transpose=True) if need_x else None), None
        grad_x, grads = _sweep_backward(x2d, cores, grad_y, need_x, xp)
        return (grad_x if need_x else None), grads
    if strategy != "dense":
        raise ValueError(f"linear: unknown backward strategy {strategy!r}; use 'dense', 'sweep' or 'einsum'")
    weight, parts = rebuilt if rebuilt is not None else (None, None)
    if need_x and weight is None:
        weight, parts = rebuild(cores, xp=xp, halves=True)
    grad_x = grad_y @ weight if need_x else None
    if not need_cores:
        return grad_x, None
    del weight
    if parts is None and len(cores) > 1:  # grad x not needed: the halves without their product
        left, right, recipe = _halves(cores, xp)
        parts = (left, right, recipe[0])
    return grad_x, _core_grads_from_matrix(cores, grad_y.T @ x2d, parts, xp)


def planned(x2d: Any, cores: Sequence[Any], *, dtype: Any = None) -> Any:
    """The cached :class:`~tensornet.contract.LinearPlan` for ``x2d`` and ``cores``; with autotuning on
    (:func:`tensornet.contract.autotune`) a plan not yet tuned is timed on these arrays first."""
    backend = B.backend_name(x2d)
    device = str(B.device(x2d))
    plan = _contract.plan_linear(
        tuple(x2d.shape), cores, dtype=dtype or x2d.dtype, device=device, backend=backend
    )
    if _contract.autotune() and not plan.autotuned and int(x2d.shape[0]) > 0:
        plan = _tune(plan, x2d, cores, backend)
    return plan


def _timed(fn: Any, sync: Any, repeat: int = 3) -> float:
    fn()
    sync()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def _tune(plan: Any, x2d: Any, cores: Sequence[Any], backend: str) -> Any:
    sync = lambda: None  # noqa: E731
    if backend == "torch" and str(B.device(x2d)).startswith("cuda"):
        sync = importlib.import_module("torch").cuda.synchronize
    if backend == "torch":
        x2d, cores = x2d.detach(), [c.detach() for c in cores]
    grad_y = linear_forward(x2d, cores, "rebuild")
    forward = [
        _timed(lambda c=c: linear_forward(x2d, cores, c.strategy, c.path), sync)
        for c in plan.forward_candidates
    ]
    backward = [
        _timed(lambda c=c: linear_backward(x2d, cores, grad_y, c.strategy, path=c.path), sync)
        for c in plan.backward_candidates
    ]
    return _contract.store_tuned(plan, backend, forward, backward)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "requires_grad")


def _check_shapes(x: Any, w: Any, bias: Any, out_features: int, in_features: int) -> None:
    if x.ndim < 1 or int(x.shape[-1]) != in_features:
        raise ValueError(
            f"linear: x has shape {tuple(x.shape)} but W has shape (M, N) = {w.shape}; "
            f"the last dimension of x must be N = {in_features}"
        )
    if bias is not None and (bias.ndim != 1 or int(bias.shape[0]) != out_features):
        raise ValueError(f"linear: bias has shape {tuple(bias.shape)}, expected ({out_features},)")


# --- the public function --------------------------------------------------------------------------
def linear(x: Any, w: Any, bias: Any = None, *, save_weight: bool = False) -> Any:
    """``x @ W.full().T (+ bias)`` for dense ``x`` of shape ``(..., N)`` and a TTM ``W`` of shape (M, N).

    Any number of leading dimensions. The contraction is planned per shape bucket by
    :func:`tensornet.contract.plan_linear` (rebuild W then one GEMM, or a factorised core-by-core
    sweep; see :func:`tensornet.contract.explain`). With torch tensors the product is a
    ``torch.autograd.Function`` that saves only ``x`` and the cores (activation memory no more than a
    dense layer's) and whose backward uses :func:`tensornet.adjoint.linear`'s kernels; it works under
    autocast and ``torch.compile``; double backward (``create_graph=True``: gradient penalties,
    Hessian-vector products) is exact, through a differentiable rebuild of W in that pass. With
    ``save_weight=True`` (torch only; numpy has no backward) a forward that rebuilds W, with a backward
    planned from the dense W (both are the plans for many tokens), keeps W (if x needs a gradient) and
    the halves of its product (if the cores do) instead: one rebuild less per step for up to ``M N``
    more saved entries per call. Under ``torch.compile`` the default saves at most ``x`` and the cores
    too; with ``save_weight`` the compiler may keep W and chooses what else to keep.

    Cost: ``min(2 B M N + O(M N r), O(B (M + N) d r^2 max(m, n)))`` for B rows, as planned.

    Raises
    ------
    TypeError
        ``W`` not a TTM, ``x`` not an array, backend or dtype mismatch (dtypes may differ under torch
        autocast).
    ValueError
        ``x.shape[-1] != N``, a bias that is not ``(M,)``, devices that differ.
    """
    if not isinstance(w, _tt.TTM):
        raise TypeError(f"linear: W must be a tensornet TTM, got {type(w).__name__}")
    if not isinstance(save_weight, bool):
        raise TypeError(f"linear: save_weight must be True or False, got {save_weight!r}")
    out_features, in_features = w.shape
    if _is_torch(x):
        # checked without array_api_compat so that torch.compile traces this function cleanly
        if not _is_torch(w.cores[0]):
            raise TypeError("linear: x is a torch tensor but W has numpy cores; convert W with W.to('torch')")
        _check_shapes(x, w, bias, out_features, in_features)
        if bias is not None and not _is_torch(bias):
            raise TypeError(f"linear: bias must be a torch tensor like x, got {type(bias).__name__}")
        if x.device != w.cores[0].device:
            raise ValueError(
                f"linear: x is on {x.device} but W is on {w.cores[0].device}; move one with .to()"
            )
        # sys.modules first: torch.compile traces a dict lookup but not import_module
        binding = sys.modules.get("tensornet._torch_linear") or importlib.import_module(
            "tensornet._torch_linear"
        )
        return binding.linear(x, w.cores, bias, save_weight)
    if not B.is_array(x):
        raise TypeError(f"linear: x must be an array, got {type(x).__name__}")
    backend = B.backend_name(x)
    if backend != w.backend:
        raise TypeError(f"linear: x is a {backend} array but W has {w.backend} cores; use one backend")
    if bias is not None and (not B.is_array(bias) or B.backend_name(bias) != backend):
        raise TypeError(f"linear: bias must be a {backend} array like x, got {type(bias).__name__}")
    _check_shapes(x, w, bias, out_features, in_features)
    if x.dtype != w.dtype or (bias is not None and bias.dtype != w.dtype):
        raise TypeError(f"linear: x is {x.dtype} but W is {w.dtype}; use one dtype (bias too)")
    xp = B.namespace(x, *w.cores)
    lead = tuple(int(s) for s in x.shape[:-1])
    x2d = xp.reshape(x, (-1, in_features))
    if int(x2d.shape[0]) == 0:
        return xp.zeros((*lead, out_features), dtype=x.dtype) + (0 if bias is None else bias)
    plan = planned(x2d, w.cores)
    y = xp.reshape(
        linear_forward(x2d, w.cores, plan.forward.strategy, plan.forward.path), (*lead, out_features)
    )
    return y if bias is None else y + bias
