"""The factorised sweep of the TTM layer product: ``y = x @ W.T`` core by core, never forming W.

The state before core k is a matrix with layout (r_{k-1}, in_k, IN_{>k}, B, OUT_{<k}); one GEMM with
core k's (out_k r_k, r_{k-1} in_k) matrix and one 2-D transpose (out_k moves to the back) give the next
state. After the last core the state is (B, OUT). "in" is n and "out" is m for y = x @ W.T; the
transposed sweep (dx = dy @ W) swaps them.

Array operations come as an explicit :class:`~.kernels.ArrayOps`, as for every kernel of :mod:`.kernels`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

from .._backend import Array
from .kernels import ArrayOps, CoreShapes, Shape, core_shapes

__all__ = ["SweepRecipe", "sweep", "sweep_grads", "sweep_recipe"]


class SweepRecipe(NamedTuple):
    axes: Shape  # the permutation making core k a (out_k r_k, r_{k-1} in_k) matrix
    matrices: tuple[Shape, ...]  # those matrix shapes
    size_in: tuple[int, ...]
    size_out: tuple[int, ...]
    next_state: tuple[int, ...]  # the row count of the state entering core k + 1


@lru_cache(maxsize=4096)
def sweep_recipe(shapes: CoreShapes, transpose: bool) -> SweepRecipe:
    size_out = tuple(s[2] if transpose else s[1] for s in shapes)
    size_in = tuple(s[1] if transpose else s[2] for s in shapes)
    matrices = tuple((o * s[3], s[0] * i) for s, o, i in zip(shapes, size_out, size_in))
    following = tuple(matrices[k][0] // size_out[k] * size_in[k + 1] for k in range(len(shapes) - 1))
    return SweepRecipe((2, 3, 0, 1) if transpose else (1, 3, 0, 2), matrices, size_in, size_out, following)


def sweep(
    x2d: Array, cores: Sequence[Array], ops: ArrayOps, *, transpose: bool = False, keep: bool = False
) -> Any:
    """Contract ``x2d`` (B, IN) with the cores one at a time.

    It returns ``(y2d, states, matrices)`` when ``keep`` (the states are what the reverse sweep needs), else
    ``y2d``. Cost: one GEMM and one 2-D transpose per core, no ``M x N`` array.
    """
    recipe = sweep_recipe(core_shapes(cores), transpose)
    mats = [ops.reshape(ops.permute(c, recipe.axes), m) for c, m in zip(cores, recipe.matrices)]
    batch = int(x2d.shape[0])
    state = ops.reshape(ops.mT(x2d), (recipe.size_in[0], -1))
    states = []
    last = len(mats) - 1
    for k, mat in enumerate(mats):
        if keep:
            states.append(state)
        state = ops.mT(ops.reshape(mat @ state, (recipe.size_out[k], -1)))
        if k < last:
            state = ops.reshape(state, (recipe.next_state[k], -1))
    y2d = ops.reshape(state, (batch, -1))
    return (y2d, states, mats) if keep else y2d


def sweep_grads(
    x2d: Array, cores: Sequence[Array], grad_y: Array, need_x: bool, ops: ArrayOps
) -> tuple[Any, list[Any]]:
    """Reverse mode through the sweep: dx and every core gradient in one right-to-left pass.

    The forward states are recomputed from ``x2d``; two GEMMs per core.
    """
    _, states, mats = sweep(x2d, cores, ops, keep=True)
    shapes = core_shapes(cores)
    size_out = [s[1] for s in shapes]
    d = len(cores)
    grad_out = ops.reshape(ops.mT(ops.reshape(grad_y, (-1, size_out[-1]))), (int(mats[-1].shape[0]), -1))
    grads: list[Any] = [None] * d
    grad_x = None
    for k in range(d - 1, -1, -1):
        left, m, n, right = shapes[k]
        grads[k] = ops.permute(ops.reshape(grad_out @ ops.mT(states[k]), (m, right, left, n)), (2, 0, 3, 1))
        if k == 0 and not need_x:
            break
        grad_state = ops.mT(mats[k]) @ grad_out
        if k > 0:
            grad_out = ops.reshape(
                ops.mT(ops.reshape(grad_state, (-1, size_out[k - 1]))), (int(mats[k - 1].shape[0]), -1)
            )
        else:
            grad_x = ops.mT(ops.reshape(grad_state, (int(x2d.shape[1]), -1)))
    return grad_x, grads
