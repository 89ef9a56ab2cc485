"""Contraction planning: cached ``opt_einsum`` expressions, the ``linear`` planner, and explanations.

Every network tensornet contracts (``full``, ``dot``, ``matvec``, ``matmul``, ``hadamard``, the adjoint
networks) goes through :func:`einsum`: the path is found once per (equation, operand shapes) by
``opt_einsum`` (``optimal`` for few operands, ``dp`` for moderate and ``greedy`` for many) and the
compiled expression is reused. Paths depend on shapes only, so these plans are shared by every
backend, dtype and device.

``linear(x, W)`` (x of shape ``(B, N)``, W a TTM) is planned by :func:`plan_linear` among candidates
that compute the same thing in different orders:

* ``rebuild``: W rebuilt by a right-to-left GEMM sweep over the cores, one permuting copy, then one
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
charged as memory traffic. With :func:`autotune` on, the candidates are instead timed once per
shape bucket on the real arrays and the fastest is cached (like cuDNN's benchmark mode).

Plans are cached by (core shapes, dtype, backend, device, token bucket); the bucket rounds the
number of rows up to a power of two, so generation with a growing length does not re-plan every
token. :func:`cache_info` counts planner invocations (misses) and hits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import opt_einsum as oe

from ._backend import Array

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

_MAX_PLANS = 4096
_plans: dict[tuple[Any, ...], Any] = {}
_stats = {"hits": 0, "misses": 0}
# Bumped whenever a cached plan is added, replaced (autotuning) or the cache is cleared, so that callers
# keeping their own memo of plans (the torch ``linear`` hot path) know when to drop it.
_generation = [0]
_settings = {"autotune": os.environ.get("TENSORNET_AUTOTUNE", "0").lower() in ("1", "true", "yes", "on")}


class CacheInfo(NamedTuple):
    """``misses`` is the number of planner invocations; ``currsize`` the number of cached plans."""

    hits: int
    misses: int
    currsize: int


def symbols(count: int, start: int = 0) -> list[str]:
    """``count`` distinct einsum subscripts (from ``opt_einsum.get_symbol``)."""
    return [oe.get_symbol(i) for i in range(start, start + count)]


def optimizer_for(num_operands: int) -> str:
    if num_operands <= 4:
        return "optimal"
    if num_operands <= 12:
        return "dp"
    return "greedy"


def count_hit() -> None:
    """Count a plan-cache hit served from a caller's memo of this cache (see ``_generation``)."""
    _stats["hits"] += 1


def _lookup(key: tuple[Any, ...]) -> Any:
    plan = _plans.get(key)
    if plan is not None:
        _stats["hits"] += 1
    return plan


def _store(key: tuple[Any, ...], plan: Any, *, count: bool = True) -> Any:
    if count:
        _stats["misses"] += 1
    if len(_plans) >= _MAX_PLANS:
        _plans.pop(next(iter(_plans)))
    _plans[key] = plan
    _generation[0] += 1
    return plan


def cache_info() -> CacheInfo:
    """Hit/miss counts of the plan cache (a miss is one planner invocation)."""
    return CacheInfo(_stats["hits"], _stats["misses"], len(_plans))


def cache_clear() -> None:
    """Forget every plan and reset the counters (plans are rebuilt on next use)."""
    _plans.clear()
    _stats["hits"] = _stats["misses"] = 0
    _generation[0] += 1


def autotune(enabled: bool | None = None) -> bool:
    """Turn timing-based choice of the ``linear`` path on or off; returns the previous setting.

    ``autotune()`` only reports it. Off by default; the environment variable
    ``TENSORNET_AUTOTUNE=1`` turns it on at import. Tuned plans are cached like model-based ones.
    """
    previous = _settings["autotune"]
    if enabled is not None:
        _settings["autotune"] = bool(enabled)
    return previous


# --- general networks -------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class NetworkPlan:
    """A planned einsum network: the compiled expression and opt_einsum's path information."""

    equation: str
    shapes: tuple[tuple[int, ...], ...]
    optimize: Any
    expression: Any = field(repr=False)

    def __repr__(self) -> str:
        info = oe.contract_path(self.equation, *self.shapes, shapes=True, optimize=self.optimize)[1]
        return f"NetworkPlan({self.equation!r})\n{info}"


def plan_network(equation: str, *shapes: tuple[int, ...], optimize: Any = None) -> NetworkPlan:
    """The cached plan for ``equation`` on operands of ``shapes`` (a path given as a list of pairs is
    used as is)."""
    key_shapes = tuple(tuple(int(n) for n in s) for s in shapes)
    optimize = optimize if optimize is not None else optimizer_for(len(shapes))
    hashable = tuple(map(tuple, optimize)) if isinstance(optimize, (list, tuple)) else optimize
    key = ("network", equation, key_shapes, hashable)
    plan = _lookup(key)
    if plan is None:
        expr = oe.contract_expression(equation, *key_shapes, optimize=optimize)
        plan = _store(key, NetworkPlan(equation, key_shapes, optimize, expr))
    return plan


def expression(equation: str, *shapes: tuple[int, ...], optimize: Any = None) -> Any:
    """The compiled (cached) ``opt_einsum`` expression for ``equation`` on operands of ``shapes``."""
    return plan_network(equation, *shapes, optimize=optimize).expression


def run_path(equation: str, path: Sequence[Sequence[int]], operands: Sequence[Any], contract_fn: Any) -> Any:
    """Execute ``equation`` pairwise along an ``opt_einsum`` ``path`` (each new intermediate appended
    last), calling ``contract_fn(subscripts, *arrays)`` per step, e.g. ``torch.einsum``. Pure Python
    bookkeeping, so ``torch.compile`` traces it."""
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    arrays = list(operands)
    for step in path:
        taken = [(terms.pop(i), arrays.pop(i)) for i in sorted(step, reverse=True)]
        keep = set("".join(terms)) | set(output)
        seen = "".join(dict.fromkeys(c for term, _ in taken for c in term))
        result = "".join(c for c in seen if c in keep)
        arrays.append(contract_fn(",".join(t for t, _ in taken) + "->" + result, *(a for _, a in taken)))
        terms.append(result)
    if len(arrays) != 1:
        raise ValueError(f"run_path: the path leaves {len(arrays)} operands of {equation!r}, expected 1")
    return arrays[0] if terms[0] == output else contract_fn(terms[0] + "->" + output, arrays[0])


def einsum(equation: str, *operands: Array, optimize: Any = None) -> Array:
    """Contract ``operands`` by ``equation`` with a cached, path-optimised expression."""
    return expression(equation, *(tuple(o.shape) for o in operands), optimize=optimize)(*operands)


# --- the cost model -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Machine:
    """Roofline constants of the cost model (rough; autotuning replaces them with measurements).

    ``thin``: a GEMM dimension of this size runs at half the peak rate (efficiency ``s / (s + thin)``
    per dimension, the contracted one counted at half weight).
    """

    name: str
    peak_flops: float
    bandwidth: float
    launch: float
    thin: float

    @staticmethod
    def for_device(device: str, itemsize: int) -> Machine:
        if device.startswith("cuda"):
            peak = 400e12 if itemsize <= 2 else 50e12
            return Machine("cuda", peak, 2.0e12, 8e-6, 128.0)
        return Machine("cpu", 40e9 if itemsize <= 4 else 20e9, 6e9, 4e-6, 16.0)


@dataclass(frozen=True)
class Step:
    """One kernel of a candidate: ``what`` it does, its FLOPs, bytes moved and modelled seconds."""

    what: str
    flops: int
    bytes: int
    elements: int
    seconds: float


def _gemm(machine: Machine, itemsize: int, m: int, k: int, n: int, what: str) -> Step:
    flops = 2 * m * k * n
    moved = itemsize * (m * k + k * n + m * n)
    eff = (m / (m + machine.thin)) * (n / (n + machine.thin)) * math.sqrt(k / (k + machine.thin))
    seconds = max(flops / (machine.peak_flops * eff), moved / machine.bandwidth) + machine.launch
    return Step(f"{what}: GEMM ({m} x {k}) @ ({k} x {n})", flops, moved, m * n, seconds)


def _copy(machine: Machine, itemsize: int, elements: int, what: str) -> Step:
    moved = 2 * itemsize * elements
    # strided reads run well below streaming bandwidth
    return Step(
        f"{what}: copy of {elements} elements",
        0,
        moved,
        elements,
        2 * moved / machine.bandwidth + machine.launch,
    )


@dataclass(frozen=True)
class Candidate:
    """One way to compute a network: named ``strategy`` (and an einsum ``path``), with its steps."""

    strategy: str
    steps: tuple[Step, ...]
    path: tuple[tuple[int, ...], ...] | None = None
    measured: float | None = None

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.steps)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.steps)

    @property
    def largest(self) -> int:
        """Elements of the largest intermediate or output."""
        return max((s.elements for s in self.steps), default=0)

    @property
    def seconds(self) -> float:
        """Measured seconds when autotuned, else the model's estimate."""
        return self.measured if self.measured is not None else sum(s.seconds for s in self.steps)

    def _row(self) -> str:
        timed = f"{self.measured * 1e3:9.3f} ms measured" if self.measured is not None else ""
        modelled = sum(s.seconds for s in self.steps)
        return (
            f"  {self.strategy:<8} {self.flops / 1e6:12.2f} MFLOP {self.bytes / 1e6:10.2f} MB "
            f"{self.largest:>12} elements {modelled * 1e3:9.3f} ms model {timed}"
        )


def _shapes_of(cores: Sequence[Any]) -> tuple[tuple[int, int, int, int], ...]:
    out = []
    for c in cores:
        shape = tuple(int(s) for s in (c if isinstance(c, tuple) else c.shape))
        if len(shape) != 4:
            raise ValueError(f"plan_linear: TTM cores are 4-D (r, m, n, r'), got a core of shape {shape}")
        out.append(shape)
    return tuple(out)  # type: ignore[return-value]


def _split(shapes: Sequence[tuple[int, ...]]) -> int:
    # the same rule as tensornet._linear.split_point (kept here so the planner imports no kernels)
    sizes = [math.prod(shape[1:-1]) for shape in shapes]
    costs = [(math.prod(sizes[:s]) + math.prod(sizes[s:])) * shapes[s][0] for s in range(1, len(shapes))]
    return 1 + costs.index(min(costs))


def _rebuild_steps(machine: Machine, item: int, shapes: Sequence[tuple[int, ...]]) -> list[Step]:
    """W as L @ R (left and right halves' products), then one permuting copy to matrix layout."""
    rows, cols = math.prod(s[1] for s in shapes), math.prod(s[2] for s in shapes)
    if len(shapes) == 1:
        return []
    split = _split(shapes)
    steps = []
    head = shapes[0][1] * shapes[0][2]
    for left, m, n, right in shapes[1:split]:
        steps.append(_gemm(machine, item, head, left, m * n * right, "left half"))
        head *= m * n
    tail = shapes[-1][1] * shapes[-1][2]
    for left, m, n, right in reversed(shapes[split:-1]):
        steps.append(_gemm(machine, item, left * m * n, right, tail, "right half"))
        tail *= m * n
    steps.append(_gemm(machine, item, head, shapes[split][0], tail, "W = L @ R"))
    steps.append(_copy(machine, item, rows * cols, "W to matrix layout"))
    return steps


def _sweep_steps(machine: Machine, item: int, shapes: Sequence[tuple[int, ...]], batch: int) -> list[Step]:
    size = batch * math.prod(s[2] for s in shapes)
    steps = [_copy(machine, item, size, "x transposed")]
    for k, (left, m, n, right) in enumerate(shapes):
        rest = size // (left * n)
        steps.append(_gemm(machine, item, m * right, left * n, rest, f"core {k}"))
        size = m * right * rest
        steps.append(_copy(machine, item, size, f"core {k} output transposed"))
    return steps


def linear_equation(d: int) -> str:
    """The einsum of ``linear`` on ``x`` reshaped to ``(B, n_1..n_d)`` and d TTM cores."""
    sym = iter(symbols(3 * d + 2))
    batch = next(sym)
    rows = [next(sym) for _ in range(d)]
    cols = [next(sym) for _ in range(d)]
    ranks = [next(sym) for _ in range(d + 1)]
    terms = [batch + "".join(cols)]
    terms += [ranks[k] + rows[k] + cols[k] + ranks[k + 1] for k in range(d)]
    return ",".join(terms) + "->" + batch + "".join(rows)


def linear_grad_equations(d: int) -> tuple[str, ...]:
    """The einsums of ``linear``'s VJP on ``x`` (B, n..), ``grad_y`` (B, m..) and the d cores: first
    ``dx`` (from ``grad_y`` and the cores), then ``dG_k`` (from ``x``, ``grad_y`` and the other cores),
    whose outputs leave out the boundary ranks (reshape to the core shape)."""
    sym = iter(symbols(3 * d + 2))
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


def _network_steps(
    machine: Machine, item: int, equation: str, operand_shapes: Sequence[tuple[int, ...]], label: str = ""
) -> tuple[list[Step], tuple[tuple[int, ...], ...]]:
    """Modelled steps of ``equation`` along its opt_einsum path (pairwise, tensordot-like), and the path."""
    optimize = optimizer_for(len(operand_shapes))
    path, info = oe.contract_path(equation, *operand_shapes, shapes=True, optimize=optimize)
    sizes = info.size_dict
    steps = []
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
            batch_size = math.prod(sizes[c] for c in set(terms[0]) & set(terms[1]) & set(output))
            step = _gemm(
                machine, item, kept[0] * batch_size, contracted, kept[1], f"{label}pair {number} {einsum_str}"
            )
        else:
            step = _copy(machine, item, out_size, f"{label}{einsum_str}")
        steps.append(step)
        if blas not in ("GEMM", "DOT"):
            # tensordot transposes both operands into GEMM layout and the result back
            steps.append(_copy(machine, item, sum(volume) + out_size, f"{label}pair {number} permutes"))
    return steps, tuple(tuple(p) for p in path)


def _einsum_candidate(
    machine: Machine, item: int, shapes: Sequence[tuple[int, ...]], batch: int
) -> Candidate:
    operand_shapes = [(batch, *(s[2] for s in shapes)), *shapes]
    steps, path = _network_steps(machine, item, linear_equation(len(shapes)), operand_shapes)
    return Candidate("einsum", tuple(steps), path)


def _einsum_backward_candidate(
    machine: Machine, item: int, shapes: Sequence[tuple[int, ...]], batch: int
) -> Candidate:
    """dx and each dG_k as its own FLOP-optimal network (d + 1 contractions, no shared intermediates)."""
    x_shape = (batch, *(s[2] for s in shapes))
    gy_shape = (batch, *(s[1] for s in shapes))
    equations = linear_grad_equations(len(shapes))
    all_steps: list[Step] = []
    paths = []
    for k, equation in enumerate(equations):
        operands = [gy_shape, *shapes] if k == 0 else [x_shape, gy_shape, *shapes[: k - 1], *shapes[k:]]
        steps, path = _network_steps(machine, item, equation, operands, "dx: " if k == 0 else f"dG_{k - 1}: ")
        all_steps += steps
        paths.append(path)
    return Candidate("einsum", tuple(all_steps), tuple(paths))  # type: ignore[arg-type]


def _forward_candidates(
    machine: Machine, item: int, shapes: Sequence[tuple[int, ...]], batch: int
) -> list[Candidate]:
    rows, cols = math.prod(s[1] for s in shapes), math.prod(s[2] for s in shapes)
    rebuild = [*_rebuild_steps(machine, item, shapes), _gemm(machine, item, batch, cols, rows, "y = x W^T")]
    return [
        Candidate("rebuild", tuple(rebuild)),
        Candidate("sweep", tuple(_sweep_steps(machine, item, shapes, batch))),
        _einsum_candidate(machine, item, shapes, batch),
    ]


def _backward_candidates(
    machine: Machine, item: int, shapes: Sequence[tuple[int, ...]], batch: int
) -> list[Candidate]:
    rows, cols = math.prod(s[1] for s in shapes), math.prod(s[2] for s in shapes)
    dense = _rebuild_steps(machine, item, shapes)
    dense += [
        _gemm(machine, item, batch, rows, cols, "dx = dy W"),
        _gemm(machine, item, rows, batch, cols, "dW = dy^T x"),
    ]
    if len(shapes) > 1:
        dense.append(_copy(machine, item, rows * cols, "dW to core layout"))
        split = _split(shapes)
        head = math.prod(s[1] * s[2] for s in shapes[:split])
        rank = shapes[split][0]
        dense.append(_gemm(machine, item, head, rows * cols // head, rank, "dL = dW R^T"))
        dense.append(_gemm(machine, item, rank, head, rows * cols // head, "dR = L^T dW"))
        # the halves' own core gradients: GEMMs of the size of the halves
        dense.append(_gemm(machine, item, head, rank, 4 * rank, "halves' core gradients"))
        dense.append(_gemm(machine, item, 4 * rank, rank, rows * cols // head, "halves' core gradients"))
    sweep = _sweep_steps(machine, item, shapes, batch)
    size = batch * cols
    for k, (left, m, n, right) in enumerate(shapes):
        rest = size // (left * n)
        sweep.append(_gemm(machine, item, m * right, rest, left * n, f"dG_{k}"))
        sweep.append(_gemm(machine, item, left * n, m * right, rest, f"d state {k}"))
        sweep.append(_copy(machine, item, m * right * rest, f"d state {k} transposed"))
        size = m * right * rest
    return [
        Candidate("dense", tuple(dense)),
        Candidate("sweep", tuple(sweep)),
        _einsum_backward_candidate(machine, item, shapes, batch),
    ]


# --- linear plans -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearPlan:
    """How ``linear`` contracts ``x (B, N)`` with a TTM for one shape bucket, and why.

    ``forward`` / ``backward`` are the chosen candidates; ``forward_candidates`` /
    ``backward_candidates`` all that were compared. ``repr`` prints the comparison.
    """

    core_shapes: tuple[tuple[int, int, int, int], ...]
    tokens: int
    dtype: str
    device: str
    machine: Machine
    forward: Candidate
    backward: Candidate
    forward_candidates: tuple[Candidate, ...]
    backward_candidates: tuple[Candidate, ...]
    autotuned: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return (math.prod(s[1] for s in self.core_shapes), math.prod(s[2] for s in self.core_shapes))

    def _why(self, chosen: Candidate, others: Sequence[Candidate]) -> str:
        rivals = [c for c in others if c is not chosen]
        basis = "measured" if self.autotuned else "modelled"
        parts = [
            f"{c.strategy} {c.seconds / chosen.seconds:.2f}x slower"
            + (f" despite {chosen.flops / max(c.flops, 1):.2f}x the FLOPs" if c.flops < chosen.flops else "")
            for c in rivals
        ]
        return f"{chosen.strategy} wins ({basis}): " + ", ".join(parts)

    def __repr__(self) -> str:
        rows, cols = self.shape
        lines = [
            f"LinearPlan: x ({self.tokens}, {cols}) @ W.T, W ({rows}, {cols}) from cores "
            f"{list(self.core_shapes)}",
            f"  {self.dtype} on {self.device}; tokens bucketed to {self.tokens}; "
            f"{'autotuned' if self.autotuned else 'cost model'} ({self.machine.name} roofline)",
            "forward candidates:",
            *(c._row() for c in self.forward_candidates),
            f"  -> {self._why(self.forward, self.forward_candidates)}",
            "backward candidates:",
            *(c._row() for c in self.backward_candidates),
            f"  -> {self._why(self.backward, self.backward_candidates)}",
            f"chosen forward steps ({self.forward.strategy}"
            + (f", path {list(self.forward.path)}" if self.forward.path else "")
            + "):",
            *(f"    {s.what}" for s in self.forward.steps),
        ]
        return "\n".join(lines)


def token_bucket(tokens: int) -> int:
    """``tokens`` rounded up to a power of two (at least 1)."""
    return 1 << max(int(tokens) - 1, 0).bit_length()


def _describe_dtype(dtype: Any) -> tuple[str, int]:
    text = str(dtype).replace("torch.", "")
    item = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}.get(text, 4)
    return text, item


def plan_linear(
    x_shape: Sequence[int], cores: Sequence[Any], *, dtype: Any = None, device: Any = "cpu", backend: str = ""
) -> LinearPlan:
    """The cached plan for ``linear`` on ``x`` of ``x_shape`` (``(..., N)``) and TTM ``cores``.

    ``cores`` are arrays or their shapes ``(r, m, n, r')``; ``dtype`` defaults to the cores'. The rows
    of ``x`` are bucketed (:func:`token_bucket`). Cost: one cost-model evaluation per new bucket.
    """
    shapes = _shapes_of(cores)
    if dtype is None:
        dtype = "float32" if isinstance(cores[0], tuple) else cores[0].dtype
    dtype_text, item = _describe_dtype(dtype)
    tokens = math.prod(int(s) for s in x_shape[:-1]) if len(x_shape) > 1 else 1
    bucket = token_bucket(tokens)
    device_text = str(device)
    key = ("linear", shapes, dtype_text, backend, device_text, bucket)
    plan = _lookup(key)
    if plan is not None:
        return plan
    machine = Machine.for_device(device_text, item)
    forward = _forward_candidates(machine, item, shapes, bucket)
    backward = _backward_candidates(machine, item, shapes, bucket)
    plan = LinearPlan(
        shapes,
        bucket,
        dtype_text,
        device_text,
        machine,
        min(forward, key=lambda c: c.seconds),
        min(backward, key=lambda c: c.seconds),
        tuple(forward),
        tuple(backward),
    )
    return _store(key, plan)


def linear_key(plan: LinearPlan, backend: str) -> tuple[Any, ...]:
    return ("linear", plan.core_shapes, plan.dtype, backend, plan.device, plan.tokens)


def store_tuned(
    plan: LinearPlan, backend: str, forward_times: Sequence[float], backward_times: Sequence[float]
) -> LinearPlan:
    """Replace the cached plan by one chosen from measured times (same order as the candidates)."""
    forward = tuple(replace(c, measured=t) for c, t in zip(plan.forward_candidates, forward_times))
    backward = tuple(replace(c, measured=t) for c, t in zip(plan.backward_candidates, backward_times))
    tuned = replace(
        plan,
        forward=min(forward, key=lambda c: c.seconds),
        backward=min(backward, key=lambda c: c.seconds),
        forward_candidates=forward,
        backward_candidates=backward,
        autotuned=True,
    )
    return _store(linear_key(plan, backend), tuned, count=False)


def explain(x_shape: Any, w: Any, *more: Any, optimize: Any = None) -> Any:
    """How tensornet contracts a network, as a plan whose ``repr`` is a readable cost table.

    ``explain(x_shape, W)`` for ``linear(x, W)`` (``x_shape`` a shape or the input array, ``W`` a TTM
    or a list of its core shapes): the candidates compared, their FLOPs, bytes moved, largest
    intermediate and modelled (or measured) time, and why the chosen one won. ``explain(equation, *shapes)`` for any einsum network: the
    ``opt_einsum`` path and its cost.
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
