"""Regrouping the row and column modes of a TTM together (the TTM case of :func:`tensornet.reshape`).

A TTM's core k acts on row mode m_k and column mode n_k at once, so new cores must cut the rows and the
columns at the same places: new core j's row and column modes are products of the same consecutive old
cores (or factors of one old core, for both). The route: every old core becomes a TT core over the
interleaved pieces ``(a_1 c_1)(a_2 c_2)...`` of its modes (a permutation), the TT is split into those
pieces (:func:`tensornet.reshape`, truncated with ``eps``), and consecutive pieces are merged into the new
cores (a contraction and a permutation, exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import _backend as B
from . import _checks
from ._backend import Array
from .tt import TT, TTM


def parse_shapes(fn: str, a: TTM, shape: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(row_shape, col_shape)`` from ``shape``: a pair of shapes, or one shape for a square TTM."""
    pair = isinstance(shape, Sequence) and len(shape) == 2 and all(isinstance(s, Sequence) for s in shape)
    if pair:
        rows = _checks.check_shape(fn, "shape[0] (the row shape)", shape[0], scalar=True)
        cols = _checks.check_shape(fn, "shape[1] (the column shape)", shape[1], scalar=True)
    else:
        rows = cols = _checks.check_shape(fn, "shape", shape, scalar=True)
        if a.row_shape != a.col_shape:
            raise ValueError(
                f"{fn}: a TTM with row_shape {a.row_shape} != col_shape {a.col_shape} needs shape=(row_shape, "
                f"col_shape), a pair of shapes; one shape {rows} applies to square TTMs only"
            )
    if len(rows) != len(cols):
        raise ValueError(
            f"{fn}: the new row shape {rows} has {len(rows)} modes but the column shape {cols} has {len(cols)}; "
            "a TTM has one row and one column mode per core (use size 1 where a core has no row or column)"
        )
    for name, new, old in (("row", rows, a.row_shape), ("column", cols, a.col_shape)):
        if math.prod(new) != math.prod(old):
            raise ValueError(
                f"{fn}: the new {name} shape {new} has {math.prod(new)} entries but the TTM's {name} shape {old} "
                f"has {math.prod(old)}"
            )
    return rows, cols


def _divide(fn: str, left: int, right: int, what: str) -> int:
    """The smaller of two sizes of which one divides the other (the next piece), or a clear error."""
    if right % left == 0:
        return left
    if left % right == 0:
        return right
    raise ValueError(
        f"{fn}: the {what} modes are not a regrouping in C order: a remaining size {left} of an old core "
        f"against {right} of a new one, neither dividing the other"
    )


def pieces(
    fn: str, old: tuple[tuple[int, int], ...], new: tuple[tuple[int, int], ...]
) -> tuple[list[list[tuple[int, int]]], list[int]]:
    """The pieces ``(a, c)`` of each old core and how many consecutive pieces make each new core.

    A piece ends where an old core or a new core ends, for its rows and its columns at once.
    """
    per_old: list[list[tuple[int, int]]] = [[] for _ in old]
    counts = [0] * len(new)
    i = j = 0
    ro, co = old[0]
    rn, cn = new[0]
    while i < len(old) and j < len(new):
        a, c = _divide(fn, ro, rn, "row"), _divide(fn, co, cn, "column")
        if not ((a == ro and c == co) or (a == rn and c == cn)):
            raise ValueError(
                f"{fn}: new core {j} cuts the rows and the columns of old core {i} at different places (row piece "
                f"{a} of {ro}, column piece {c} of {co}); a TTM core's row and column modes must be split "
                "and merged together"
            )
        per_old[i].append((a, c))
        counts[j] += 1
        ro, co, rn, cn = ro // a, co // c, rn // a, cn // c
        if ro == co == 1:
            i += 1
            ro, co = old[i] if i < len(old) else (1, 1)
        if rn == cn == 1:
            j += 1
            rn, cn = new[j] if j < len(new) else (1, 1)
    for k in range(i, len(old)):  # trailing (1, 1) cores join the last new core
        per_old[k].append((1, 1))
        counts[-1] += 1
    for k in range(j, len(new)):  # trailing (1, 1) new cores: unit pieces on the last old core
        per_old[-1].append((1, 1))
        counts[k] += 1
    return per_old, counts


def interleave(core: Array, parts: list[tuple[int, int]]) -> Array:
    """Old TTM core ``(R, m, n, R')`` as a TT core over the interleaved pieces ``(R, a_1 c_1 a_2 c_2 .., R')``."""
    xp = B.namespace(core)
    r, m, n, r2 = (int(s) for s in core.shape)
    s = len(parts)
    t = xp.reshape(core, (r, *(a for a, _ in parts), *(c for _, c in parts), r2))
    order = (0, *(axis for k in range(s) for axis in (1 + k, 1 + s + k)), 2 * s + 1)
    return xp.reshape(xp.permute_dims(t, order), (r, m * n, r2))


def merge(cores: list[Array], parts: list[tuple[int, int]]) -> Array:
    """Consecutive TT piece cores ``(r, a_k c_k, r')`` merged into one TTM core ``(r, prod a, prod c, r')``."""
    xp = B.namespace(*cores)
    t = cores[0]
    for core in cores[1:]:
        left, size, _ = (int(v) for v in t.shape)
        r, n, r2 = (int(v) for v in core.shape)
        t = xp.reshape(
            xp.matmul(xp.reshape(t, (left * size, r)), xp.reshape(core, (r, n * r2))), (left, size * n, r2)
        )
    s = len(parts)
    r, _, r2 = (int(v) for v in t.shape)
    t = xp.reshape(t, (r, *(v for part in parts for v in part), r2))
    order = (0, *(1 + 2 * k for k in range(s)), *(2 + 2 * k for k in range(s)), 2 * s + 1)
    rows, cols = math.prod(a for a, _ in parts), math.prod(c for _, c in parts)
    return xp.reshape(xp.permute_dims(t, order), (r, rows, cols, r2))


def reshape_ttm(a: TTM, shape: Any, eps: float | None, tt_reshape: Any) -> TTM:
    """The TTM ``a`` with row and column modes regrouped to ``shape`` (see :func:`tensornet.reshape`)."""
    fn = "reshape"
    rows, cols = parse_shapes(fn, a, shape)
    old = tuple(zip(a.row_shape, a.col_shape))
    new = tuple(zip(rows, cols))
    per_old, counts = pieces(fn, old, new)
    flat = TT._trusted([interleave(core, parts) for core, parts in zip(a.cores, per_old)])
    sizes = [a_ * c for parts in per_old for a_, c in parts]
    split = tt_reshape(flat, sizes, eps=eps)
    flat_parts = [part for parts in per_old for part in parts]
    cores, start = [], 0
    for count in counts:
        cores.append(merge(list(split.cores[start : start + count]), flat_parts[start : start + count]))
        start += count
    return TTM._trusted(cores)
