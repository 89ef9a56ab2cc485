"""The one place that turns TTM cores into TT cores and back.

A TTM core ``(r_{k-1}, m_k, n_k, r_k)`` is a TT core ``(r_{k-1}, m_k n_k, r_k)`` over the merged mode
``p_k = m_k n_k`` (C order: the row index varies slowest), so every TT algorithm that acts core by core
(sums, products, norms, rounding, adjoints) runs on TTMs through these reshapes, which never copy.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _backend as B
from ._backend import Array


def tt_core_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(r, p, r')`` of a TT core shape ``(r, n, r')`` or a TTM core shape ``(r, m, n, r')`` (``p = m n``)."""
    size = 1
    for v in shape[1:-1]:  # a loop, not math.prod of a generator: dynamo traces it
        size *= int(v)
    return (int(shape[0]), size, int(shape[-1]))


def tt_layout(cores: Sequence[Array]) -> list[Array]:
    """The cores as TT cores ``(r, p, r')``: TTM cores with their two modes merged, TT cores as they are."""
    if cores[0].ndim == 3:
        return list(cores)
    xp = B.namespace(*cores)
    return [xp.reshape(c, tt_core_shape(c.shape)) for c in cores]


def reshape_each(arrays: Sequence[Array], shapes: Sequence[Sequence[int]]) -> list[Array]:
    """``arrays[k]`` reshaped to ``shapes[k]`` (e.g. TT-layout gradients back to their cores' shapes)."""
    xp = B.namespace(*arrays)
    return [xp.reshape(a, tuple(int(v) for v in s)) for a, s in zip(arrays, shapes)]


def ttm_layout(flat: Sequence[Array], row_shape: Sequence[int], col_shape: Sequence[int]) -> list[Array]:
    """TT-layout cores ``(r, m n, r')`` split back into TTM cores ``(r, m, n, r')``."""
    shapes = [(int(c.shape[0]), m, n, int(c.shape[-1])) for c, m, n in zip(flat, row_shape, col_shape)]
    return reshape_each(flat, shapes)
