"""Operations on TT and TTM trains, carried out on the cores (never through ``full()`` unless stated).

Every function validates its arguments, takes the array namespace from the cores and returns new
objects. Cost lines use d cores, mode size n (m x n for TTM), ranks r (and s for the second argument).
TTM operands are handled as TT trains over the merged modes ``m_k n_k`` wherever the operation acts
mode by mode (:mod:`tensornet._layout`).
"""

from __future__ import annotations

import builtins
import numbers
from collections.abc import Sequence
from typing import Any, overload

from . import _backend as B
from . import _checks, _linear, _pow2
from ._backend import Array
from ._checks import is_scalar
from ._einsum import einsum
from ._index import gather, getitem
from .tt import TT, TTM, Train, TrainT

__all__ = [
    "add",
    "add_scalar",
    "dot",
    "full",
    "gather",
    "getitem",
    "hadamard",
    "is_scalar",
    "kron",
    "linear",
    "matmul",
    "matvec",
    "norm",
    "power",
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
    _checks.check_train("full", x)
    return _full_tt(x.cores) if isinstance(x, TT) else _full_ttm(x.cores)


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
    _checks.check_same_structure("add", a, b)
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
    alpha : real number or 0-d array
        Never changes the train's dtype or device (a torch scalar that requires grad keeps its graph).

    Returns
    -------
    TT or TTM

    Raises
    ------
    TypeError
        ``x`` not a train, ``alpha`` not a real scalar of numpy or ``x``'s backend.
    ValueError
        ``alpha`` not representable as a float.

    Cost: ``O(n r)``.
    """
    _checks.check_train("scale", x)
    alpha = _checks.check_scalar("scale", x, alpha)
    return type(x)._trusted([x.cores[0] * alpha, *x.cores[1:]])


@B.exact
def hadamard(a: TrainT, b: TrainT) -> TrainT:
    """Elementwise product ``a * b``.

    Parameters
    ----------
    a, b : TT or TTM
        Of one type, shape, backend, dtype and device.

    Returns
    -------
    TT or TTM
        Ranks ``r s``.

    Raises
    ------
    TypeError, ValueError
        As :func:`add`.

    Notes
    -----
    Core k is the Kronecker product of the slices: ``C_k[:, i, :] = A_k[:, i, :] (x) B_k[:, i, :]``.

    Cost: ``O(d n r^2 s^2)``.
    """
    _checks.check_same_structure("hadamard", a, b)
    xp = B.namespace(*a.cores)
    cores = []
    for ca, cb in zip(a._tt_layout(), b._tt_layout()):
        ra, n, ra2 = (int(s) for s in ca.shape)
        rb, _, rb2 = (int(s) for s in cb.shape)
        cores.append(xp.reshape(einsum("anb,cnd->acnbd", ca, cb), (ra * rb, n, ra2 * rb2)))
    return a._from_tt_layout(cores)


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
    _checks.check_train("kron", a, "first operand")
    _checks.check_train("kron", b, "second operand")
    if type(a) is not type(b):
        raise TypeError(f"kron: cannot combine a {type(a).__name__} with a {type(b).__name__}")
    _checks.check_same_storage("kron", a, b)
    return type(a)._trusted([*a.cores, *b.cores])


def transpose(a: TTM) -> TTM:
    """The transposed TTM (row and column modes swapped core by core).

    Raises
    ------
    TypeError
        ``a`` not a TTM.

    Cost: ``O(d m n r^2)`` copy.
    """
    _checks.check_type("transpose", a, TTM, "a")
    xp = B.namespace(*a.cores)
    return TTM._trusted([xp.permute_dims(c, (0, 2, 1, 3)) for c in a.cores])


# --- scalars ---------------------------------------------------------------------------------------
@B.exact
def dot(a: TrainT, b: TrainT) -> Array:
    """Inner product ``<a, b> = sum(a * b)`` (Frobenius for TTM) as a 0-d array.

    Parameters
    ----------
    a, b : TT or TTM
        Of one type, shape, backend, dtype and device.

    Returns
    -------
    0-d array

    Raises
    ------
    TypeError, ValueError
        As :func:`add`.

    Notes
    -----
    ``<a, b> = L_d`` with ``L_k = sum_i A_k[:, i, :]^T L_{k-1} B_k[:, i, :]``, ``L_0 = 1``. Every core,
    and the running product after each step, is divided by a power of two (exact), so the result is
    right at any scale of the cores: the finite value whenever it is representable, ``+-inf`` when it
    overflows, 0 when it underflows; never NaN from finite cores.

    Cost: ``O(d n r s (r + s))``.
    """
    _checks.check_same_structure("dot", a, b)
    ca, ea = _pow2.normalized_cores(a._tt_layout())
    cb, eb = _pow2.normalized_cores(b._tt_layout())
    xp = B.namespace(*ca)
    start = xp.ones((1, 1), dtype=a.dtype, device=a.device)
    steps = [lambda v, x=x, y=y: einsum("ab,anc,bnd->cd", v, x, y) for x, y in zip(ca, cb)]
    return _pow2.chain(start, steps, ea + eb)


def _norm_sweep(cores: Sequence[Array]) -> Array:
    """``||x||_F`` by a left-to-right QR sweep over power-of-two-normalised cores (no gradient rules)."""
    xp = B.namespace(*cores)
    scaled, exponent = _pow2.normalized_cores(cores)
    carry = None
    for core in scaled[:-1]:
        current, e = B.normalized(core if carry is None else einsum("ab,bnc->anc", carry, core))
        exponent = exponent + e
        r, n, r2 = (int(s) for s in current.shape)
        _, carry = xp.linalg.qr(xp.reshape(current, (r * n, r2)))
    last = scaled[-1] if carry is None else einsum("ab,bnc->anc", carry, scaled[-1])
    last, e = B.normalized(last)
    return B.scale_pow2(xp.linalg.vector_norm(last), exponent + e)


def _norm_with_gradient(cores: list[Array], value: Array) -> Array:
    """``value`` (the QR sweep's norm) with the gradient ``x / ||x||`` taken through ``<x, x>``.

    With ``y = x / 2^e`` (cores scaled by constants) and ``z`` its detached copy, the normalised chain
    gives ``v = <y, z> / 2^c``, so ``<x, x> = v 2^(c + 2e)`` and ``d||x|| = d<x, x> / (2 ||x||) = (||x|| / v)
    dv``: that gradient is attached to the exact value (``v - v.detach()`` is exactly 0). At the zero
    train the gradient is 0, the subgradient torch's own norm uses.
    """
    scaled, _ = _pow2.normalized_cores(cores)
    fixed = [B.detach(c) for c in scaled]
    xp = B.namespace(*cores)
    v = xp.ones((1, 1), dtype=cores[0].dtype, device=B.device(cores[0]))
    for y, z in zip(scaled, fixed):
        v, _ = B.normalized(einsum("ab,anc,bnd->cd", v, y, z))
    v = xp.reshape(v, ())
    factor = B.detach(xp.where(v != 0, value / xp.where(v != 0, v, xp.ones_like(v)), xp.zeros_like(v)))
    return value + (v - B.detach(v)) * factor


@B.exact
def norm(x: Train) -> Array:
    """Frobenius norm as a 0-d array.

    Parameters
    ----------
    x : TT or TTM

    Returns
    -------
    0-d array
        In ``x``'s dtype (computed in float32 for float16/bfloat16 trains, which QR does not support).

    Raises
    ------
    TypeError
        ``x`` not a train.

    Notes
    -----
    A QR sweep: ``||x|| = ||R_{d-1} G_d||`` with the R factors carried left to right, accurate to working
    precision, also for differences of nearly equal trains. Cores and carries are renormalised by
    powers of two (exact), so the norm is right at any scale: finite whenever it is representable
    (e.g. float32 trains of norm 3e38), inf when it overflows. With torch cores that require grad, the
    value is the QR sweep's and the gradient ``x / ||x||`` is taken through ``<x, x>`` (:func:`dot`'s
    normalised chain); at the zero train it is 0 (a QR sweep's gradient would be NaN there).

    Cost: ``O(d n r^3)``.
    """
    _checks.check_train("norm", x)
    cores = x._tt_layout()
    if B.dtype_name(x.dtype) in ("float16", "bfloat16"):  # QR has no half-precision kernels: in float32
        wide = [B.to_backend(c, x.backend, dtype="float32") for c in cores]
        return B.to_backend(norm(x._from_tt_layout(wide)), x.backend, dtype=x.dtype)
    if not any(getattr(c, "requires_grad", False) for c in cores):
        return _norm_sweep(cores)
    return _norm_with_gradient(cores, _norm_sweep([B.detach(c) for c in cores]))


@overload
def sum(x: Train, axis: None = None) -> Array: ...
@overload
def sum(x: TT, axis: int | Sequence[int]) -> TT | Array: ...
@B.exact
def sum(x: Train, axis: int | Sequence[int] | None = None) -> TT | Array:
    """Sum of the entries over all modes, or over the modes in ``axis`` (a marginal).

    Parameters
    ----------
    x : TT or TTM
    axis : int or sequence of int, optional
        Modes of a TT to sum over (negative from the end); None sums everything (the only choice for
        a TTM).

    Returns
    -------
    0-d array or TT
        A TT over the other modes, or a 0-d array when every mode is summed.

    Raises
    ------
    TypeError
        An axis that is not an int or a sequence of ints, or one given for a TTM.
    ValueError
        An axis out of range or repeated.

    Notes
    -----
    Summing mode k replaces core k by the matrix ``sum_i G_k[:, i, :]``, which is multiplied into the next
    kept core (the previous one for trailing modes). Cores and running products are renormalised by
    powers of two like :func:`dot`: finite whenever the result is representable, never NaN from finite
    cores.

    Cost: ``O(d n r^2 + d r^3)``.
    """
    _checks.check_train("sum", x)
    if axis is not None:
        if isinstance(x, TTM):
            raise TypeError("sum: axis applies to the modes of a TT; a TTM sums all entries (axis=None)")
        axes = _checks.check_axes("sum", axis, x.ncores)
        if len(axes) < x.ncores:
            return _sum_modes(x, axes)
    cores, exponent = _pow2.normalized_cores(x._tt_layout())
    xp = B.namespace(*cores)
    start = xp.ones((1, 1), dtype=x.dtype, device=x.device)
    steps = [lambda v, c=c: v @ xp.sum(c, axis=1) for c in cores]
    return _pow2.chain(start, steps, exponent)


def _sum_modes(x: TT, axes: tuple[int, ...]) -> TT:
    """Sum over the modes ``axes`` (not all of them), the scale put back spread over the kept cores."""
    cores, exponent = _pow2.normalized_cores(x.cores)
    xp = B.namespace(*cores)
    kept: list[Array] = []
    pending = None  # product of the summed matrices not yet absorbed
    for k, core in enumerate(cores):
        if k in axes:
            matrix = xp.sum(core, axis=1)
            pending, e = B.normalized(matrix if pending is None else pending @ matrix)
            exponent = exponent + e
            continue
        if pending is not None:
            core, e = B.normalized(einsum("ab,bnc->anc", pending, core))
            exponent = exponent + e
            pending = None
        kept.append(core)
    if pending is not None:
        kept[-1], e = B.normalized(einsum("anb,bc->anc", kept[-1], pending))
        exponent = exponent + e
    return TT._trusted(_pow2.spread(kept, exponent))


# --- products --------------------------------------------------------------------------------------
@B.exact
def matvec(a: TTM, x: TT) -> TT:
    """``A @ x`` for a TTM ``A`` of shape (M, N) and a TT ``x`` of shape ``A.col_shape``.

    Returns
    -------
    TT
        Shape ``A.row_shape``, ranks ``r s``.

    Raises
    ------
    TypeError
        ``A`` not a TTM, ``x`` not a TT, different backends or dtypes.
    ValueError
        ``A.col_shape != x.shape``, different devices.

    Notes
    -----
    ``Y_k[:, i, :] = sum_j A_k[:, i, j, :] (x) X_k[:, j, :]``.

    Cost: ``O(d m n r^2 s^2)``.
    """
    _checks.check_type("matvec", a, TTM, "A")
    _checks.check_type("matvec", x, TT, "x")
    _checks.check_same_storage("matvec", a, x)
    if a.col_shape != x.shape:
        raise ValueError(
            f"matvec: A has col_shape {a.col_shape} but x has shape {x.shape}; they must match core by core"
        )
    xp = B.namespace(*a.cores)
    cores = []
    for ca, cx in zip(a.cores, x.cores):
        ra, m, _, ra2 = (int(s) for s in ca.shape)
        rx, _, rx2 = (int(s) for s in cx.shape)
        cores.append(xp.reshape(einsum("amnb,cnd->acmbd", ca, cx), (ra * rx, m, ra2 * rx2)))
    return TT._trusted(cores)


@B.exact
def matmul(a: TTM, b: TTM) -> TTM:
    """``A @ B`` for TTMs with ``A.col_shape == B.row_shape``.

    Returns
    -------
    TTM
        Row shape ``A.row_shape``, column shape ``B.col_shape``, ranks ``r s``.

    Raises
    ------
    TypeError
        Not two TTMs of one backend and dtype.
    ValueError
        ``A.col_shape != B.row_shape``, different devices.

    Notes
    -----
    ``C_k[:, i, j, :] = sum_l A_k[:, i, l, :] (x) B_k[:, l, j, :]``.

    Cost: ``O(d m k n r^2 s^2)``.
    """
    _checks.check_type("matmul", a, TTM, "A")
    _checks.check_type("matmul", b, TTM, "B")
    _checks.check_same_storage("matmul", a, b)
    if a.col_shape != b.row_shape:
        raise ValueError(
            f"matmul: A has col_shape {a.col_shape} but B has row_shape {b.row_shape}; they must match core by core"
        )
    xp = B.namespace(*a.cores)
    cores = []
    for ca, cb in zip(a.cores, b.cores):
        ra, m, _, ra2 = (int(s) for s in ca.shape)
        rb, _, n, rb2 = (int(s) for s in cb.shape)
        cores.append(xp.reshape(einsum("amkb,ckne->acmnbe", ca, cb), (ra * rb, m, n, ra2 * rb2)))
    return TTM._trusted(cores)


def linear(x: Array, w: TTM, bias: Array | None = None, *, save_weight: bool = False) -> Array:
    """``x @ W.full().T (+ bias)`` for dense ``x`` of shape ``(..., N)`` and a TTM ``W`` of shape (M, N).

    Parameters
    ----------
    x : array of shape ``(..., N)``
        Any number of leading dimensions.
    w : TTM
        The weight, stored like ``torch.nn.Linear.weight``: ``(out_features, in_features)``.
    bias : array of shape ``(M,)``, optional
    save_weight : bool
        Torch only (numpy has no backward). A forward that rebuilds W, with a backward planned from the
        dense W (both are the plans for many tokens), keeps W (if x needs a gradient) and the halves of
        its product (if the cores do) instead of saving only ``x`` and the cores: one rebuild less per
        step for up to ``M N`` more saved entries per call.

    Returns
    -------
    array of shape ``(..., M)``

    Raises
    ------
    TypeError
        ``W`` not a TTM, ``x`` not an array, backend or dtype mismatch (dtypes may differ under torch
        autocast), ``save_weight`` not a bool.
    ValueError
        ``x.shape[-1] != N``, a bias that is not ``(M,)``, devices that differ.

    Notes
    -----
    The contraction is planned per shape bucket by :func:`tensornet.contract.plan_linear` (rebuild W
    then one GEMM, or a factorised core-by-core sweep; see :func:`tensornet.contract.explain`). With
    torch tensors the product is a ``torch.autograd.Function`` that saves only ``x`` and the cores
    (activation memory no more than a dense layer's) and whose backward uses
    :func:`tensornet.adjoint.linear`'s kernels; it works under autocast and ``torch.compile``; double
    backward (``create_graph=True``: gradient penalties, Hessian-vector products) is exact, through a
    differentiable rebuild of W in that pass. Under ``torch.compile`` the default saves at most ``x`` and
    the cores too; with ``save_weight`` the compiler may keep W and chooses what else to keep.

    Cost: ``min(2 B M N + O(M N r), O(B (M + N) d r^2 max(m, n)))`` for B rows, as planned.
    """
    if not isinstance(w, TTM):
        raise TypeError(f"linear: W must be a tensornet TTM, got {type(w).__name__}")
    return _linear.linear(x, w.cores, bias, save_weight=save_weight)


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
    _checks.check_train("add_scalar", x)
    alpha = _checks.check_scalar("add_scalar", x, alpha)
    if isinstance(alpha, float) and alpha == 0.0:
        return x
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
    _checks.check_train("power", x)
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
