"""The ways to compute ``y = x @ W.T`` and its VJP, each with its cost model next to its kernels.

Model and kernels are both derived from the same recipe (so the model charges exactly the GEMMs and copies the
kernels perform; ``tests/test_linear_plan.py`` counts the dispatched kernels against the model).

* :data:`REBUILD`: W rebuilt as the product of the train's two halves, one permuting copy, then one
  ``(B, N) x (N, M)`` GEMM; its backward (named ``dense``) is ``dx = dy W``, ``dW = dy^T x`` and the core
  gradients from ``dW``. Best at training batch sizes: the rebuild costs ``O(M N r)``, small next to the
  GEMM's ``2 B M N`` once ``B`` exceeds a few ranks.
* :data:`SWEEP`: the factorised core-by-core product, one GEMM and one 2-D transpose per core, never forming
  an ``M x N`` array; its backward is reverse mode through the sweep. Best at small B (decoding).
* :data:`EINSUM`: the FLOP-optimal path ``opt_einsum`` finds for the whole network, executed pairwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import opt_einsum as oe

from .. import _einsum
from .._backend import Array
from . import kernels as K
from . import sweep_kernels as SK
from .cost import Candidate, Costing, Machine

__all__ = ["EINSUM", "REBUILD", "STRATEGIES", "SWEEP", "linear_equation", "linear_grad_equations"]


def reshape_copies(shape: Sequence[int], axes: Sequence[int], final: Sequence[int]) -> bool:
    """Whether reshaping a C-contiguous array, permuted by ``axes``, to ``final`` has to copy.

    The permuted dimensions fall into chunks that are contiguous in memory; the reshape is a view (torch's and
    numpy's rule) exactly when every chunk boundary is also a boundary of ``final``'s dimensions.
    """
    total = math.prod(int(n) for n in shape)
    known = math.prod(int(n) for n in final if int(n) != -1)
    target = [total // known if int(n) == -1 else int(n) for n in final]
    strides = [math.prod(int(n) for n in shape[i + 1 :]) for i in range(len(shape))]
    chunks: list[int] = []
    previous = None
    for a in axes:
        size, stride = int(shape[a]), strides[a]
        if size == 1:
            continue
        if previous is not None and previous == stride * size:
            chunks[-1] *= size
        else:
            chunks.append(size)
        previous = stride
    boundaries = {math.prod(chunks[: i + 1]) for i in range(len(chunks))}
    prefixes = {math.prod(target[: i + 1]) for i in range(len(target))}
    return not boundaries <= prefixes


def _permute_cost(cost: Costing, shape: K.Shape, axes: K.Shape, final: K.Shape, what: str) -> None:
    if reshape_copies(shape, axes, final):
        cost.copy(math.prod(shape), what)


def _transposed_reshape(cost: Costing, rows: int, cols: int, final: K.Shape, what: str) -> None:
    """``reshape(a.mT, final)`` for ``a`` of shape ``(rows, cols)``."""
    _permute_cost(cost, (rows, cols), (1, 0), final, what)


# --- the strategies' common interface -----------------------------------------------------------------
Grads = tuple[Any, list[Any] | None]
"""``(grad_x or None, core gradients or None)``."""


class BackwardCall(NamedTuple):
    """The arguments of one backward pass (see :meth:`Strategy.backward`)."""

    x2d: Array
    cores: Sequence[Array]
    grad_y: Array
    ops: K.ArrayOps
    path: Any
    need_x: bool
    need_cores: bool
    kept: Any


class Strategy:
    """One way to compute ``y = x2d @ W.T`` (``forward``) and its VJP (``backward``), with their costs."""

    forward_name = ""
    backward_name = ""

    def forward_cost(self, machine: Machine, item: int, shapes: K.CoreShapes, batch: int) -> Candidate:
        """The forward's kernels for ``batch`` rows, priced by the cost model."""
        raise NotImplementedError

    def backward_cost(self, machine: Machine, item: int, shapes: K.CoreShapes, batch: int) -> Candidate:
        """The backward's kernels for ``batch`` rows, priced by the cost model."""
        raise NotImplementedError

    def forward(self, x2d: Array, cores: Sequence[Array], ops: K.ArrayOps, path: Any = None) -> Array:
        """``x2d @ W.T`` for ``x2d`` (B, N) and the TTM cores of W (``path``: the einsum path, if any)."""
        raise NotImplementedError

    def backward(
        self,
        x2d: Array,
        cores: Sequence[Array],
        grad_y: Array,
        ops: K.ArrayOps,
        path: Any = None,
        *,
        need_x: bool = True,
        need_cores: bool = True,
        kept: Any = None,
    ) -> Grads:
        """``(grad_x, core gradients)`` for the cotangent ``grad_y`` (B, M); unneeded ones are None."""
        return self._backward(BackwardCall(x2d, cores, grad_y, ops, path, need_x, need_cores, kept))

    def _backward(self, call: BackwardCall) -> Grads:
        raise NotImplementedError


# --- rebuild (forward) and dense (backward) ------------------------------------------------------------
def _halves_cost(cost: Costing, recipe: K.RebuildRecipe) -> None:
    shapes, split = recipe.shapes, recipe.split
    batch = math.prod(recipe.lead)
    head = shapes[0][1] * shapes[0][2]
    for left, m, n, right in shapes[1:split]:
        cost.gemm(head, left, m * n * right, "left half", batch)
        head *= m * n
    tail = shapes[-1][1] * shapes[-1][2]
    for left, m, n, right in reversed(shapes[split:-1]):
        cost.gemm(left * m * n, right, tail, "right half", batch)
        tail *= m * n
    lead = len(recipe.lead)
    for regroup, what in ((recipe.regroup_left, "left half"), (recipe.regroup_right, "right half")):
        if regroup is not None:
            shape = regroup.shape[lead:]
            axes = tuple(a - lead for a in regroup.axes[lead:])
            _permute_cost(cost, shape, axes, regroup.final[lead:], f"{what} to blocked modes")


def _rebuild_cost(cost: Costing, recipe: K.RebuildRecipe) -> None:
    if len(recipe.shapes) == 1:
        return
    _halves_cost(cost, recipe)
    lead = len(recipe.lead)
    blocks = recipe.blocks[lead:]
    bond = recipe.shapes[recipe.split][0]
    cost.gemm(blocks[0] * blocks[1], bond, blocks[2] * blocks[3], "W = L @ R", math.prod(recipe.lead))
    _permute_cost(cost, blocks, (0, 2, 1, 3), recipe.size[lead:], "W to matrix layout")


def _train_grads_cost(cost: Costing, shapes: K.CoreShapes, batch: int, what: str) -> None:
    flat = [(s[0], s[1] * s[2], s[3]) for s in shapes]
    d = len(flat)
    rest = [math.prod(s[1] for s in flat[k:]) for k in range(d + 1)]  # modes from core k on
    for k in range(d - 2, 0, -1):
        left, size, right = flat[k]
        cost.gemm(left * size, right, rest[k + 1], f"{what} environment {k}", batch)
    for k in range(d - 1):
        left, size, right = flat[k]
        cost.gemm(left * size, rest[k + 1], right, f"{what} core {k} gradient", batch)
        cost.gemm(right, left * size, rest[k + 1], f"{what} carry {k}", batch)


def _rebuild_grads_cost(cost: Costing, recipe: K.RebuildRecipe) -> None:
    if len(recipe.shapes) == 1:
        return
    lead = len(recipe.lead)
    batch = math.prod(recipe.lead)
    _permute_cost(cost, recipe.grad_blocks[lead:], (0, 2, 1, 3), recipe.grad_blocked[lead:], "dW to blocks")
    rows, cols = recipe.grad_blocked[lead:]
    bond = recipe.shapes[recipe.split][0]
    cost.gemm(rows, cols, bond, "dL = dW R^T", batch)
    cost.gemm(bond, rows, cols, "dR = L^T dW", batch)
    split = recipe.split
    for part, size, axis in ((recipe.shapes[:split], rows, 0), (recipe.shapes[split:], cols, 1)):
        if len(part) > 1:  # back to interleaved modes
            inner = (*(s[1] for s in part), *(s[2] for s in part))
            k = len(part)
            order = tuple(a for j in range(k) for a in (j, k + j))
            if axis == 0:
                _permute_cost(cost, (*inner, bond), (*order, 2 * k), (size, bond), "dL to interleaved modes")
            else:
                axes = (0, *(a + 1 for a in order))
                _permute_cost(cost, (bond, *inner), axes, (bond, size), "dR to interleaved modes")
    _train_grads_cost(cost, recipe.left_cores, batch, "left half")
    _train_grads_cost(cost, recipe.right_cores, batch, "right half")


class Rebuild(Strategy):
    """Forward ``rebuild``: W rebuilt, then one GEMM. Backward ``dense``: from the dense W and dW."""

    forward_name = "rebuild"
    backward_name = "dense"

    def forward_cost(self, machine: Machine, item: int, shapes: K.CoreShapes, batch: int) -> Candidate:
        cost = Costing(machine, item)
        _rebuild_cost(cost, K.rebuild_recipe(shapes))
        rows, cols = math.prod(s[1] for s in shapes), math.prod(s[2] for s in shapes)
        cost.gemm(batch, cols, rows, "y = x W^T")
        return Candidate(self.forward_name, tuple(cost.steps))

    def backward_cost(self, machine: Machine, item: int, shapes: K.CoreShapes, batch: int) -> Candidate:
        cost = Costing(machine, item)
        recipe = K.rebuild_recipe(shapes)
        _rebuild_cost(cost, recipe)
        rows, cols = math.prod(s[1] for s in shapes), math.prod(s[2] for s in shapes)
        cost.gemm(batch, rows, cols, "dx = dy W")
        cost.gemm(rows, batch, cols, "dW = dy^T x")
        _rebuild_grads_cost(cost, recipe)
        return Candidate(self.backward_name, tuple(cost.steps))

    def forward(self, x2d: Array, cores: Sequence[Array], ops: K.ArrayOps, path: Any = None) -> Array:
        return x2d @ ops.mT(K.rebuild(cores, K.rebuild_recipe(K.core_shapes(cores)), ops))

    def _backward(self, call: BackwardCall) -> Grads:
        """``call.kept``: ``(W or None, (L, R) or None)`` from a forward that kept them (``save_weight``)."""
        x2d, cores, grad_y, ops = call.x2d, call.cores, call.grad_y, call.ops
        recipe = K.rebuild_recipe(K.core_shapes(cores))
        weight, parts = call.kept if call.kept is not None else (None, None)
        if call.need_x and weight is None:
            weight, parts = K.rebuild(cores, recipe, ops, parts=True)
        grad_x = grad_y @ weight if call.need_x else None
        if not call.need_cores:
            return grad_x, None
        del weight
        grad_w = ops.mT(grad_y) @ x2d
        return grad_x, K.rebuild_grads(cores, grad_w, recipe, ops, parts)


# --- sweep -------------------------------------------------------------------------------------------
def _sweep_cost(cost: Costing, shapes: K.CoreShapes, batch: int, transpose: bool, what: str = "") -> None:
    recipe = SK.sweep_recipe(shapes, transpose)
    axes = recipe.axes
    for k, (s, matrix) in enumerate(zip(shapes, recipe.matrices)):
        _permute_cost(cost, s, axes, matrix, f"{what}core {k} as a matrix")
    size = batch * math.prod(recipe.size_in)
    _transposed_reshape(cost, batch, size // batch, (recipe.size_in[0], -1), f"{what}x transposed")
    last = len(shapes) - 1
    for k, (rows, cols) in enumerate(recipe.matrices):
        rest = size // cols
        cost.gemm(rows, cols, rest, f"{what}core {k}")
        size = rows * rest
        final = (recipe.next_state[k], -1) if k < last else (batch, -1)
        _transposed_reshape(
            cost, recipe.size_out[k], size // recipe.size_out[k], final, f"{what}core {k} output"
        )


class Sweep(Strategy):
    """The factorised core-by-core product and its reverse mode."""

    forward_name = backward_name = "sweep"

    def forward_cost(self, machine: Machine, item: int, shapes: K.CoreShapes, batch: int) -> Candidate:
        cost = Costing(machine, item)
        _sweep_cost(cost, shapes, batch, transpose=False)
        return Candidate(self.forward_name, tuple(cost.steps))

    def backward_cost(self, machine: Machine, item: int, shapes: K.CoreShapes, batch: int) -> Candidate:
        cost = Costing(machine, item)
        _sweep_cost(cost, shapes, batch, transpose=False, what="recomputed ")
        recipe = SK.sweep_recipe(shapes, False)
        size_out = [s[1] for s in shapes]
        rows_last = recipe.matrices[-1][0]
        out_total = batch * math.prod(size_out)
        _transposed_reshape(cost, out_total // size_out[-1], size_out[-1], (rows_last, -1), "dy transposed")
        # the states entering each core, as the forward sweep formed them
        size = batch * math.prod(recipe.size_in)
        rests = []
        for rows, cols in recipe.matrices:
            rests.append(size // cols)
            size = rows * (size // cols)
        for k in range(len(shapes) - 1, -1, -1):
            rows, cols = recipe.matrices[k]
            cost.gemm(rows, rests[k], cols, f"dG_{k}")
            cost.gemm(cols, rows, rests[k], f"d state {k}")
            total = cols * rests[k]
            if k > 0:  # (dx itself is returned as a transposed view: no copy)
                final = (recipe.matrices[k - 1][0], -1)
                _transposed_reshape(cost, total // size_out[k - 1], size_out[k - 1], final, f"d state {k}")
        return Candidate(self.backward_name, tuple(cost.steps))

    def forward(self, x2d: Array, cores: Sequence[Array], ops: K.ArrayOps, path: Any = None) -> Array:
        return SK.sweep(x2d, cores, ops)

    def _backward(self, call: BackwardCall) -> Grads:
        if not call.need_cores:
            return (
                SK.sweep(call.grad_y, call.cores, call.ops, transpose=True) if call.need_x else None
            ), None
        grad_x, grads = SK.sweep_grads(call.x2d, call.cores, call.grad_y, call.need_x, call.ops)
        return (grad_x if call.need_x else None), grads


# --- einsum ------------------------------------------------------------------------------------------
def linear_equation(d: int) -> str:
    """The einsum of ``linear`` on ``x`` reshaped to ``(B, n_1..n_d)`` and d TTM cores."""
    sym = iter(_einsum.symbols(3 * d + 2))
    batch = next(sym)
    rows = [next(sym) for _ in range(d)]
    cols = [next(sym) for _ in range(d)]
    ranks = [next(sym) for _ in range(d + 1)]
    terms = [batch + "".join(cols)]
    terms += [ranks[k] + rows[k] + cols[k] + ranks[k + 1] for k in range(d)]
    return ",".join(terms) + "->" + batch + "".join(rows)


def linear_grad_equations(d: int) -> tuple[str, ...]:
    """The einsums of ``linear``'s VJP on ``x`` (B, n..), ``grad_y`` (B, m..) and the d cores.

    They are first ``dx`` (from ``grad_y`` and the cores), then ``dG_k`` (from ``x``, ``grad_y`` and the other
    cores), whose outputs leave out the boundary ranks (reshape to the core shape).
    """
    sym = iter(_einsum.symbols(3 * d + 2))
    batch = next(sym)
    rows = [next(sym) for _ in range(d)]
    cols = [next(sym) for _ in range(d)]
    ranks = [next(sym) for _ in range(d + 1)]
    x_term, gy_term = batch + "".join(cols), batch + "".join(rows)
    core_terms = [ranks[k] + rows[k] + cols[k] + ranks[k + 1] for k in range(d)]
    equations = [",".join([gy_term, *core_terms]) + "->" + x_term]
    for k in range(d):
        others = core_terms[:k] + core_terms[k + 1 :]
        out = (ranks[k] if k > 0 else "") + rows[k] + cols[k] + (ranks[k + 1] if k < d - 1 else "")
        equations.append(",".join([x_term, gy_term, *others]) + "->" + out)
    return tuple(equations)


def _network_cost(
    cost: Costing, equation: str, operand_shapes: Sequence[Sequence[int]], label: str = ""
) -> tuple[tuple[int, ...], ...]:
    """Charge ``equation`` along its opt_einsum path (pairwise, tensordot-like); return the path."""
    path, info = oe.contract_path(
        equation, *operand_shapes, shapes=True, optimize=_einsum.optimizer_for(len(operand_shapes))
    )
    sizes = info.size_dict
    for number, (_, removed, einsum_str, _, blas) in enumerate(info.contraction_list):
        inputs, output = einsum_str.split("->")
        terms = inputs.split(",")
        volume = [math.prod(sizes[c] for c in t) for t in terms]
        out_size = math.prod(sizes[c] for c in output)
        if len(terms) == 2:
            contracted = math.prod(sizes[c] for c in removed) if removed else 1
            kept = [
                math.prod(sizes[c] for c in t if c in output and c not in terms[1 - i])
                for i, t in enumerate(terms)
            ]
            shared = math.prod(sizes[c] for c in set(terms[0]) & set(terms[1]) & set(output))
            cost.gemm(
                kept[0] * shared,
                contracted,
                kept[1],
                f"{label}pair {number} {einsum_str}",
                host=cost.machine.einsum_call,  # each step is one torch.einsum call
            )
        else:
            cost.copy(out_size, f"{label}{einsum_str}", host=cost.machine.einsum_call)
        if blas not in ("GEMM", "DOT"):  # tensordot transposes both operands into GEMM layout and back
            cost.copy(sum(volume) + out_size, f"{label}pair {number} permutes")
    path = tuple(tuple(int(i) for i in p) for p in path)
    calls = _einsum.path_calls(equation, path)
    if len(calls[-1][0]) == 1:  # the pairs leave the output's modes in another order: one more call
        output = equation.split("->")[1]
        cost.copy(
            math.prod(sizes[c] for c in output),
            f"{label}reorder {calls[-1][1]}",
            host=cost.machine.einsum_call,
        )
    return path


def _run_network(equation: str, path: Any, operands: Sequence[Array], ops: K.ArrayOps) -> Any:
    if ops.contract is not None:
        return _einsum.run_path(equation, path, operands, ops.contract)
    shapes = [tuple(o.shape) for o in operands]
    return _einsum.expression(equation, *shapes, optimize=list(path) if path else None)(*operands)


class Einsum(Strategy):
    """The FLOP-optimal path of the whole network (forward), and one such network per gradient."""

    forward_name = backward_name = "einsum"

    def forward_cost(self, machine: Machine, item: int, shapes: K.CoreShapes, batch: int) -> Candidate:
        cost = Costing(machine, item)
        operands = [(batch, *(s[2] for s in shapes)), *shapes]
        path = _network_cost(cost, linear_equation(len(shapes)), operands)
        return Candidate(self.forward_name, tuple(cost.steps), path)

    def backward_cost(self, machine: Machine, item: int, shapes: K.CoreShapes, batch: int) -> Candidate:
        cost = Costing(machine, item)
        x_shape = (batch, *(s[2] for s in shapes))
        gy_shape = (batch, *(s[1] for s in shapes))
        paths = []
        for k, equation in enumerate(linear_grad_equations(len(shapes))):
            operands = [gy_shape, *shapes] if k == 0 else [x_shape, gy_shape, *shapes[: k - 1], *shapes[k:]]
            paths.append(_network_cost(cost, equation, operands, "dx: " if k == 0 else f"dG_{k - 1}: "))
        return Candidate(self.backward_name, tuple(cost.steps), tuple(paths))  # type: ignore[arg-type]

    def forward(self, x2d: Array, cores: Sequence[Array], ops: K.ArrayOps, path: Any = None) -> Array:
        batch = int(x2d.shape[0])
        xr = ops.reshape(x2d, (batch, *(int(c.shape[2]) for c in cores)))
        y = _run_network(linear_equation(len(cores)), path, [xr, *cores], ops)
        return ops.reshape(y, (batch, -1))

    def _backward(self, call: BackwardCall) -> Grads:
        cores, ops = call.cores, call.ops
        d = len(cores)
        equations = linear_grad_equations(d)
        batch = int(call.x2d.shape[0])
        xr = ops.reshape(call.x2d, (batch, *(int(c.shape[2]) for c in cores)))
        gyr = ops.reshape(call.grad_y, (batch, *(int(c.shape[1]) for c in cores)))
        paths = call.path if call.path is not None else [None] * (d + 1)
        grad_x = None
        if call.need_x:
            grad_x = ops.reshape(_run_network(equations[0], paths[0], [gyr, *cores], ops), (batch, -1))
        if not call.need_cores:
            return grad_x, None
        grads = []
        for k in range(d):
            operands = [xr, gyr, *cores[:k], *cores[k + 1 :]]
            grad = _run_network(equations[k + 1], paths[k + 1], operands, ops)
            grads.append(ops.reshape(grad, tuple(int(v) for v in cores[k].shape)))
        return grad_x, grads


REBUILD, SWEEP, EINSUM = Rebuild(), Sweep(), Einsum()
STRATEGIES = (REBUILD, SWEEP, EINSUM)
FORWARD = {s.forward_name: s for s in STRATEGIES}
BACKWARD = {s.backward_name: s for s in STRATEGIES}
