"""Trains written down from their definition: zeros, ones, a delta, the identity and the Laplacian.

Each has exact cores of rank 1 (the Laplacian: rank 2), built as float64 on the host and placed like
:func:`tensornet.random_tt` places its cores: ``like`` (an array, TT or TTM) gives the backend, device and
dtype; ``dtype`` overrides the dtype (default float64 on numpy).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _backend as B
from . import _checks
from ._place import check_memory, place, target_itemsize
from .tt import TT, TTM

__all__ = ["delta", "eye", "laplacian", "ones", "zeros"]


def zeros(shape: int | Sequence[int], *, like: Any = None, dtype: Any = None) -> TT:
    """The zero tensor of ``shape`` as a TT of rank 1.

    Parameters
    ----------
    shape : int or sequence of int
        Mode sizes ``(n_1, ..., n_d)``.
    like : array, TT or TTM, optional
        Whose backend and device (and dtype, unless ``dtype`` is given) the cores get.
    dtype : optional
        The cores' dtype (default: ``like``'s, or float64).

    Returns
    -------
    TT

    Raises
    ------
    TypeError
        A shape that is not a non-empty sequence of ints, a ``like`` that is not an array/TT/TTM, a
        dtype that is not real floating point.
    ValueError
        Sizes below 1.

    Cost: ``O(d n)``.
    """
    shape = _checks.check_shape("zeros", "shape", shape, scalar=True)
    _check_memory("zeros", list(shape), like, dtype)
    return TT(place("zeros", [np.zeros((1, n, 1)) for n in shape], like, dtype))


def ones(shape: int | Sequence[int], *, like: Any = None, dtype: Any = None) -> TT:
    """The all-ones tensor of ``shape`` as a TT of rank 1 (every core all ones).

    Parameters, returns and errors as :func:`zeros`. Cost: ``O(d n)``.
    """
    shape = _checks.check_shape("ones", "shape", shape, scalar=True)
    _check_memory("ones", list(shape), like, dtype)
    return TT(place("ones", [np.ones((1, n, 1)) for n in shape], like, dtype))


def delta(shape: int | Sequence[int], index: Sequence[int], *, like: Any = None, dtype: Any = None) -> TT:
    """The tensor that is 1 at ``index`` and 0 elsewhere, as a TT of rank 1.

    Parameters
    ----------
    shape, like, dtype
        As :func:`zeros`.
    index : sequence of int
        One entry per mode; negative entries count from the end, as in numpy.

    Returns
    -------
    TT

    Raises
    ------
    TypeError
        An index that is not a sequence of ints; and as :func:`zeros`.
    ValueError
        An index of the wrong length or out of range; and as :func:`zeros`.

    Notes
    -----
    ``delta[i_1..i_d] = prod_k [i_k = index_k]``, so core k is the unit vector ``e_{index_k}``.

    Cost: ``O(d n)``.
    """
    shape = _checks.check_shape("delta", "shape", shape, scalar=True)
    _check_memory("delta", list(shape), like, dtype)
    if B.is_array(index) or not isinstance(index, Sequence) or isinstance(index, str):
        raise TypeError(f"delta: index must be a tuple of {len(shape)} ints, got {type(index).__name__}")
    if len(index) != len(shape):
        raise ValueError(
            f"delta: index {tuple(index)} has {len(index)} entries but shape {shape} has {len(shape)} modes"
        )
    cores: list[np.ndarray] = []
    for k, (i, n) in enumerate(zip(index, shape)):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"delta: index[{k}] = {i!r} is not an int")
        if not -n <= int(i) < n:
            raise ValueError(f"delta: index[{k}] = {i} is out of range for mode {k} of size {n}")
        core = np.zeros((1, n, 1))
        core[0, int(i) % n, 0] = 1.0
        cores.append(core)
    return TT(place("delta", cores, like, dtype))


def eye(shape: int | Sequence[int], *, like: Any = None, dtype: Any = None) -> TTM:
    """The identity matrix of size ``prod(shape)`` as a TTM of rank 1 (``row_shape = col_shape = shape``).

    Parameters, returns and errors as :func:`zeros` (a TTM).

    Notes
    -----
    ``I = I_{n_1} (x) ... (x) I_{n_d}``: core k is the identity of size ``n_k``.

    Cost: ``O(d n^2)``.
    """
    shape = _checks.check_shape("eye", "shape", shape, scalar=True)
    _check_memory("eye", [n * n for n in shape], like, dtype)
    return TTM(place("eye", [np.eye(n).reshape(1, n, n, 1) for n in shape], like, dtype))


def _check_memory(fn: str, sizes: list[int], like: Any, dtype: Any, temporaries: int = 1) -> None:
    """Refuse shapes whose cores (``sizes`` entries each) cannot be built in the memory available."""
    check_memory(fn, sizes, target_itemsize(fn, like, dtype), temporaries=temporaries)


def _check_step(step: Any, d: int) -> list[float]:
    values = list(step) if isinstance(step, Sequence) and not isinstance(step, str) else [step] * d
    if len(values) != d:
        raise ValueError(f"laplacian: step has {len(values)} entries but the grid has {d} modes")
    for k, h in enumerate(values):
        if isinstance(h, bool) or not isinstance(h, numbers.Real):
            raise TypeError(f"laplacian: step[{k}] = {h!r} is not a real number")
        if not (math.isfinite(h) and float(h) > 0):
            raise ValueError(f"laplacian: step[{k}] = {h} must be finite and > 0 (the grid spacing)")
    return [float(h) for h in values]


def laplacian(
    shape: int | Sequence[int], *, step: float | Sequence[float] = 1.0, like: Any = None, dtype: Any = None
) -> TTM:
    """The d-dimensional second-difference operator with Dirichlet boundaries, as a TTM of rank 2.

    Parameters
    ----------
    shape, like, dtype
        As :func:`zeros`; ``row_shape = col_shape = shape``.
    step : float or sequence of float
        The grid spacing ``h_k`` of each mode (one for all, or one per mode), finite and > 0.

    Returns
    -------
    TTM

    Raises
    ------
    TypeError
        A step that is not a real number; and as :func:`zeros`.
    ValueError
        A step that is not positive and finite, or not one per mode; and as :func:`zeros`.

    Notes
    -----
    ``L = sum_k I (x) ... (x) D_k (x) ... (x) I`` with ``D_k = tridiag(1, -2, 1) / h_k^2`` of size
    ``n_k`` (``h_k = step[k]``): ``(L u)[i] = sum_k (u[i - e_k] - 2 u[i] + u[i + e_k]) / h_k^2`` with
    ``u = 0`` outside the grid, the standard finite-difference Laplacian on the interior points of a
    box (negative definite; ``-L`` is the positive-definite form TT-Toolbox's ``tt_qlaplace_dd`` uses).
    Its TT rank is 2 (Kazeev & Khoromskij 2012, "Low-rank explicit QTT representation of the Laplace
    operator and its inverse"): bond state 1 means "no ``D`` placed yet", state 0 "``D`` placed", so
    core k is ``[[I, 0], [D_k, I]]`` between the first ``[D_1, I]`` and the last ``[I; D_d]``.
    One mode gives ``D_1`` (rank 1).

    Cost: ``O(d n^2)``.
    """
    shape = _checks.check_shape("laplacian", "shape", shape, scalar=True)
    steps = _check_step(step, len(shape))
    d = len(shape)
    # 4 n^2 per inner core, and the tridiagonal and identity temporaries of n^2 each
    _check_memory("laplacian", [4 * n * n for n in shape], like, dtype, temporaries=2)
    cores = []
    for k, (n, h) in enumerate(zip(shape, steps)):
        # 1 / h^2 is formed as 1 / h / h: a Python float h**2 raises OverflowError for h > 1e154
        scale = 1.0 / h / h
        if not np.finfo(np.float64).tiny <= scale <= np.finfo(np.float64).max / 4:
            raise ValueError(
                f"laplacian: step[{k}] = {h} gives entries of size 1 / h^2 = {scale:.3g}, outside float64's "
                "normal range; build it with step=1 and scale by 1 / h^2 where the values stay representable "
                "(e.g. multiply the right-hand side by h^2 instead)"
            )
        second = (
            np.diag(np.full(n - 1, 1.0), -1) - 2.0 * np.eye(n) + np.diag(np.full(n - 1, 1.0), 1)
        ) * scale
        identity = np.eye(n)
        if d == 1:
            cores.append(second.reshape(1, n, n, 1))
        elif k == 0:
            cores.append(np.stack([second, identity], axis=-1)[None])
        elif k == d - 1:
            cores.append(np.stack([identity, second], axis=0)[..., None])
        else:
            core = np.zeros((2, n, n, 2))
            core[0, :, :, 0] = identity
            core[1, :, :, 0] = second
            core[1, :, :, 1] = identity
            cores.append(core)
    return TTM(place("laplacian", cores, like, dtype))
