"""Indexing a TT: one entry or a slice (``t[i, :, 2]``) and many entries at once (``gather``).

Re-exported by :mod:`tensornet.ops`; ``TT.__getitem__`` is :func:`getitem`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend as B
from . import _checks, _pow2
from . import tt as _tt
from ._backend import Array
from ._einsum import einsum

__all__ = ["gather", "getitem"]


def _expand(index: Any, ncores: int) -> tuple[Any, ...]:
    """``index`` as one entry per mode: a tuple, ``...`` expanded, missing trailing modes as ``:``."""
    index = index if isinstance(index, tuple) else (index,)
    ellipses = [at for at, i in enumerate(index) if i is Ellipsis]  # identity: arrays compare elementwise
    if len(ellipses) > 1:
        raise IndexError("TT index: at most one Ellipsis (...) is allowed")
    if ellipses:
        at = ellipses[0]
        fill = ncores - (len(index) - 1)
        index = index[:at] + (slice(None),) * fill + index[at + 1 :]
    if len(index) > ncores:
        raise IndexError(f"TT index: {len(index)} indices given for a TT with {ncores} modes")
    return index + (slice(None),) * (ncores - len(index))


def _positions(core: Array, positions: Any) -> Array:
    xp = B.namespace(core)
    return xp.asarray(list(positions), dtype=xp.int64, device=B.device(core))


def _mode_index(idx: Any, k: int, n: int) -> int | slice | list[int]:
    """One mode's index as an int (pick), a slice (keep a range) or a list of positions (keep those).

    Integers are Python/numpy ints or 0-d integer arrays; positions come from a 1-D integer array or
    sequence (negative from the end) or a 1-D boolean mask of the mode's size, as numpy reads them.
    """
    if isinstance(idx, slice):
        return idx
    if _checks.is_int(idx):
        i = int(idx)
    elif B.is_array(idx) and idx.ndim == 0 and not B.is_floating(idx) and not B.is_complex(idx):
        if str(idx.dtype) in ("bool", "torch.bool"):
            raise TypeError(f"TT index: mode {k} got a 0-d boolean array; use an int, a slice or a 1-D mask")
        i = int(idx)
    elif isinstance(idx, (bool, float, complex, str, bytes)) or idx is None:
        raise TypeError(
            f"TT index: mode {k} got {type(idx).__name__} {idx!r}; use an int, a slice, ..., or one 1-D "
            "array of ints (or a boolean mask) per index"
        )
    else:
        return _positions_of(idx, k, n)
    if not -n <= i < n:
        raise IndexError(f"TT index: index {i} is out of range for mode {k} of size {n}")
    return i % n


def _positions_of(idx: Any, k: int, n: int) -> list[int]:
    """The positions a 1-D integer array / sequence or a boolean mask selects in a mode of size ``n``."""
    values = np.asarray(B.to_backend(idx, "numpy")) if B.is_array(idx) else None
    if values is None:
        try:
            values = np.asarray(idx)
        except (TypeError, ValueError):
            values = np.asarray(idx, dtype=object)
    if values.ndim != 1:
        raise IndexError(
            f"TT index: mode {k} got an array of shape {values.shape}; an index array must be 1-D (it keeps "
            "the mode with the selected positions); for entries at arbitrary multi-indices use "
            "tn.gather(t, rows) with a (k, d) array"
        )
    if values.size == 0:
        raise IndexError(
            f"TT index: the index of mode {k} (size {n}) selects nothing; a TT has no empty modes"
        )
    if values.dtype == bool:
        if values.shape[0] != n:
            raise IndexError(f"TT index: a boolean mask of mode {k} has length {values.shape[0]}, not {n}")
        selected = np.flatnonzero(values)
        if selected.size == 0:
            raise IndexError(f"TT index: the mask of mode {k} selects nothing; a TT has no empty modes")
        return [int(p) for p in selected]
    if values.dtype.kind not in "iuO" or not all(_checks.is_int(v) for v in values.tolist()):
        raise TypeError(f"TT index: the array of mode {k} must hold integers, got dtype {values.dtype}")
    positions: list[int] = []
    for v in values.tolist():  # Python ints: compared exactly, whatever the array's integer type
        if not -n <= v < n:
            raise IndexError(f"TT index: position {v} in the array of mode {k} is out of range for size {n}")
        positions.append(v % n)
    return positions


@B.exact
def getitem(x: _tt.TT, index: Any) -> Any:
    """``x[i, j, k]`` (a 0-d array), ``x[:, 2, 1:5]`` or ``x[[0, 3], :, 1]`` (a TT over the kept modes).

    Parameters
    ----------
    x : TT
    index : int, slice, ``...``, a 1-D integer array or boolean mask, or a tuple of them
        Integers pick an entry of a mode (the mode is removed), slices keep a range of it, a 1-D array of
        positions (negative from the end) or a boolean mask of the mode's size keeps those positions in
        that order (numpy's rule for a single advanced index); missing trailing modes are kept whole.

    Returns
    -------
    0-d array or TT

    Raises
    ------
    TypeError
        ``x`` not a TT, an index that is not an int, slice, ``...`` or 1-D array.
    IndexError
        An index out of range, an empty selection, too many indices, two ``...``, index arrays in more
        than one mode (numpy would pair their entries up: that is :func:`gather`) or of more than one
        dimension, an index array and integers separated by a slice (numpy would move the array's mode
        to the front).

    Notes
    -----
    The picked matrices ``G_k[:, i_k, :]`` are multiplied together and into the next kept core; an
    index array takes its positions of the core's mode.

    Cost: ``O(d r^3)`` for an entry.
    """
    _checks.check_type("getitem", x, _tt.TT, "x")
    xp = B.namespace(*x.cores)
    modes = [
        _mode_index(idx, k, int(core.shape[1]))
        for k, (core, idx) in enumerate(zip(x.cores, _expand(index, x.ncores)))
    ]
    arrays = [k for k, m in enumerate(modes) if isinstance(m, list)]
    if len(arrays) > 1:
        raise IndexError(
            f"TT index: index arrays in modes {arrays}; numpy would pair their entries up (one entry per "
            "position), which is tn.gather(t, rows) with a (k, d) array of multi-indices; a TT index takes "
            "an array in one mode only"
        )
    advanced = [k for k, m in enumerate(modes) if not isinstance(m, slice)]
    if arrays and advanced[-1] - advanced[0] + 1 != len(advanced):
        raise IndexError(
            f"TT index: an index array and integers separated by a slice (modes {advanced}): numpy would move "
            "the array's mode to the front there, while a TT keeps its modes in order; index in two steps "
            "instead, e.g. t[0][:, [1, 2]] for t[0, :, [1, 2]]"
        )
    kept: list[Array] = []
    pending = None  # product of the picked (r x r') matrices not yet absorbed
    for k, (core, idx) in enumerate(zip(x.cores, modes)):
        if isinstance(idx, int):
            matrix = core[:, idx, :]
            pending = matrix if pending is None else pending @ matrix
            continue
        piece = (
            _sliced(core, idx, k) if isinstance(idx, slice) else xp.take(core, _positions(core, idx), axis=1)
        )
        if pending is not None:
            piece, pending = einsum("ab,bnc->anc", pending, piece), None
        kept.append(piece)
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
