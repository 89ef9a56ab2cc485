"""Operations on TT and TTM trains, carried out on the cores (never through ``full()`` unless stated).

Every function validates its arguments, takes the array namespace from the cores and returns new
objects. Cost lines use d cores, mode size n (m x n for TTM), ranks r (and s for the second argument).
TTM operands are handled as TT trains over the merged modes ``m_k n_k`` wherever the operation acts
mode by mode (:mod:`tensornet._layout`).

This module holds the linear structure (sums, scaling, elementwise and Kronecker products, powers) and
re-exports the reductions (:mod:`tensornet._reduce`: ``dot``, ``norm``, ``sum``), the products
(:mod:`tensornet._products`: ``matvec``, ``matmul``, ``linear``) and indexing (:mod:`tensornet._index`).
"""

from __future__ import annotations

import builtins
import numbers
from collections.abc import Sequence
from typing import Any

from . import _backend as B
from . import _checks, _pow2, _scalars, _train_checks
from ._backend import Array
from ._einsum import einsum
from ._index import gather, getitem
from ._products import linear, matmul, matvec
from ._reduce import dot, norm, sum
from ._scalars import is_scalar
from .tt import TT, Train, TrainT

__all__ = [
    "add",
    "add_scalar",
    "conj",
    "dot",
    "full",
    "gather",
    "getitem",
    "hadamard",
    "imag",
    "is_scalar",
    "kron",
    "linear",
    "matmul",
    "matvec",
    "norm",
    "power",
    "real",
    "scale",
    "sum",
    "transpose",
]


# --- dense -----------------------------------------------------------------------------------------
@B.exact
def full(x: Train) -> Array:
    """The dense array of a train.

    Parameters
    ----------
    x : TT or TTM
        A train small enough to hold densely.

    Returns
    -------
    array
        Shape ``x.shape`` for a TT, ``(M, N)`` for a TTM.

    Raises
    ------
    TypeError
        ``x`` not a train.

    Notes
    -----
    Contracted left to right, one GEMM per core.

    Cost: ``O(r^2 prod(n))`` time and ``O(r prod(n))`` memory.
    """
    _train_checks.check_train("full", x)
    dense = _full_tt(x.cores) if isinstance(x, TT) else _full_ttm(x.cores)
    return B.copy(dense) if x.ncores == 1 else dense  # one core: a view of it, which is read-only


def _full_tt(cores: Sequence[Array]) -> Array:
    xp = B.namespace(*cores)
    shape = [int(cores[0].shape[1])]
    result = xp.reshape(cores[0], (shape[0], int(cores[0].shape[2])))
    for core in cores[1:]:
        result = einsum("ar,rbs->abs", result, core)
        shape.append(int(core.shape[1]))
        result = xp.reshape(result, (-1, int(core.shape[2])))
    return xp.reshape(result, tuple(shape))


def _full_ttm(cores: Sequence[Array]) -> Array:
    xp = B.namespace(*cores)
    result = xp.reshape(cores[0], tuple(int(n) for n in cores[0].shape[1:]))  # (m, n, r)
    rows, cols = int(cores[0].shape[1]), int(cores[0].shape[2])
    for core in cores[1:]:
        m, n = int(core.shape[1]), int(core.shape[2])
        result = einsum("MNr,rmns->MmNns", result, core)
        rows, cols = rows * m, cols * n
        result = xp.reshape(result, (rows, cols, int(core.shape[3])))
    return xp.reshape(result, (rows, cols))


# --- linear structure ------------------------------------------------------------------------------
def add(a: TrainT, b: TrainT) -> TrainT:
    """``a + b`` in TT form.

    Parameters
    ----------
    a, b : TT or TTM
        Of one type, shape, backend, dtype and device.

    Returns
    -------
    TT or TTM
        Ranks ``r + s`` (the boundary ranks stay 1); round afterwards to recompress.

    Raises
    ------
    TypeError
        Not two trains of one type, backend and dtype.
    ValueError
        Different shapes or devices.

    Notes
    -----
    Core k of the sum is ``diag(A_k, B_k)`` (the first core ``[A_1 B_1]``, the last ``[A_d; B_d]``).

    Cost: ``O(d n (r + s)^2)`` memory for the block cores.
    """
    _train_checks.check_same_structure("add", a, b)
    a, b = _train_checks.promoted(a, b)
    ca, cb = a._tt_layout(), b._tt_layout()
    xp = B.namespace(*ca, *cb)
    if len(ca) == 1:
        return a._from_tt_layout([ca[0] + cb[0]])
    cores = [xp.concat([ca[0], cb[0]], axis=2)]
    for k in range(1, len(ca) - 1):
        ra, n, ra2 = (int(s) for s in ca[k].shape)
        rb, _, rb2 = (int(s) for s in cb[k].shape)
        top = xp.concat([ca[k], xp.zeros((ra, n, rb2), dtype=a.dtype, device=a.device)], axis=2)
        bottom = xp.concat([xp.zeros((rb, n, ra2), dtype=a.dtype, device=a.device), cb[k]], axis=2)
        cores.append(xp.concat([top, bottom], axis=0))
    cores.append(xp.concat([ca[-1], cb[-1]], axis=0))
    return a._from_tt_layout(cores)


def scale(x: TrainT, alpha: Any) -> TrainT:
    """``alpha * x`` (the first core is scaled).

    Parameters
    ----------
    x : TT or TTM
    alpha : number or 0-d array
        A real scalar never changes the train's dtype or device (a torch scalar that requires grad keeps
        its graph); a complex scalar on a real train gives a complex train of its precision (as numpy).

    Returns
    -------
    TT or TTM

    Raises
    ------
    TypeError
        ``x`` not a train, ``alpha`` not a scalar of numpy or ``x``'s backend.
    ValueError
        ``alpha`` not representable as a float.

    Cost: ``O(n r)``.
    """
    _train_checks.check_train("scale", x)
    alpha = _scalars.check_scalar("scale", x, alpha)
    x = _scalars.scalar_promoted(x, alpha)
    return type(x)._trusted([x.cores[0] * alpha, *x.cores[1:]])


@B.exact
def hadamard(a: TrainT, b: TrainT) -> TrainT:
    """Elementwise product ``a * b``.

    Parameters
    ----------
    a, b : TT or TTM
        Trains of one structure and storage, as for :func:`add` (which also lists the errors).

    Returns
    -------
    TT or TTM
        Ranks ``r s``.

    Notes
    -----
    Core k is the Kronecker product of the slices: ``C_k[:, i, :] = A_k[:, i, :] (x) B_k[:, i, :]``.

    Cost: ``O(d n r^2 s^2)``.
    """
    _train_checks.check_same_structure("hadamard", a, b)
    a, b = _train_checks.promoted(a, b)
    xp = B.namespace(*a.cores)

    def product(left: list[Array], right: list[Array]) -> list[Array]:
        cores = []
        for ca, cb in zip(left, right):
            ra, n, ra2 = (int(s) for s in ca.shape)
            rb, _, rb2 = (int(s) for s in cb.shape)
            cores.append(xp.reshape(einsum("anb,cnd->acnbd", ca, cb), (ra * rb, n, ra2 * rb2)))
        return cores

    return a._from_tt_layout(_pow2.scaled_product("hadamard", a._tt_layout(), b._tt_layout(), product))


def kron(a: TrainT, b: TrainT) -> TrainT:
    """Kronecker (outer) product: the cores of ``a`` followed by those of ``b``.

    Parameters
    ----------
    a, b : TT or TTM
        Of one type, backend, dtype and device (any shapes).

    Returns
    -------
    TT or TTM
        For TT the tensor ``a[i] * b[j]`` of shape ``a.shape + b.shape``; for TTM the matrix
        ``np.kron(A, B)`` with ``row_shape = A.row_shape + B.row_shape``.

    Raises
    ------
    TypeError, ValueError
        Not two trains of one type and storage.

    Cost: none (no arithmetic).
    """
    _train_checks.check_train("kron", a, "first operand")
    _train_checks.check_train("kron", b, "second operand")
    if type(a) is not type(b):
        raise TypeError(f"kron: cannot combine a {type(a).__name__} with a {type(b).__name__}")
    _train_checks.check_same_storage("kron", a, b)
    a, b = _train_checks.promoted(a, b)
    return type(a)._trusted([*a.cores, *b.cores])


def transpose(a: TrainT, *, conjugate: bool = False) -> TrainT:
    """The transpose: of a TTM, the matrix transpose; of a TT, its modes in reverse order (numpy's ``x.T``).

    Parameters
    ----------
    a : TTM or TT
        A TTM's row and column modes are swapped core by core (``A.T``); a TT's cores are taken in reverse
        order, each transposed, so ``transpose(t)[i_1, ..., i_d] = t[i_d, ..., i_1]`` (for a QTT vector
        that is the bit reversal of its index).
    conjugate : bool
        Also conjugate the entries: the Hermitian adjoint ``A^H`` (``A.H``); no effect on real trains.

    Raises
    ------
    TypeError
        ``a`` not a train, ``conjugate`` not a bool.

    Cost: ``O(d m n r^2)`` copy (a TT: none, its cores are views).
    """
    _train_checks.check_train("transpose", a, "a")
    _checks.check_flag("transpose", "conjugate", conjugate)
    xp = B.namespace(*a.cores)
    if isinstance(a, TT):
        cores = [xp.permute_dims(c, (2, 1, 0)) for c in reversed(a.cores)]
    else:
        cores = [xp.permute_dims(c, (0, 2, 1, 3)) for c in a.cores]
    return type(a)._trusted([B.conj(c) for c in cores] if conjugate else cores)


def conj(x: TrainT) -> TrainT:
    """The complex conjugate of a train: every core conjugated (a real train is returned as it is).

    ``conj(x)[i] = conj(x[i])`` because an entry is a product of core entries. Cost: ``O(d n r^2)``.

    Raises
    ------
    TypeError
        ``x`` not a train.
    """
    _train_checks.check_train("conj", x)
    if not B.is_complex(x.cores[0]):
        return x
    return type(x)._trusted([B.conj(c) for c in x.cores])


def real(x: TrainT) -> TrainT:
    """The real part ``(x + conj(x)) / 2`` as a real train of the same precision (ranks double).

    A real train is returned as it is. Cost: ``O(d n r^2)`` memory for ranks ``2 r``; round afterwards.

    Raises
    ------
    TypeError
        ``x`` not a train.
    """
    _train_checks.check_train("real", x)
    return _part(x, imaginary=False)


def imag(x: TrainT) -> TrainT:
    """The imaginary part ``(x - conj(x)) / 2i`` as a real train of the same precision (ranks double).

    A real train gives the zero train of its shape (rank 1). Cost as :func:`real`.

    Raises
    ------
    TypeError
        ``x`` not a train.
    """
    _train_checks.check_train("imag", x)
    return _part(x, imaginary=True)


def _part(x: TrainT, *, imaginary: bool) -> TrainT:
    """The real (or imaginary) part of a train as a real train: the block cores ``[[Re, -Im], [Im, Re]]``.

    With ``G = A + i B`` per core, the product of the real 2x2-block matrices ``[[A, -B], [B, A]]`` represents
    the complex product, and its first block column holds ``(Re, Im)`` of the entry.
    """
    xp = B.namespace(*x.cores)
    flat = x._tt_layout()
    if not B.is_complex(flat[0]):
        if not imaginary:
            return x
        return x._from_tt_layout([core[:1, :, :1] * 0 for core in flat])  # the zero train at rank 1
    d = len(flat)
    cores = []
    for k, core in enumerate(flat):
        re, im = xp.real(core), xp.imag(core)
        top = xp.concat([re, -im], axis=2)
        bottom = xp.concat([im, re], axis=2)
        block = xp.concat([top, bottom], axis=0)  # (2r, n, 2r')
        if k == 0:
            block = block[:1] if not imaginary else block[1:2]  # the row of Re (or Im) of the entry
            if d == 1:
                block = block[:, :, :1]
        elif k == d - 1:
            block = block[:, :, :1]  # the first column: (Re; Im) of the suffix
        cores.append(block)
    return x._from_tt_layout(cores)


# --- scalar shifts and powers ----------------------------------------------------------------------
@B.exact
def add_scalar(x: TrainT, alpha: Any) -> TrainT:
    """``x + alpha`` entrywise (``alpha`` added to every entry).

    Parameters
    ----------
    x : TT or TTM
    alpha : real number or 0-d array
        As in :func:`scale`: never changes the train's dtype or device.

    Returns
    -------
    TT or TTM
        ``x`` plus ``alpha`` times the all-ones train: ranks grow by 1. A host number 0 returns ``x``
        itself, so Python's ``sum(trains)`` keeps the ranks of the sum.

    Raises
    ------
    TypeError, ValueError
        As :func:`scale`.

    Cost: ``O(d n (r + 1)^2)``.
    """
    _train_checks.check_train("add_scalar", x)
    alpha = _scalars.check_scalar("add_scalar", x, alpha)
    if isinstance(alpha, (float, complex)) and alpha == 0.0:
        return x
    x = _scalars.scalar_promoted(x, alpha)
    return add(x, scale(_ones_like(x), alpha))


def _ones_like(x: TrainT) -> TrainT:
    """The all-ones train of ``x``'s type, modes and storage (rank 1)."""
    xp = B.namespace(*x.cores)
    flat = x._tt_layout()
    return x._from_tt_layout([xp.ones((1, int(c.shape[1]), 1), dtype=x.dtype, device=x.device) for c in flat])


@B.exact
def power(x: TrainT, exponent: int) -> TrainT:
    """``x ** k`` entrywise for an integer ``k >= 0``.

    Parameters
    ----------
    x : TT or TTM
    exponent : int
        ``k >= 0``; for other exponents use :func:`tensornet.apply`.

    Returns
    -------
    TT or TTM
        ``k - 1`` Hadamard products, ranks ``r^k`` (``k = 0``: the all-ones train). Round afterwards to
        recompress.

    Raises
    ------
    TypeError
        A non-integer exponent.
    ValueError
        A negative exponent, or one whose ranks would not fit in this machine's memory.

    Cost: ``O(d n r^(2k))``.
    """
    _train_checks.check_train("power", x)
    if isinstance(exponent, bool) or not isinstance(exponent, numbers.Integral):
        raise TypeError(
            f"power: the exponent must be an int >= 0, got {exponent!r}; for other powers use "
            "tn.apply(lambda v: v ** p, t)"
        )
    k = int(exponent)
    if k < 0:
        raise ValueError(f"power: exponent {k} < 0; a reciprocal is not exact in TT form, use tn.apply")
    if k == 0:
        return _ones_like(x)
    _check_power_memory(x, k)
    result = x
    for _ in range(k - 1):
        result = hadamard(result, x)
    return result


def _check_power_memory(x: Train, k: int) -> None:
    ranks = x.ranks
    flat = x._tt_layout()
    entries = builtins.sum(ranks[j] ** k * int(c.shape[1]) * ranks[j + 1] ** k for j, c in enumerate(flat))
    memory = B.available_memory()
    if memory is not None and entries * int(x.cores[0].itemsize) > memory:
        raise ValueError(
            f"power: x ** {k} has ranks {tuple(r**k for r in ranks)} ({entries:,} entries), more than the "
            f"memory available; round between products (tn.round(t * t, eps=...)) or use tn.apply"
        )
