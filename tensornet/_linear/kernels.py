"""The array kernels of the TTM layer product ``y = x @ W.T``: plain reshapes, permutes and matrix products.

Every kernel takes its array operations as an explicit :class:`ArrayOps` argument (torch's own functions
on the hot path, the array-API namespace otherwise), so the same code runs on numpy, under the torch
autograd Function and under ``torch.compile``. All shapes a kernel needs are computed once per core shapes
into a recipe (a named tuple), so a call does no shape arithmetic.

Layouts: ``x`` is flattened to ``(B, N)``; TTM core k is ``(r_{k-1}, m_k, n_k, r_k)``; ``y`` is ``(B, M)``.
"Interleaved" modes are ordered ``(m_1, n_1, m_2, n_2, ...)`` (a TT over merged modes ``p_k = m_k n_k``);
the matrix layout is ``(m_1..m_d, n_1..n_d)``. :func:`rebuild` and :func:`rebuild_grads` also take a
stack of trains with leading dimensions ``lead`` (cores ``(*lead, r, m, n, r')``): that is how the weights
of many layers are rebuilt in one batched pass. The factorised sweep, which never forms W, is in
:mod:`.sweep_kernels`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import array_api_compat

from .._backend import Array
from .._layout import tt_core_shape

Shape = tuple[int, ...]
CoreShapes = tuple[tuple[int, int, int, int], ...]


@dataclass(frozen=True)
class ArrayOps:
    """The array operations the kernels use (arrays must also support ``@``)."""

    reshape: Callable[[Any, Shape], Any]
    permute: Callable[[Any, Shape], Any]
    mT: Callable[[Any], Any]  # the transpose of the last two axes
    contract: Callable[..., Any]  # contract(equation, *operands) for the einsum strategy's steps


def array_ops(*arrays: Any) -> ArrayOps:
    """The :class:`ArrayOps` of the arrays' library (torch's own functions for torch tensors)."""
    if array_api_compat.is_torch_array(arrays[0]):
        return torch_ops()
    xp = array_api_compat.array_namespace(*arrays)
    return ArrayOps(xp.reshape, xp.permute_dims, xp.matrix_transpose, None)  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def torch_ops() -> ArrayOps:
    import torch

    return ArrayOps(torch.reshape, torch.permute, lambda a: a.mT, torch.einsum)


def _axes(lead: int, axes: Sequence[int]) -> Shape:
    """``axes`` of the trailing dimensions, with ``lead`` leading dimensions kept in place."""
    return (*range(lead), *(a + lead for a in axes))


def split_point(shapes: Sequence[Sequence[int]]) -> int:
    """Where the dense train is formed as one product ``L @ R`` of its left and right halves.

    It is the ``s`` minimising the halves' sizes ``(P_{<s} + P_{>=s}) r_s`` (the final GEMM costs ``2 P r_s``
    whatever ``s``). Shapes are TT ``(r, p, r')`` or TTM ``(r, m, n, r')``.
    """
    sizes = [math.prod([int(v) for v in shape[1:-1]]) for shape in shapes]  # lists: dynamo traces them
    best, best_cost = 1, math.inf
    for split in range(1, len(shapes)):
        cost = (math.prod(sizes[:split]) + math.prod(sizes[split:])) * int(shapes[split][0])
        if cost < best_cost:
            best, best_cost = split, cost
    return best


# --- rebuilding W --------------------------------------------------------------------------------------
class Regroup(NamedTuple):
    """A reshape, permute and reshape that reorders one half's modes from interleaved to blocked."""

    shape: Shape
    axes: Shape
    final: Shape


class RebuildRecipe(NamedTuple):
    """Every shape :func:`rebuild` and :func:`rebuild_grads` use for cores of ``shapes`` under ``lead``."""

    lead: Shape
    shapes: CoreShapes
    split: int  # cores < split form the left half L, the others the right half R
    left_first: Shape  # core 0 as (*lead, m n, r_1) (r_0 = 1)
    left_steps: tuple[tuple[Shape, Shape], ...]  # per core of L after the first: its matrix, the product's
    right_first: Shape  # the last core as (*lead, r, m n)
    right_steps: tuple[tuple[Shape, Shape], ...]
    regroup_left: Regroup | None  # None: one core, already blocked
    regroup_right: Regroup | None
    interleave_left: Regroup | None  # the inverse reorders, for the halves' gradients
    interleave_right: Regroup | None
    blocks: Shape  # (*lead, M_<s, N_<s, M_>=s, N_>=s)
    block_axes: Shape  # (..., 0, 2, 1, 3): blocks to (M_<s, M_>=s, N_<s, N_>=s)
    size: Shape  # (*lead, M, N)
    grad_blocks: Shape  # (*lead, M_<s, M_>=s, N_<s, N_>=s): dW as blocks
    grad_blocked: Shape  # (*lead, M_<s N_<s, M_>=s N_>=s): dW in the layout of L @ R
    left_cores: CoreShapes  # the halves as TTM trains of their own (the open bond folded into a mode)
    right_cores: CoreShapes
    left_grads: TrainGradRecipe | None  # train_grads' shapes for each half
    right_grads: TrainGradRecipe | None


def _regroup(part: CoreShapes, axis: int, inverse: bool, lead: Shape, bond: int) -> Regroup | None:
    """Interleaved ``(m_1, n_1, m_2, ...)`` to blocked ``(m.., n..)`` modes of a half, or back (``inverse``).

    ``axis`` 0: the left half ``(modes..., bond)``; 1: the right half ``(bond, modes...)``. None for one
    core, whose ``(m, n)`` is already blocked.
    """
    k = len(part)
    if k == 1:
        return None
    interleaved = [v for s in part for v in (s[1], s[2])]
    to_blocked = (*range(0, 2 * k, 2), *range(1, 2 * k, 2))
    to_interleaved = tuple(a for j in range(k) for a in (j, k + j))
    inner = [interleaved[a] for a in to_blocked] if inverse else interleaved
    order = to_interleaved if inverse else to_blocked
    size = math.prod(inner)
    if axis == 0:
        return Regroup((*lead, *inner, bond), _axes(len(lead), (*order, 2 * k)), (*lead, size, bond))
    return Regroup((*lead, bond, *inner), _axes(len(lead), (0, *(a + 1 for a in order))), (*lead, bond, size))


def _half_trains(shapes: CoreShapes, split: int) -> tuple[CoreShapes, CoreShapes]:
    """The halves as TTM trains of their own, the open bond folded into the end core's mode."""
    left = [*shapes[:split]]
    end = left[-1]
    left[-1] = (end[0], end[1] * end[2], end[3], 1)  # the bond becomes a column mode of size r_s
    right = [*shapes[split:]]
    if right:
        start = right[0]
        right[0] = (1, start[0] * start[1], start[2], start[3])
    return tuple(left), tuple(right)


@lru_cache(maxsize=4096)
def rebuild_recipe(shapes: CoreShapes, lead: Shape = ()) -> RebuildRecipe:
    """The :class:`RebuildRecipe` for TTM cores of ``shapes`` (a pure function, memoised).

    Dynamo traces it to constants.
    """
    d = len(shapes)
    rows = [s[1] for s in shapes]
    cols = [s[2] for s in shapes]
    split = split_point(shapes)  # 1 for a single core: no right half
    bond = shapes[split][0] if split < d else 1
    _, m0, n0, r1 = shapes[0]
    last = shapes[-1]
    m_left, m_right = math.prod(rows[:split]), math.prod(rows[split:])
    n_left, n_right = math.prod(cols[:split]), math.prod(cols[split:])
    left_cores, right_cores = _half_trains(shapes, split)
    return RebuildRecipe(
        lead=lead,
        shapes=shapes,
        split=split,
        left_first=(*lead, m0 * n0, r1),
        left_steps=tuple(((*lead, s[0], s[1] * s[2] * s[3]), (*lead, -1, s[3])) for s in shapes[1:split]),
        right_first=(*lead, last[0], last[1] * last[2] * last[3]),
        right_steps=tuple(
            ((*lead, s[0] * s[1] * s[2], s[3]), (*lead, s[0], -1)) for s in reversed(shapes[split : d - 1])
        ),
        regroup_left=_regroup(shapes[:split], 0, False, lead, bond),
        regroup_right=_regroup(shapes[split:], 1, False, lead, bond),
        interleave_left=_regroup(shapes[:split], 0, True, lead, bond),
        interleave_right=_regroup(shapes[split:], 1, True, lead, bond),
        blocks=(*lead, m_left, n_left, m_right, n_right),
        block_axes=_axes(len(lead), (0, 2, 1, 3)),
        size=(*lead, m_left * m_right, n_left * n_right),
        grad_blocks=(*lead, m_left, m_right, n_left, n_right),
        grad_blocked=(*lead, m_left * n_left, m_right * n_right),
        left_cores=left_cores,
        right_cores=right_cores,
        left_grads=train_grad_recipe(left_cores, shapes[:split], lead),
        right_grads=train_grad_recipe(right_cores, shapes[split:], lead) if right_cores else None,
    )


@lru_cache(maxsize=1024)
def packed_layout(shapes: tuple[Shape, ...]) -> tuple[tuple[Shape, Shape, int, int], ...]:
    """``(shape, strides, offset, size)`` of each core inside a packed vector (C order, one after another).

    A TT layer stores its cores as one parameter this way (:class:`tensornet.nn.TTMLinear`).
    """
    out, offset = [], 0
    for shape in shapes:
        strides = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
        size = math.prod(shape)
        out.append((shape, strides, offset, size))
        offset += size
    return tuple(out)


def unpack(packed: Array, shapes: tuple[Shape, ...]) -> list[Array]:
    """The cores as views of a packed torch vector ``(P,)``, or of a stack of them ``(G, P)``.

    One view per core (inside an autograd Function no autograd tracks them); a stack gives
    cores ``(G, *shape)``, one train per row.
    """
    if packed.ndim == 1:
        # a layer's parameter, which may itself be a view (a slice of one flat vector: vector_to_parameters,
        # functional_call): as_strided offsets are absolute in the storage, so add the parameter's own (a third
        # of the host time of narrow + view); a strided parameter, and dynamo, which traces no
        # storage_offset(), take relative views
        import torch

        if packed.stride(0) != 1 or torch.compiler.is_compiling():
            return [packed.narrow(0, o, n).view(s) for s, _, o, n in packed_layout(shapes)]
        base = packed.storage_offset()
        return [packed.as_strided(s, st, base + o) for s, st, o, _ in packed_layout(shapes)]
    count, width = packed.shape  # a stack the library made (contiguous)
    base = packed.storage_offset()
    return [packed.as_strided((count, *s), (width, *st), base + o) for s, st, o, _ in packed_layout(shapes)]


def core_shapes(cores: Sequence[Array], lead: int = 0) -> CoreShapes:
    return tuple(tuple(int(v) for v in c.shape[lead:]) for c in cores)  # type: ignore[misc]


def halves(cores: Sequence[Array], recipe: RebuildRecipe, ops: ArrayOps) -> tuple[Any, Any]:
    """``(L, R)``: the products of the train's left and right halves, in blocked modes.

    ``L`` is ``(*lead, M_<s N_<s, r_s)`` and ``R`` is ``(*lead, r_s, M_>=s N_>=s)``.
    """
    reshape = ops.reshape
    left = reshape(cores[0], recipe.left_first)
    for core, (core_shape, out_shape) in zip(cores[1 : recipe.split], recipe.left_steps):
        left = reshape(left @ reshape(core, core_shape), out_shape)
    right = reshape(cores[-1], recipe.right_first)
    for core, (core_shape, out_shape) in zip(reversed(cores[recipe.split : -1]), recipe.right_steps):
        right = reshape(reshape(core, core_shape) @ right, out_shape)
    if recipe.regroup_left is not None:
        left = _reorder(left, recipe.regroup_left, ops)
    if recipe.regroup_right is not None:
        right = _reorder(right, recipe.regroup_right, ops)
    return left, right


def _reorder(matrix: Array, regroup: Regroup, ops: ArrayOps) -> Any:
    return ops.reshape(ops.permute(ops.reshape(matrix, regroup.shape), regroup.axes), regroup.final)


def rebuild(cores: Sequence[Array], recipe: RebuildRecipe, ops: ArrayOps, *, parts: bool = False) -> Any:
    """The dense ``(*lead, M, N)`` matrix of TTM cores.

    The halves' one big product ``L @ R`` gives ``(M_<s, N_<s, M_>=s, N_>=s)`` blocks and one block
    transpose gives ``(M, N)``. With ``parts`` returns ``(W, (L, R))`` for the backward. Cost: ``2 M N r_s``
    plus the halves (``O(sqrt(M N) r^2)`` for balanced shapes).
    """
    if len(cores) == 1:
        dense = ops.reshape(cores[0], recipe.size)
        return (dense, None) if parts else dense
    left, right = halves(cores, recipe, ops)
    dense = ops.reshape(ops.permute(ops.reshape(left @ right, recipe.blocks), recipe.block_axes), recipe.size)
    return (dense, (left, right)) if parts else dense


def rebuild_grads(
    cores: Sequence[Array], grad_w: Array, recipe: RebuildRecipe, ops: ArrayOps, parts: Any = None
) -> list[Array]:
    """The core gradients for the cotangent ``grad_w`` (``(*lead, M, N)``) of the rebuilt matrix.

    The VJP of :func:`rebuild` (``parts``: the halves it returned, recomputed when None): a block transpose of
    ``grad_w``, ``dL = G R^T`` and ``dR = L^T G`` (``2 M N r_s`` each), then each half's own core gradients
    with shared environments.
    """
    if len(cores) == 1:
        return [ops.reshape(grad_w, (*recipe.lead, *recipe.shapes[0]))]
    left, right = parts if parts is not None else halves(cores, recipe, ops)
    blocked = ops.reshape(
        ops.permute(ops.reshape(grad_w, recipe.grad_blocks), recipe.block_axes), recipe.grad_blocked
    )
    grad_left = blocked @ ops.mT(right)  # (*lead, M_<s N_<s, r_s), blocked modes
    grad_right = ops.mT(left) @ blocked  # (*lead, r_s, M_>=s N_>=s)
    split = recipe.split
    if recipe.interleave_left is not None:  # back to interleaved modes
        grad_left = _reorder(grad_left, recipe.interleave_left, ops)
    if recipe.interleave_right is not None:
        grad_right = _reorder(grad_right, recipe.interleave_right, ops)
    assert recipe.left_grads is not None and recipe.right_grads is not None  # two halves: d > 1
    grads = train_grads(cores[:split], grad_left, recipe.left_grads, ops)
    return grads + train_grads(cores[split:], grad_right, recipe.right_grads, ops)


class TrainGradRecipe(NamedTuple):
    """Shapes :func:`train_grads` uses for a train of cores (lead dimensions included)."""

    flat: tuple[Shape, ...]  # core k as (*lead, r, p, r')
    env_matrices: tuple[Shape, ...]  # core k as (*lead, r p, r') for the environments and carries
    env_out: tuple[Shape, ...]  # environment k as (*lead, r, -1)
    last: Shape  # the last core as (*lead, r, -1): the first environment
    partials: tuple[Shape, ...]  # the carry before core k as (*lead, r p, -1)
    first: Shape  # the cotangent as (*lead, 1, -1)
    outputs: tuple[Shape, ...]  # the core gradients in the cores' own shapes


@lru_cache(maxsize=4096)
def train_grad_recipe(shapes: CoreShapes, original: CoreShapes, lead: Shape) -> TrainGradRecipe:
    flat = tuple(tt_core_shape(s) for s in shapes)
    return TrainGradRecipe(
        flat=tuple((*lead, *f) for f in flat),
        env_matrices=tuple((*lead, f[0] * f[1], f[2]) for f in flat),
        env_out=tuple((*lead, f[0], -1) for f in flat),
        last=(*lead, flat[-1][0], -1),
        partials=tuple((*lead, f[0] * f[1], -1) for f in flat),
        first=(*lead, 1, -1),
        outputs=tuple((*lead, *o) for o in original),
    )


def train_grads(cores: Sequence[Array], grad: Array, recipe: TrainGradRecipe, ops: ArrayOps) -> list[Array]:
    """VJP of a train's dense product (one vector per lead index) w.r.t. its cores.

    The modes are interleaved. For the cotangent ``grad``, a left-to-right sweep keeps ``P_k`` = ``grad``
    contracted with the cores before k, and core k's gradient is ``P_k`` against the right environment
    ``R_{k+1}`` (the product of the cores after k; ``R_0``, the whole train, is never formed). Every step is
    one GEMM; intermediates are shared by all core gradients. The halves of :func:`rebuild` are such trains,
    their open bond folded into the end core's mode (see the recipe). Cost: ``O(r prod(p))`` for the first
    core, geometrically less for the others.
    """
    reshape, mT = ops.reshape, ops.mT
    d = len(cores)
    matrices = [reshape(c, m) for c, m in zip(cores, recipe.env_matrices)]
    envs: list[Any] = [None] * d
    current = reshape(cores[-1], recipe.last)
    envs[d - 1] = current
    for k in range(d - 2, 0, -1):
        current = reshape(matrices[k] @ current, recipe.env_out[k])
        envs[k] = current
    partial = reshape(grad, recipe.first)
    grads = []
    for k in range(d):
        partial = reshape(partial, recipe.partials[k])
        if k == d - 1:
            grads.append(partial)
            break
        grads.append(partial @ mT(envs[k + 1]))
        partial = mT(matrices[k]) @ partial
    return [reshape(g, o) for g, o in zip(grads, recipe.outputs)]


def tt_grads_from_dense(flat_cores: Sequence[Array], grad: Array, ops: ArrayOps) -> list[Array]:
    """VJP of a TT's dense tensor (cores ``(r, p, r')``) w.r.t. its cores for the cotangent ``grad``.

    ``grad`` has any shape with the tensor's size, in the TT's mode order.
    """
    shapes = tuple((int(c.shape[0]), int(c.shape[1]), 1, int(c.shape[2])) for c in flat_cores)
    original = tuple(tuple(int(v) for v in c.shape) for c in flat_cores)
    return train_grads(flat_cores, grad, train_grad_recipe(shapes, original, ()), ops)  # type: ignore[arg-type]


def dense_to_interleaved(cores: Sequence[Array], dense: Array, ops: ArrayOps) -> Any:
    """A ``(M, N)`` matrix as the tensor over interleaved modes ``(m_1, n_1, m_2, n_2, ...)``."""
    shapes = core_shapes(cores)
    if len(shapes) == 1:
        return ops.reshape(dense, (1, -1))
    d = len(shapes)
    inner = (*(s[1] for s in shapes), *(s[2] for s in shapes))
    return ops.permute(ops.reshape(dense, inner), tuple(a for k in range(d) for a in (k, d + k)))


def device_of(x: Array) -> Any:
    return array_api_compat.device(x)


def rows_of(cores: Sequence[Array]) -> int:
    rows = 1
    for c in cores:  # a loop, not math.prod of a generator: dynamo traces it
        rows *= int(c.shape[1])
    return rows


def cols_of(cores: Sequence[Array]) -> int:
    cols = 1
    for c in cores:
        cols *= int(c.shape[2])
    return cols
