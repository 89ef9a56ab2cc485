"""Contraction of tensor networks through cached ``opt_einsum`` expressions.

Every contraction tensornet performs goes through :func:`einsum`, which compiles an
``opt_einsum.contract_expression`` once per (equation, operand shapes) and reuses it.
The path optimiser is chosen by the number of operands: ``optimal`` for few, ``dp`` for
moderate and ``greedy`` for many operands.
"""

from __future__ import annotations

import functools
from typing import Any

import opt_einsum as oe

from ._backend import Array

__all__ = ["cache_clear", "cache_info", "einsum", "expression", "optimizer_for", "symbols"]


def symbols(count: int, start: int = 0) -> list[str]:
    """``count`` distinct einsum subscripts (from ``opt_einsum.get_symbol``)."""
    return [oe.get_symbol(i) for i in range(start, start + count)]


def optimizer_for(num_operands: int) -> str:
    if num_operands <= 4:
        return "optimal"
    if num_operands <= 12:
        return "dp"
    return "greedy"


@functools.lru_cache(maxsize=8192)
def _compiled(equation: str, shapes: tuple[tuple[int, ...], ...], optimize: str) -> Any:
    return oe.contract_expression(equation, *shapes, optimize=optimize)


def expression(equation: str, *shapes: tuple[int, ...], optimize: str | None = None) -> Any:
    """The compiled (cached) ``opt_einsum`` expression for ``equation`` on operands of ``shapes``."""
    key = tuple(tuple(int(n) for n in s) for s in shapes)
    return _compiled(equation, key, optimize or optimizer_for(len(shapes)))


def einsum(equation: str, *operands: Array, optimize: str | None = None) -> Array:
    """Contract ``operands`` by ``equation`` with a cached, path-optimised expression."""
    expr = expression(equation, *(tuple(o.shape) for o in operands), optimize=optimize)
    return expr(*operands)


def cache_info() -> Any:
    """Hit/miss statistics of the compiled-expression cache (``functools.lru_cache`` info)."""
    return _compiled.cache_info()


def cache_clear() -> None:
    """Forget every compiled expression (they are rebuilt on next use)."""
    _compiled.cache_clear()
