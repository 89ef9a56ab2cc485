"""Regrouping the modes of a TT in C order (``reshape``): the route between a TT and its QTT.

A tensor of shape ``(1024, 1024)`` and one of shape ``(2,) * 20`` hold the same numbers in the same
C order; in TT form, going one way merges consecutive cores (exact), the other splits cores by SVDs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, overload

import numpy as np

from . import _backend as B
from . import _checks, _pow2
from ._backend import Array
from ._einsum import einsum
from ._reshape_ttm import reshape_ttm
from ._truncation import choose_rank
from .decomp import orthogonalize
from .tt import TT, TTM

__all__ = ["reshape"]


def _atoms(fn: str, old: tuple[int, ...], new: tuple[int, ...]) -> list[int]:
    """The common refinement of two shapes without size-1 modes.

    The mode sizes whose prefix products are the union of both shapes' prefix products (each must divide the
    next).
    """
    marks = sorted(set(np.cumprod(old, dtype=object).tolist()) | set(np.cumprod(new, dtype=object).tolist()))
    atoms, previous = [], 1
    for mark in marks:
        if mark % previous:
            raise ValueError(
                f"{fn}: shape {new} is not a regrouping of {old} in C order: the first modes multiply to "
                f"{previous} in one and {mark} in the other, and {previous} does not divide {mark}. Each "
                "new mode must be a product of consecutive old modes, or a factor of one (e.g. "
                "(6, 4) -> (2, 3, 4) -> (2, 12))"
            )
        atoms.append(mark // previous)
        previous = mark
    return atoms


def _groups(sizes: tuple[int, ...], atoms: list[int]) -> list[int]:
    """How many consecutive atoms make up each of ``sizes``."""
    counts, j = [], 0
    for size in sizes:
        product, count = 1, 0
        while product < size:
            product *= atoms[j]
            j += 1
            count += 1
        counts.append(count)
    return counts


@overload
def reshape(t: TT, shape: int | Sequence[int], *, eps: float | None = ...) -> TT: ...
@overload
def reshape(t: TTM, shape: Any, *, eps: float | None = ...) -> TTM: ...
@B.exact
def reshape(t: TT | TTM, shape: Any, *, eps: float | None = None) -> TT | TTM:
    """The same tensor with its modes regrouped in C order, e.g. ``(1024, 1024) <-> (2,) * 20``.

    Parameters
    ----------
    t : TT or TTM
        A TTM's row and column modes are regrouped together (a TTM to and from QTT).
    shape : int or sequence of int, or a pair of them for a TTM
        The new mode sizes. Each new mode must be a product of consecutive old modes or a factor of one
        (the shapes' prefix products must form a chain under division; modes of size 1 may be added or
        dropped anywhere). For a TTM: ``(row_shape, col_shape)``, or one shape for both when the TTM is
        square; new core j's row and column modes must come from the same old cores (or from the same
        old core, split at the same place for both).
    eps : float, optional
        Relative accuracy of the splits: ``||t - reshape(t)||_F <= eps ||t||_F``. None: exact splits.

    Returns
    -------
    TT

    Raises
    ------
    TypeError
        ``t`` not a TT or TTM, a shape that is not a sequence of positive ints, half-precision cores when
        a mode is split.
    ValueError
        Sizes whose products differ, shapes that are not regroupings of each other, a bad ``eps``; for a
        TTM, row and column shapes of different lengths or cut at different places, one shape for a
        non-square TTM.

    Notes
    -----
    Merging modes k..l contracts their cores (exact). Splitting a mode of size ``a b`` reshapes its core
    to ``(r a, b r')`` and factors it by an SVD; with ``eps`` given, the train is first right-
    orthogonalised and swept left to right, so that each split is done at the orthogonality centre and
    keeps the fewest singular values whose discarded tail is at most ``eps / sqrt(T) ||t||`` (T splits
    in all): ``||t - reshape(t)||_F <= eps ||t||_F``. Without ``eps`` splits are exact (ranks up to
    ``min(r a, b r')``). Merges never truncate; :func:`tensornet.round` recompresses further. Cores are
    divided by powers of two while working and the scale is put back, so any finite scale is safe.
    A TTM core ``(r, m, n, r')`` is the TT core ``(r, m n, r')`` with its row and column pieces interleaved
    (``m = a_1 a_2``, ``n = c_1 c_2``: mode ``(a_1 c_1)(a_2 c_2)``), split as a TT would be (same eps
    guarantee), and pieces are merged back into TTM cores (exact): e.g. the TTM of a ``1024 x 1024``
    matrix on one core becomes its QTT form with ``row_shape = col_shape = (2,) * 10``.

    Cost: ``O(d n r^3)`` for splits, ``O(r^2 N)`` for a merged mode of size N (``n = m_k n_k`` for a TTM).
    """
    if isinstance(t, TTM):
        eps = _checks.check_eps("reshape", eps)
        return reshape_ttm(t, shape, eps, reshape)
    if not isinstance(t, TT):
        raise TypeError(f"reshape: t must be a tensornet TT or TTM, got {type(t).__name__}")
    shape = _checks.check_shape("reshape", "shape", shape, scalar=True)
    eps = _checks.check_eps("reshape", eps)
    if math.prod(shape) != math.prod(t.shape):
        raise ValueError(
            f"reshape: shape {shape} has {math.prod(shape)} entries but the train's shape {t.shape} has "
            f"{math.prod(t.shape)}"
        )
    xp = B.namespace(*t.cores)
    cores, exponent = _pow2.normalized_cores(t.cores)
    cores = _drop_unit_modes(cores)
    old = tuple(int(c.shape[1]) for c in cores)
    new = tuple(n for n in shape if n > 1)
    if not new:  # a single entry: fold it into unit cores
        value = cores[0]
        cores = [xp.reshape(value, (1, 1, 1))] + [
            xp.ones((1, 1, 1), dtype=t.dtype, device=t.device) for _ in shape[1:]
        ]
        return TT._trusted(_pow2.spread(cores, exponent))
    atoms = _atoms("reshape", old, new)
    splits = [count for count in _groups(old, atoms) if count > 1]
    if splits:
        _checks.check_precision("reshape", t.dtype)
    pieces = _split(cores, _groups(old, atoms), atoms, eps, sum(count - 1 for count in splits))
    merged = _merge(pieces, _groups(new, atoms))
    return TT._trusted(_pow2.spread(_insert_unit_modes(merged, shape), exponent))


def _merge(pieces: list[Array], counts: list[int]) -> list[Array]:
    """Consecutive cores contracted into one, ``counts[k]`` of them for new core k (exact)."""
    xp = B.namespace(*pieces)
    merged, j = [], 0
    for count in counts:
        core = pieces[j]
        for piece in pieces[j + 1 : j + count]:
            r, n, _ = (int(s) for s in core.shape)
            core = xp.reshape(einsum("anb,bmc->anmc", core, piece), (r, n * int(piece.shape[1]), -1))
        merged.append(core)
        j += count
    return merged


def _drop_unit_modes(cores: list[Any]) -> list[Any]:
    """Cores of size-1 modes multiplied into the next core of size > 1 (the previous one at the end).

    A single core remains if every mode has size 1.
    """
    xp = B.namespace(*cores)
    kept: list[Any] = []
    pending = None
    for core in cores:
        if int(core.shape[1]) == 1:
            matrix = core[:, 0, :]
            pending = matrix if pending is None else pending @ matrix
            continue
        if pending is not None:
            core = einsum("ab,bnc->anc", pending, core)
            pending = None
        kept.append(core)
    if pending is not None:
        if not kept:
            return [xp.reshape(pending, (1, 1, 1))]
        kept[-1] = einsum("anb,bc->anc", kept[-1], pending)
    return kept


def _insert_unit_modes(cores: list[Any], shape: tuple[int, ...]) -> list[Any]:
    """Identity cores ``(r, 1, r)`` where ``shape`` has size-1 modes."""
    xp = B.namespace(*cores)
    out, j = [], 0
    for n in shape:
        if n > 1:
            out.append(cores[j])
            j += 1
            continue
        rank = int(cores[j - 1].shape[2]) if j > 0 else 1
        eye = xp.eye(rank, dtype=cores[0].dtype, device=B.device(cores[0]))
        out.append(xp.reshape(eye, (rank, 1, rank)))
    return out


def _split(cores: list[Any], counts: list[int], atoms: list[int], eps: float | None, total: int) -> list[Any]:
    """Each core split into ``counts[k]`` cores of the atom sizes, truncated as :func:`reshape` says."""
    xp = B.namespace(*cores)
    if total == 0:
        return cores
    threshold = 0.0
    if eps is not None:
        cores = list(orthogonalize(TT._trusted(cores), center=0).cores)
        norm = B.to_float(xp.linalg.vector_norm(cores[0]))
        threshold = eps / math.sqrt(total) * norm
    pieces: list[Any] = []
    j = 0
    carry = None  # R factor moving the orthogonality centre to the right (eps given)
    for k, core in enumerate(cores):
        if carry is not None:
            core = einsum("ab,bnc->anc", carry, core)
            carry = None
        sizes = atoms[j : j + counts[k]]
        j += counts[k]
        for size in sizes[:-1]:
            r = int(core.shape[0])
            rest = int(core.shape[1]) // size
            right = int(core.shape[2])
            u, s, vh = xp.linalg.svd(xp.reshape(core, (r * size, rest * right)), full_matrices=False)
            rank = choose_rank(s, threshold, None)[0] if eps is not None else int(s.shape[0])
            pieces.append(xp.reshape(u[:, :rank], (r, size, rank)))
            core = xp.reshape(s[:rank, None] * vh[:rank, :], (rank, rest, right))
        if eps is not None and k < len(cores) - 1:
            r, n, right = (int(s) for s in core.shape)
            q, carry = B.qr(xp.reshape(core, (r * n, right)))
            core = xp.reshape(q, (r, n, int(q.shape[1])))
        pieces.append(core)
    return pieces
