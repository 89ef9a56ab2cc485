"""Indexing a TT: one entry or a slice (``t[i, :, 2]``) and many entries at once (``gather``).

Re-exported by :mod:`tensornet.ops`; ``TT.__getitem__`` is :func:`getitem`.
"""

from __future__ import annotations

import numbers
from typing import Any

from . import _backend as B
from . import _checks, _pow2
from . import tt as _tt
from ._backend import Array
from ._einsum import einsum

__all__ = ["gather", "getitem"]


def _expand(index: Any, ncores: int) -> tuple[Any, ...]:
    """``index`` as one entry per mode: a tuple, ``...`` expanded, missing trailing modes as ``:``."""
    index = index if isinstance(index, tuple) else (index,)
    if len([i for i in index if i is Ellipsis]) > 1:
        raise IndexError("TT index: at most one Ellipsis (...) is allowed")
    if Ellipsis in index:
        at = index.index(Ellipsis)
        fill = ncores - (len(index) - 1)
        index = index[:at] + (slice(None),) * fill + index[at + 1 :]
    if len(index) > ncores:
        raise IndexError(f"TT index: {len(index)} indices given for a TT with {ncores} modes")
    return index + (slice(None),) * (ncores - len(index))


def _positions(core: Array, positions: range) -> Array:
    xp = B.namespace(core)
    return xp.asarray(list(positions), dtype=xp.int64, device=B.device(core))


@B.exact
def getitem(x: _tt.TT, index: Any) -> Any:
    """``x[i, j, k]`` (a 0-d array) or ``x[:, 2, 1:5]`` (a TT over the sliced modes).

    Parameters
    ----------
    x : TT
    index : int, slice, ``...`` or a tuple of them
        Integers pick an entry of a mode (the mode is removed), slices keep a range of it; missing
        trailing modes are kept whole.

    Returns
    -------
    0-d array or TT

    Raises
    ------
    TypeError
        ``x`` not a TT, an index that is not an int, slice or ``...`` (arrays of indices: use
        :func:`gather`).
    IndexError
        An index out of range, an empty slice, too many indices, two ``...``.

    Notes
    -----
    The picked matrices ``G_k[:, i_k, :]`` are multiplied together and into the next kept core.

    Cost: ``O(d r^3)`` for an entry.
    """
    _checks.check_type("getitem", x, _tt.TT, "x")
    xp = B.namespace(*x.cores)
    kept: list[Array] = []
    pending = None  # product of the picked (r x r') matrices not yet absorbed
    for k, (core, idx) in enumerate(zip(x.cores, _expand(index, x.ncores))):
        n = int(core.shape[1])
        if isinstance(idx, bool) or not isinstance(idx, (numbers.Integral, slice)):
            raise TypeError(
                f"TT index: mode {k} got {type(idx).__name__}; use integers, slices or ... "
                "(arrays of indices are not supported)"
            )
        if isinstance(idx, slice):
            piece = _sliced(core, idx, k)
            if pending is not None:
                piece, pending = einsum("ab,bnc->anc", pending, piece), None
            kept.append(piece)
            continue
        i = int(idx)
        if not -n <= i < n:
            raise IndexError(f"TT index: index {i} is out of range for mode {k} of size {n}")
        matrix = core[:, i % n, :]
        pending = matrix if pending is None else pending @ matrix
    if not kept:
        return xp.reshape(pending, ())
    if pending is not None:
        kept[-1] = einsum("anb,bc->anc", kept[-1], pending)
    return _tt.TT._trusted(kept)


def _sliced(core: Array, idx: slice, k: int) -> Array:
    n = int(core.shape[1])
    positions = range(*idx.indices(n))
    if len(positions) == 0:
        raise IndexError(f"TT index: slice {idx} of mode {k} (size {n}) is empty")
    if idx == slice(None):
        return core
    xp = B.namespace(core)
    return xp.take(core, _positions(core, positions), axis=1)


@B.exact
def gather(x: _tt.TT, index: Any) -> Array:
    """Many entries at once: ``x[index[j]]`` for each row of a ``(k, d)`` integer array.

    Parameters
    ----------
    x : TT
    index : (k, d) integer array (numpy, torch) or nested sequence
        One multi-index per row; negative entries count from the end.

    Returns
    -------
    array
        The ``k`` values, 1-D, on ``x``'s backend, dtype and device (differentiable with torch cores).

    Raises
    ------
    TypeError
        ``x`` not a TT, a non-integer index.
    ValueError
        An index of the wrong shape.
    IndexError
        An entry out of range.

    Notes
    -----
    Row j is ``G_1[:, i_1, :] G_2[:, i_2, :] ... G_d[:, i_d, :]``, computed for all rows together core
    by core, each running row divided by a power of two near its size (exact), so an entry is right at
    any scale of the cores (inf only when it overflows).

    Cost: ``O(k d r^2)``.
    """
    _checks.check_type("gather", x, _tt.TT, "x")
    rows = B.to_backend(_checks.index_rows("gather", index, x.shape), x.backend, device=x.device)
    xp = B.namespace(*x.cores)
    if int(rows.shape[0]) == 0:
        return xp.zeros((0,), dtype=x.dtype, device=x.device)
    cores, exponent = _pow2.normalized_cores(x.cores)
    values = xp.take(cores[0][0], rows[:, 0], axis=0)  # (k, r_1)
    for k in range(1, len(cores)):
        values = einsum("ka,akb->kb", values, xp.take(cores[k], rows[:, k], axis=1))
        e = B.exponent(xp.max(xp.abs(values), axis=1))
        values = B.scale_pow2(values, -e[:, None])
        exponent = exponent + e
    return B.scale_pow2(values[:, 0], exponent)
