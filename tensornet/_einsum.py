"""Einsum networks: paths found once per (equation, operand shapes) by ``opt_einsum`` and compiled
expressions reused (the private home of :mod:`tensornet.contract`'s network functions).

The path is ``optimal`` for few operands, ``dp`` for moderate and ``greedy`` for many. Paths depend on
shapes only, so these plans are shared by every backend, dtype and device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import opt_einsum as oe

from ._backend import Array

_MAX_PLANS = 4096
_plans: dict[tuple[Any, ...], Any] = {}
_stats = {"hits": 0, "misses": 0}


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


def _lookup(key: tuple[Any, ...]) -> Any:
    plan = _plans.get(key)
    if plan is not None:
        _stats["hits"] += 1
    return plan


def _store(key: tuple[Any, ...], plan: Any) -> Any:
    _stats["misses"] += 1
    if len(_plans) >= _MAX_PLANS:
        _plans.pop(next(iter(_plans)))
    _plans[key] = plan
    return plan


def cache_info() -> CacheInfo:
    """Hit/miss counts of the network plan cache (a miss is one path search)."""
    return CacheInfo(_stats["hits"], _stats["misses"], len(_plans))


def cache_clear() -> None:
    """Forget every network plan and reset the counters (plans are rebuilt on next use)."""
    _plans.clear()
    _stats["hits"] = _stats["misses"] = 0


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
