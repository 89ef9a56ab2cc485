"""Einsum networks: paths found once per (equation, operand shapes) by ``opt_einsum``, compiled once.

The private home of :mod:`tensornet.contract`'s network functions.

The path is ``optimal`` for few operands, ``dp`` for moderate and ``greedy`` for many. Paths depend on
shapes only, so these plans are shared by every backend, dtype and device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import opt_einsum as oe

from ._backend import Array


class CacheInfo(NamedTuple):
    """``misses`` is the number of planner invocations; ``currsize`` the number of cached plans."""

    hits: int
    misses: int
    currsize: int


class PlanCache:
    """A bounded cache of plans with hit and miss counts (the oldest plan goes first when it is full)."""

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self.plans: dict[tuple[Any, ...], Any] = {}
        self.hits = self.misses = 0

    def get(self, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        """The plan stored under ``key``, or ``make()`` stored there (a miss: one planner invocation)."""
        plan = self.plans.get(key)
        if plan is not None:
            self.hits += 1
            return plan
        self.misses += 1
        if len(self.plans) >= self.limit:
            self.plans.pop(next(iter(self.plans)))
        plan = self.plans[key] = make()
        return plan

    def info(self) -> CacheInfo:
        """Hit and miss counts and the number of plans held."""
        return CacheInfo(self.hits, self.misses, len(self.plans))

    def clear(self) -> None:
        """Forget every plan and reset the counters."""
        self.plans.clear()
        self.hits = self.misses = 0


_PLANS = PlanCache()


def symbols(count: int, start: int = 0) -> list[str]:
    """``count`` distinct einsum subscripts (from ``opt_einsum.get_symbol``)."""
    return [oe.get_symbol(i) for i in range(start, start + count)]


def optimizer_for(num_operands: int) -> str:
    """The ``opt_einsum`` optimizer for a network of ``num_operands`` operands."""
    if num_operands <= 4:
        return "optimal"
    if num_operands <= 12:
        return "dp"
    return "greedy"


def cache_info() -> CacheInfo:
    """Hit/miss counts of the network plan cache (a miss is one path search)."""
    return _PLANS.info()


def cache_clear() -> None:
    """Forget every network plan and reset the counters (plans are rebuilt on next use)."""
    _PLANS.clear()


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
    """The cached plan for ``equation`` on operands of ``shapes``.

    A path given as a list of pairs is used as is.
    """
    key_shapes = tuple(tuple(int(n) for n in s) for s in shapes)
    optimize = optimize if optimize is not None else optimizer_for(len(shapes))
    hashable = tuple(map(tuple, optimize)) if isinstance(optimize, (list, tuple)) else optimize
    key = ("network", equation, key_shapes, hashable)

    def make() -> NetworkPlan:
        expr = oe.contract_expression(equation, *key_shapes, optimize=optimize)
        return NetworkPlan(equation, key_shapes, optimize, expr)

    return _PLANS.get(key, make)


def expression(equation: str, *shapes: tuple[int, ...], optimize: Any = None) -> Any:
    """The compiled (cached) ``opt_einsum`` expression for ``equation`` on operands of ``shapes``."""
    return plan_network(equation, *shapes, optimize=optimize).expression


def path_calls(equation: str, path: tuple[tuple[int, ...], ...]) -> tuple[tuple[tuple[int, ...], str], ...]:
    """The calls :func:`run_path` makes for ``equation`` along ``path``: ``(operand positions, subscripts)``.

    Positions index the working list (the taken operands are removed, the new intermediate is appended last);
    a last call with one operand reorders the result's modes when the pairs leave them in another order.
    A pure function of its arguments (memoised), so a run does no string work and the cost model can charge
    exactly these calls. Under ``torch.compile`` it runs once at trace time and its result is a constant.
    """
    return _path_calls(equation, path)


# what torch.compiler.assume_constant_result sets (without importing torch here): dynamo calls the function
# while tracing and bakes in its result, instead of tracing the string and list work inside it
setattr(path_calls, "_dynamo_marked_constant", True)  # noqa: B010


@functools.lru_cache(maxsize=4096)
def _path_calls(equation: str, path: tuple[tuple[int, ...], ...]) -> tuple[tuple[tuple[int, ...], str], ...]:
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    calls: list[tuple[tuple[int, ...], str]] = []
    for step in path:
        positions = tuple(sorted(step, reverse=True))
        taken = [terms.pop(i) for i in positions]
        keep = set("".join(terms)) | set(output)
        seen = "".join(dict.fromkeys(c for term in taken for c in term))
        result = "".join(c for c in seen if c in keep)
        calls.append((positions, ",".join(taken) + "->" + result))
        terms.append(result)
    if len(terms) != 1:
        raise ValueError(f"run_path: the path leaves {len(terms)} operands of {equation!r}, expected 1")
    if terms[0] != output:
        calls.append(((0,), terms[0] + "->" + output))
    return tuple(calls)


def run_path(equation: str, path: Sequence[Sequence[int]], operands: Sequence[Any], contract_fn: Any) -> Any:
    """Execute ``equation`` pairwise along an ``opt_einsum`` ``path``, one ``contract_fn`` call per step.

    Each new intermediate is appended last; ``contract_fn(subscripts, *arrays)`` is e.g. ``torch.einsum``.
    The calls are ``path_calls``; the working list is rebuilt, never mutated, so ``torch.compile``
    traces a run without graph breaks.
    """
    arrays = list(operands)
    for positions, subscripts in path_calls(equation, tuple(tuple(int(i) for i in step) for step in path)):
        result = contract_fn(subscripts, *[arrays[i] for i in positions])
        arrays = [a for i, a in enumerate(arrays) if i not in positions] + [result]
    return arrays[0]


def einsum(equation: str, *operands: Array, optimize: Any = None) -> Array:
    """Contract ``operands`` by ``equation`` with a cached, path-optimised expression."""
    return expression(equation, *(tuple(o.shape) for o in operands), optimize=optimize)(*operands)
