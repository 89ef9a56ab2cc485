"""Shapes of a TT layer: factor shapes of its features, its core shapes and its ranks' useful maxima."""

from __future__ import annotations

import math
from typing import Any

from tensornet import _backend, _checks
from tensornet import shapes as _shapes

__all__ = ["RankClipWarning", "clip_ranks", "core_shapes", "padded_factorization", "resolve_shapes"]

CoreShape = tuple[int, int, int, int]


class RankClipWarning(UserWarning):
    """A requested TT rank exceeded its useful maximum and was lowered; the message gives both."""


def padded_factorization(n: int, ncores: int) -> tuple[int, ...]:
    """The factors of the smallest ``n' >= n`` whose factorisation into ``ncores`` factors is balanced.

    Balanced: no factor above ``1.25 * n^(1/d)``. GPT-2's 50,257 tokens become 50,310 = 30 x 39 x 43 for
    d = 3.

    Cost: ``O(sqrt(n))`` per candidate; the gap to the next balanced size is small (a few hundred at most).
    """
    if ncores == 1:
        return (n,)
    bound = max(2, math.ceil(1.25 * n ** (1.0 / ncores)))
    candidate = n
    while True:
        factors = _shapes.factorize(candidate, ncores)
        if max(factors) <= bound:
            return factors
        candidate += 1


def resolve_shapes(
    fn: str,
    rows: int,
    cols: int,
    row_shape: Any,
    col_shape: Any,
    ncores: int,
    names: tuple[str, str, str, str],
    *,
    pad_rows: bool = False,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(row_shape, col_shape)`` for a ``(rows, cols)`` weight, ordered like ``nn.Linear.weight``.

    Given shapes are checked; a missing one is factorised with :func:`tensornet.shapes.factorize` into as
    many cores as the given one (or ``ncores``).

    Parameters
    ----------
    fn : str
        The calling function, for messages.
    rows, cols : int
        The weight's size, ``(out_features, in_features)`` or ``(num_embeddings, embedding_dim)``.
    row_shape, col_shape : sequence of int or None
    ncores : int
        Cores when neither shape is given.
    names : (str, str, str, str)
        Row feature name, col feature name, row shape name, col shape name, for messages.
    pad_rows : bool
        The row shape may multiply to more than ``rows`` (an embedding's padded vocabulary).

    Returns
    -------
    (tuple of int, tuple of int)

    Raises
    ------
    TypeError, ValueError
        Shapes that are not sequences of positive ints, of different lengths, or whose products differ
        from the sizes.
    """
    row_feat, col_feat, row_name, col_name = names
    given_rows = None if row_shape is None else _checks.check_shape(fn, row_name, row_shape)
    given_cols = None if col_shape is None else _checks.check_shape(fn, col_name, col_shape)
    d = len(given_rows) if given_rows is not None else len(given_cols) if given_cols is not None else ncores
    if given_rows is None:
        given_rows = padded_factorization(rows, d) if pad_rows else _shapes.factorize(rows, d)
    if given_cols is None:
        given_cols = _shapes.factorize(cols, d)
    _checks.check_same_length(fn, (row_name, col_name), given_rows, given_cols)
    if not pad_rows:
        _checks.check_product(fn, row_name, given_rows, rows, f"{row_feat} = {rows}")
    elif math.prod(given_rows) < rows:
        raise ValueError(
            f"{fn}: {row_name} {given_rows} multiplies to {math.prod(given_rows)} < {row_feat} = {rows}; "
            f"it must cover every row (a larger product pads the table)"
        )
    _checks.check_product(fn, col_name, given_cols, cols, f"{col_feat} = {cols}")
    return given_rows, given_cols


def clip_ranks(
    fn: str,
    bonds: tuple[int, ...],
    row_shape: tuple[int, ...],
    col_shape: tuple[int, ...],
) -> tuple[int, ...]:
    """Each bond rank lowered to its useful maximum ``min(prod_{j<=k} m_j n_j, prod_{j>k} m_j n_j)``.

    A :class:`RankClipWarning` names every clipped bond.
    """
    useful = _shapes.useful_ranks([m * n for m, n in zip(row_shape, col_shape)])
    clipped = tuple(min(r, u) for r, u in zip(bonds, useful))
    if clipped != bonds:
        where = ", ".join(
            f"bond {k + 1}: {r} -> {c}" for k, (r, c) in enumerate(zip(bonds, clipped)) if r != c
        )
        _backend.warn(
            f"{fn}: ranks {(1, *bonds, 1)} exceed their useful maximum {(1, *useful, 1)} for row_shape "
            f"{row_shape} x col_shape {col_shape} (larger ranks add parameters, not expressiveness); "
            f"clipped ({where}). Pass clip_rank=False to keep them.",
            RankClipWarning,
        )
    return clipped


def core_shapes(
    row_shape: tuple[int, ...], col_shape: tuple[int, ...], bonds: tuple[int, ...]
) -> list[CoreShape]:
    """TTM core shapes ``(r_{k-1}, m_k, n_k, r_k)`` for the bond ranks ``bonds``."""
    ranks = (1, *bonds, 1)
    return [(ranks[k], m, n, ranks[k + 1]) for k, (m, n) in enumerate(zip(row_shape, col_shape))]
