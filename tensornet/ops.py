"""Operations on TT and TTM trains, carried out on the cores (never through ``full()`` unless stated).

Every function validates its arguments, takes the array namespace from the cores and returns new
objects. Cost lines use d cores, mode size n (m x n for TTM), ranks r (and s for the second argument).
"""

from __future__ import annotations

import builtins
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _backend as B
from . import _linear
from . import tt as _tt
from ._einsum import einsum

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


# --- validation helpers -------------------------------------------------------------------------
def _require_train(fn: str, x: Any, name: str = "argument") -> None:
    if not isinstance(x, (_tt.TT, _tt.TTM)):
        raise TypeError(f"{fn}: {name} must be a tensornet TT or TTM, got {type(x).__name__}")


def _require(fn: str, x: Any, cls: type, name: str) -> None:
    if not isinstance(x, cls):
        raise TypeError(f"{fn}: {name} must be a tensornet {cls.__name__}, got {type(x).__name__}")


def _check_same_storage(fn: str, a: Any, b: Any) -> None:
    if a.backend != b.backend:
        raise TypeError(
            f"{fn}: operands use different backends ({a.backend} and {b.backend}); convert with .to()"
        )
    if a.dtype != b.dtype:
        raise TypeError(
            f"{fn}: operands have different dtypes ({a.dtype} and {b.dtype}); convert with .to(dtype=...)"
        )
    if a.device != b.device:
        raise ValueError(
            f"{fn}: operands are on different devices ({a.device} and {b.device}); move one with .to()"
        )


def _check_same_structure(fn: str, a: Any, b: Any) -> None:
    _require_train(fn, a, "first operand")
    _require_train(fn, b, "second operand")
    if type(a) is not type(b):
        raise TypeError(f"{fn}: cannot combine a {type(a).__name__} with a {type(b).__name__}")
    _check_same_storage(fn, a, b)
    if isinstance(a, _tt.TTM):
        if (a.row_shape, a.col_shape) != (b.row_shape, b.col_shape):
            raise ValueError(
                f"{fn}: TTM shapes differ: row_shape {a.row_shape} x col_shape {a.col_shape} vs "
                f"row_shape {b.row_shape} x col_shape {b.col_shape}; both must match core by core"
            )
    elif a.shape != b.shape:
        raise ValueError(f"{fn}: TT shapes differ: {a.shape} vs {b.shape}; they must match mode by mode")


def is_scalar(x: Any) -> bool:
    """A Python/numpy number or a 0-d array."""
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Number):
        return True
    return B.is_array(x) and x.ndim == 0


# --- TTM cores seen as TT cores with merged (m*n) modes -------------------------------------------
def _flat_cores(x: Any) -> list[Any]:
    if isinstance(x, _tt.TT):
        return list(x.cores)
    xp = B.namespace(*x.cores)
    return [
        xp.reshape(c, (int(c.shape[0]), int(c.shape[1]) * int(c.shape[2]), int(c.shape[3]))) for c in x.cores
    ]


def _like(x: Any, flat_cores: Sequence[Any]) -> Any:
    """Wrap TT-layout cores computed from ``x`` back into ``x``'s type (reshaping TTM modes)."""
    if isinstance(x, _tt.TT):
        return _tt.TT._trusted(flat_cores)
    xp = B.namespace(*flat_cores)
    cores = [
        xp.reshape(c, (int(c.shape[0]), m, n, int(c.shape[2])))
        for c, m, n in zip(flat_cores, x.row_shape, x.col_shape)
    ]
    return _tt.TTM._trusted(cores)


# --- dense -----------------------------------------------------------------------------------------
@B.exact
def full(x: Any) -> Any:
    """The dense array of a TT (shape ``x.shape``) or TTM (shape ``(M, N)``).

    Cost: ``O(r^2 prod(n))`` time and ``O(r prod(n))`` memory.
    """
    _require_train("full", x)
    return _tt._full_tt(x.cores) if isinstance(x, _tt.TT) else _tt._full_ttm(x.cores)


# --- linear structure ------------------------------------------------------------------------------
def add(a: Any, b: Any) -> Any:
    """``a + b`` in TT form; ranks add (``r + s``). Round afterwards to recompress.

    Cost: ``O(d n (r + s)^2)`` memory for the block cores.
    """
    _check_same_structure("add", a, b)
    ca, cb = _flat_cores(a), _flat_cores(b)
    xp = B.namespace(*ca, *cb)
    d = len(ca)
    if d == 1:
        return _like(a, [ca[0] + cb[0]])
    cores = [xp.concat([ca[0], cb[0]], axis=2)]
    for k in range(1, d - 1):
        ra, n, ra2 = (int(s) for s in ca[k].shape)
        rb, _, rb2 = (int(s) for s in cb[k].shape)
        top = xp.concat([ca[k], xp.zeros((ra, n, rb2), dtype=a.dtype, device=B.device(ca[k]))], axis=2)
        bottom = xp.concat([xp.zeros((rb, n, ra2), dtype=a.dtype, device=B.device(ca[k])), cb[k]], axis=2)
        cores.append(xp.concat([top, bottom], axis=0))
    cores.append(xp.concat([ca[-1], cb[-1]], axis=0))
    return _like(a, cores)


def _scalar_like(fn: str, x: Any, alpha: Any) -> Any:
    """``alpha`` in a form that multiplies ``x``'s cores without changing their dtype or device.

    A scalar never changes a train's dtype (numpy's NEP 50 and torch's rule for Python scalars): numbers,
    numpy scalars and 0-d numpy arrays become Python floats, 0-d arrays of the train's own backend are
    cast to its dtype and device (a torch scalar that requires grad keeps its graph). Complex scalars
    are refused as complex cores are.
    """
    if not is_scalar(alpha):
        raise TypeError(f"{fn}: the scalar must be a real number or a 0-d array, got {type(alpha).__name__}")
    if isinstance(alpha, numbers.Number):
        if isinstance(alpha, numbers.Complex) and not isinstance(alpha, numbers.Real):
            raise TypeError(f"{fn}: complex scalar {alpha!r}; tensornet supports real floats only")
        try:
            return float(alpha)  # type: ignore[arg-type]  # Python/numpy reals, Fraction, Decimal
        except (TypeError, ValueError, OverflowError) as err:
            raise ValueError(
                f"{fn}: the scalar {alpha!r:.40} is not representable as a float ({err})"
            ) from None
    if B.is_complex(alpha):
        raise TypeError(f"{fn}: complex scalar of dtype {alpha.dtype}; tensornet supports real floats only")
    if B.backend_name(alpha) == x.backend:
        return B.to_backend(alpha, x.backend, device=x.device, dtype=x.dtype)
    if B.backend_name(alpha) == "numpy":
        return float(alpha)
    raise TypeError(
        f"{fn}: the scalar is a {B.backend_name(alpha)} array but the train's cores are {x.backend}; "
        "convert one of them"
    )


def scale(x: Any, alpha: Any) -> Any:
    """``alpha * x`` (the first core is scaled); ``alpha`` a real number or 0-d array, which never
    changes the train's dtype or device (see :func:`_scalar_like`). Cost: ``O(n r)``."""
    _require_train("scale", x)
    alpha = _scalar_like("scale", x, alpha)
    return type(x)._trusted([x.cores[0] * alpha, *x.cores[1:]])


@B.exact
def hadamard(a: Any, b: Any) -> Any:
    """Elementwise product; ranks multiply (``r s``). Cost: ``O(d n r^2 s^2)``."""
    _check_same_structure("hadamard", a, b)
    xp = B.namespace(*a.cores)
    cores = []
    for ca, cb in zip(_flat_cores(a), _flat_cores(b)):
        ra, n, ra2 = (int(s) for s in ca.shape)
        rb, _, rb2 = (int(s) for s in cb.shape)
        cores.append(xp.reshape(einsum("anb,cnd->acnbd", ca, cb), (ra * rb, n, ra2 * rb2)))
    return _like(a, cores)


def kron(a: Any, b: Any) -> Any:
    """Kronecker (outer) product: the cores of ``a`` followed by those of ``b``.

    For TT this is the tensor ``a[i] * b[j]`` of shape ``a.shape + b.shape``; for TTM it is the matrix
    ``np.kron(A, B)`` with ``row_shape = A.row_shape + B.row_shape``. Cost: none (no arithmetic).
    """
    _require_train("kron", a, "first operand")
    _require_train("kron", b, "second operand")
    if type(a) is not type(b):
        raise TypeError(f"kron: cannot combine a {type(a).__name__} with a {type(b).__name__}")
    _check_same_storage("kron", a, b)
    return type(a)._trusted([*a.cores, *b.cores])


def transpose(a: Any) -> Any:
    """The transposed TTM (row and column modes swapped core by core). Cost: ``O(d m n r^2)`` copy."""
    _require("transpose", a, _tt.TTM, "a")
    xp = B.namespace(*a.cores)
    return _tt.TTM._trusted([xp.permute_dims(c, (0, 2, 1, 3)) for c in a.cores])


# --- scalars ---------------------------------------------------------------------------------------
def _normalized_cores(cores: Sequence[Any]) -> tuple[list[Any], Any]:
    """Each core divided by a power of two near its largest magnitude, and the sum of the exponents:
    ``x = 2^e * train(result)`` exactly, with every core's entries at most about 1 (so products of
    cores neither overflow nor underflow on their way, whatever the scale of each core)."""
    scaled, total = [], 0
    for core in cores:
        core, e = B.normalized(core)
        scaled.append(core)
        total = total + e
    return scaled, total


def _chain(first: Any, steps: Sequence[Callable[[Any], Any]], exponent: Any) -> Any:
    """Apply ``steps`` to a small matrix, renormalising by a power of two after each, and return the
    (1, 1) result times ``2^exponent``, the scale restored exactly at the end (inf or 0 if the result
    itself overflows or underflows; never NaN from finite cores)."""
    value = first
    for step in steps:
        value, e = B.normalized(step(value))
        exponent = exponent + e
    xp = B.namespace(value)
    return B.scale_pow2(xp.reshape(value, ()), exponent)


@B.exact
def dot(a: Any, b: Any) -> Any:
    """Inner product ``<a, b> = sum(a * b)`` (Frobenius for TTM) as a 0-d array.

    Notes: every core, and the running product after each step, is divided by a power of two (exact),
    so the result is right at any scale of the cores: the finite value whenever it is representable,
    ``+-inf`` when it overflows, 0 when it underflows; never NaN from finite cores.
    Cost: ``O(d n r s (r + s))``.
    """
    _check_same_structure("dot", a, b)
    ca, ea = _normalized_cores(_flat_cores(a))
    cb, eb = _normalized_cores(_flat_cores(b))
    xp = B.namespace(*ca)
    start = xp.ones((1, 1), dtype=a.dtype, device=a.device)
    steps = [lambda v, x=x, y=y: einsum("ab,anc,bnd->cd", v, x, y) for x, y in zip(ca, cb)]
    return _chain(start, steps, ea + eb)


def _norm_sweep(cores: Sequence[Any]) -> Any:
    """||x||_F by a left-to-right QR sweep over power-of-two-normalised cores (no gradient rules)."""
    xp = B.namespace(*cores)
    cores, exponent = _normalized_cores(cores)
    carry = None
    for k, core in enumerate(cores):
        current = core if carry is None else einsum("ab,bnc->anc", carry, core)
        current, e = B.normalized(current)
        exponent = exponent + e
        if k == len(cores) - 1:
            return B.scale_pow2(xp.linalg.vector_norm(current), exponent)
        r, n, r2 = (int(s) for s in current.shape)
        _, carry = xp.linalg.qr(xp.reshape(current, (r * n, r2)))
    raise AssertionError("unreachable: a train has at least one core")


@B.exact
def norm(x: Any) -> Any:
    """Frobenius norm as a 0-d array, by a QR sweep: accurate to working precision, also for
    differences of nearly equal trains.

    Notes: cores and carries are renormalised by powers of two (exact), so the norm is right at any
    scale: finite whenever it is representable (e.g. float32 trains of norm 3e38), inf when it
    overflows. With torch cores that require grad, the value is the QR sweep's and the gradient
    ``x / ||x||`` is taken through ``<x, x>`` (:func:`dot`'s normalised chain); at the zero train it is
    0, the subgradient torch's own norm uses (a QR sweep's gradient would be NaN there).
    Cost: ``O(d n r^3)``.
    """
    _require_train("norm", x)
    cores = _flat_cores(x)
    if B.dtype_name(x.dtype) in ("float16", "bfloat16"):  # QR has no half-precision kernels: in float32
        wide = [B.to_backend(c, x.backend, dtype="float32") for c in cores]
        return B.to_backend(norm(_like(x, wide)), x.backend, dtype=x.dtype)
    if not any(getattr(c, "requires_grad", False) for c in cores):
        return _norm_sweep(cores)
    value = _norm_sweep([B.detach(c) for c in cores])
    # With y = x / 2^e (cores scaled by constants) and z its detached copy, the normalised chain
    # gives v = <y, z> / 2^c, so <x, x> = v 2^(c + 2e) = ||x||^2 and d||x|| = d<x, x>/(2 ||x||)
    # = (||x|| / v) dv: attach that gradient to the exact value (v - v.detach() is exactly 0).
    scaled, _ = _normalized_cores(cores)
    fixed = [B.detach(c) for c in scaled]
    xp = B.namespace(*cores)
    v = xp.ones((1, 1), dtype=x.dtype, device=x.device)
    for y, z in zip(scaled, fixed):
        v, _ = B.normalized(einsum("ab,anc,bnd->cd", v, y, z))
    v = xp.reshape(v, ())
    factor = B.detach(xp.where(v != 0, value / xp.where(v != 0, v, xp.ones_like(v)), xp.zeros_like(v)))
    return value + (v - B.detach(v)) * factor


@B.exact
def sum(x: Any, axis: int | Sequence[int] | None = None) -> Any:
    """Sum of the entries over all modes (a 0-d array) or over the modes in ``axis`` (a TT over the
    others: a marginal).

    Notes: summing mode k replaces core k by the matrix ``sum_i G_k[:, i, :]``, which is multiplied into
    the next kept core (the previous one for trailing modes). Cores and running products are renormalised
    by powers of two like :func:`dot`: finite whenever the result is representable, never NaN from
    finite cores. ``axis`` (ints, negative from the end) applies to TT modes; a TTM sums all entries.
    Cost: ``O(d n r^2 + d r^3)``.

    Raises TypeError for an axis that is not an int or a sequence of ints (or given for a TTM),
    ValueError for one out of range or repeated.
    """
    _require_train("sum", x)
    if axis is not None:
        axes = _check_axes("sum", x, axis)
        if len(axes) < x.ndim:
            return _sum_modes(x, axes)
    cores, exponent = _normalized_cores(_flat_cores(x))
    xp = B.namespace(*cores)
    start = xp.ones((1, 1), dtype=x.dtype, device=x.device)
    steps = [lambda v, c=c: v @ xp.sum(c, axis=1) for c in cores]
    return _chain(start, steps, exponent)


# --- products --------------------------------------------------------------------------------------
@B.exact
def matvec(a: Any, x: Any) -> Any:
    """``A @ x`` for a TTM ``A`` (M, N) and a TT ``x`` of shape ``A.col_shape``: a TT of shape
    ``A.row_shape`` with ranks ``r s``. Cost: ``O(d m n r^2 s^2)``."""
    _require("matvec", a, _tt.TTM, "A")
    _require("matvec", x, _tt.TT, "x")
    _check_same_storage("matvec", a, x)
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
    return _tt.TT._trusted(cores)


@B.exact
def matmul(a: Any, b: Any) -> Any:
    """``A @ B`` for TTMs with ``A.col_shape == B.row_shape``; ranks multiply.
    Cost: ``O(d m k n r^2 s^2)``."""
    _require("matmul", a, _tt.TTM, "A")
    _require("matmul", b, _tt.TTM, "B")
    _check_same_storage("matmul", a, b)
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
    return _tt.TTM._trusted(cores)


def linear(x: Any, w: Any, bias: Any = None, *, save_weight: bool = False) -> Any:
    """``x @ W.full().T (+ bias)`` for dense ``x`` of shape ``(..., N)`` and a TTM ``W`` of shape (M, N).

    Any number of leading dimensions. The contraction is planned per shape bucket by
    :func:`tensornet.contract.plan_linear` (rebuild W then one GEMM, or a factorised core-by-core
    sweep; see :func:`tensornet.contract.explain`). With torch tensors the product is a
    ``torch.autograd.Function`` that saves only ``x`` and the cores (activation memory no more than a
    dense layer's) and whose backward uses :func:`tensornet.adjoint.linear`'s kernels; it works under
    autocast and ``torch.compile``; double backward (``create_graph=True``: gradient penalties,
    Hessian-vector products) is exact, through a differentiable rebuild of W in that pass. With
    ``save_weight=True`` (torch only; numpy has no backward) a forward that rebuilds W, with a backward
    planned from the dense W (both are the plans for many tokens), keeps W (if x needs a gradient) and
    the halves of its product (if the cores do) instead: one rebuild less per step for up to ``M N``
    more saved entries per call. Under ``torch.compile`` the default saves at most ``x`` and the cores
    too; with ``save_weight`` the compiler may keep W and chooses what else to keep.

    Cost: ``min(2 B M N + O(M N r), O(B (M + N) d r^2 max(m, n)))`` for B rows, as planned.

    Raises
    ------
    TypeError
        ``W`` not a TTM, ``x`` not an array, backend or dtype mismatch (dtypes may differ under torch
        autocast).
    ValueError
        ``x.shape[-1] != N``, a bias that is not ``(M,)``, devices that differ.
    """
    if not isinstance(w, _tt.TTM):
        raise TypeError(f"linear: W must be a tensornet TTM, got {type(w).__name__}")
    return _linear.linear(x, w.cores, bias, save_weight=save_weight)


# --- indexing --------------------------------------------------------------------------------------
@B.exact
def getitem(x: Any, index: Any) -> Any:
    """``x[i, j, k]`` (a 0-d array) or ``x[:, 2, 1:5]`` (a TT over the sliced modes).

    Integers pick an entry of a mode (the mode is removed), slices keep a range of it.
    Cost: ``O(d r^3)`` for an entry.
    """
    _require("getitem", x, _tt.TT, "x")
    index = index if isinstance(index, tuple) else (index,)
    if len([i for i in index if i is Ellipsis]) > 1:
        raise IndexError("TT index: at most one Ellipsis (...) is allowed")
    if Ellipsis in index:
        at = index.index(Ellipsis)
        fill = x.ndim - (len(index) - 1)
        index = index[:at] + (slice(None),) * fill + index[at + 1 :]
    if len(index) > x.ndim:
        raise IndexError(f"TT index: {len(index)} indices given for a TT with {x.ndim} modes")
    index = index + (slice(None),) * (x.ndim - len(index))
    xp = B.namespace(*x.cores)
    kept: list[Any] = []
    pending = None  # product of the picked (r x r') matrices not yet absorbed
    for k, (core, idx) in enumerate(zip(x.cores, index)):
        n = int(core.shape[1])
        if isinstance(idx, bool) or not isinstance(idx, (numbers.Integral, slice)):
            raise TypeError(
                f"TT index: mode {k} got {type(idx).__name__}; use integers, slices or ... "
                "(arrays of indices are not supported)"
            )
        if isinstance(idx, slice):
            positions = range(*idx.indices(n))
            if len(positions) == 0:
                raise IndexError(f"TT index: slice {idx} of mode {k} (size {n}) is empty")
            piece = core if idx == slice(None) else xp.take(core, _positions(core, positions), axis=1)
            if pending is not None:
                piece = einsum("ab,bnc->anc", pending, piece)
                pending = None
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


def _positions(core: Any, positions: range) -> Any:
    xp = B.namespace(core)
    return xp.asarray(list(positions), dtype=xp.int64, device=B.device(core))


# --- entries, marginals, scalar shifts and powers ------------------------------------------------------
def _index_rows(fn: str, index: Any, shape: Sequence[int], name: str = "index") -> Any:
    """``index`` (a ``(k, d)`` integer numpy/torch array or nested sequence) as host int64 rows, checked
    against ``shape`` and with negative entries counted from the end."""
    if B.is_array(index):
        if B.is_complex(index) or B.is_floating(index) or str(index.dtype) in ("bool", "torch.bool"):
            raise TypeError(f"{fn}: {name} must hold integers, got dtype {index.dtype}")
        rows = np.asarray(B.to_backend(index, "numpy"))
    elif isinstance(index, Sequence) and not isinstance(index, str):
        rows = np.asarray(index)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"{fn}: {name} must hold integers, got {rows.dtype} entries")
    else:
        raise TypeError(f"{fn}: {name} must be a (k, d) integer array, got {type(index).__name__}")
    d = len(shape)
    if rows.ndim != 2 or int(rows.shape[1]) != d:
        raise ValueError(
            f"{fn}: {name} has shape {tuple(rows.shape)} but must be (k, {d}): one row (i_1, ..., i_{d}) "
            f"per entry of the shape-{tuple(shape)} train (wrap a single index as [index])"
        )
    rows = rows.astype(np.int64, copy=False)
    sizes = np.asarray(shape, dtype=np.int64)
    bad = np.argwhere((rows < -sizes) | (rows >= sizes))
    if bad.size:
        j, k = (int(v) for v in bad[0])
        raise IndexError(
            f"{fn}: {name} row {j} has {int(rows[j, k])} in mode {k}, which has size {int(sizes[k])} "
            f"(valid: {-int(sizes[k])} .. {int(sizes[k]) - 1})"
        )
    return np.where(rows < 0, rows + sizes, rows)


@B.exact
def gather(x: Any, index: Any) -> Any:
    """Many entries at once: ``x[index[j]]`` for each row of a ``(k, d)`` integer array, as a 1-D array
    of ``k`` values on ``x``'s backend, dtype and device.

    Notes: row j is ``G_1[:, i_1, :] G_2[:, i_2, :] ... G_d[:, i_d, :]``, computed for all rows together
    core by core, each running row divided by a power of two near its size (exact), so an entry is
    right at any scale of the cores (inf only when it overflows). Negative indices count from the end.
    Differentiable with torch cores. Cost: ``O(k d r^2)``.

    Raises TypeError for a non-TT ``x`` or a non-integer index, ValueError for an index of the wrong
    shape, IndexError for an entry out of range.
    """
    _require("gather", x, _tt.TT, "x")
    rows = B.to_backend(_index_rows("gather", index, x.shape), x.backend, device=x.device)
    xp = B.namespace(*x.cores)
    if int(rows.shape[0]) == 0:
        return xp.zeros((0,), dtype=x.dtype, device=x.device)
    cores, exponent = _normalized_cores(x.cores)
    values = xp.take(cores[0][0], rows[:, 0], axis=0)  # (k, r_1)
    for k in range(1, len(cores)):
        values = einsum("ka,akb->kb", values, xp.take(cores[k], rows[:, k], axis=1))
        e = B.exponent(xp.max(xp.abs(values), axis=1))
        values = B.scale_pow2(values, -e[:, None])
        exponent = exponent + e
    return B.scale_pow2(values[:, 0], exponent)


def _check_axes(fn: str, x: Any, axis: Any) -> tuple[int, ...]:
    if isinstance(x, _tt.TTM):
        raise TypeError(f"{fn}: axis applies to the modes of a TT; a TTM sums all entries (axis=None)")
    items = [axis] if isinstance(axis, numbers.Integral) else axis
    if isinstance(axis, bool) or not isinstance(items, Sequence) or isinstance(items, str):
        raise TypeError(f"{fn}: axis must be an int or a sequence of ints, got {axis!r}")
    d = x.ndim
    axes = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, numbers.Integral):
            raise TypeError(f"{fn}: axis entries must be ints, got {a!r}")
        if not -d <= int(a) < d:
            raise ValueError(f"{fn}: axis {a} is out of range for a TT with {d} modes")
        axes.append(int(a) % d)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{fn}: axis {tuple(items)} repeats a mode")
    return tuple(sorted(axes))


def _sum_modes(x: Any, axes: tuple[int, ...]) -> Any:
    """Sum over the modes ``axes`` (not all of them): the summed cores become matrices, multiplied into
    the next kept core (the last kept one takes the trailing matrices); the scale is put back spread
    over the kept cores so that no core over- or underflows on its own."""
    cores, exponent = _normalized_cores(x.cores)
    xp = B.namespace(*cores)
    kept: list[Any] = []
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
    return _tt.TT._trusted(_spread_pow2(kept, exponent))


def _spread_pow2(cores: list[Any], exponent: Any) -> list[Any]:
    """The train of ``cores`` times ``2^exponent``, the factor split evenly over the cores (each core
    near 1 gets at most its share, so none over- or underflows unless the train's entries do)."""
    count = len(cores)
    share = exponent // count
    rest = exponent - share * count
    return [B.scale_pow2(c, share + rest if k == 0 else share) for k, c in enumerate(cores)]


@B.exact
def add_scalar(x: Any, alpha: Any) -> Any:
    """``x + alpha`` entrywise (``alpha`` added to every entry): ``x`` plus ``alpha`` times the all-ones
    train, so the ranks grow by 1 (a host number 0 returns ``x`` itself, so ``sum(trains)`` does not grow
    them). ``alpha`` follows :func:`scale`'s rule (a real number or 0-d array that never changes the
    train's dtype or device). Cost: ``O(d n (r + 1)^2)``."""
    _require_train("add_scalar", x)
    alpha = _scalar_like("add_scalar", x, alpha)
    if isinstance(alpha, float) and alpha == 0.0:
        return x
    xp = B.namespace(*x.cores)
    flat = _flat_cores(x)
    ones = [xp.ones((1, int(c.shape[1]), 1), dtype=x.dtype, device=x.device) for c in flat]
    ones[0] = ones[0] * alpha
    return add(x, _like(x, ones))


@B.exact
def power(x: Any, exponent: Any) -> Any:
    """``x ** k`` entrywise for an integer ``k >= 0``: ``k - 1`` Hadamard products, ranks ``r^k``
    (``k = 0``: the all-ones train). Round afterwards to recompress; for other exponents use
    :func:`tensornet.apply`. Cost: ``O(d n r^(2k))``.

    Raises TypeError for a non-integer exponent, ValueError for a negative one or one whose ranks
    would not fit in this machine's memory.
    """
    _require_train("power", x)
    if isinstance(exponent, bool) or not isinstance(exponent, numbers.Integral):
        raise TypeError(
            f"power: the exponent must be an int >= 0, got {exponent!r}; for other powers use "
            "tn.apply(lambda v: v ** p, t)"
        )
    k = int(exponent)
    if k < 0:
        raise ValueError(f"power: exponent {k} < 0; a reciprocal is not exact in TT form, use tn.apply")
    flat = _flat_cores(x)
    if k == 0:
        xp = B.namespace(*flat)
        return _like(x, [xp.ones((1, int(c.shape[1]), 1), dtype=x.dtype, device=x.device) for c in flat])
    ranks = x.ranks
    entries = builtins.sum(ranks[j] ** k * int(c.shape[1]) * ranks[j + 1] ** k for j, c in enumerate(flat))
    memory = B.available_memory()
    if memory is not None and entries * int(x.cores[0].itemsize) > memory:
        raise ValueError(
            f"power: x ** {k} has ranks {tuple(r**k for r in ranks)} ({entries:,} entries), more than the "
            f"memory available; round between products (tn.round(t * t, eps=...)) or use tn.apply"
        )
    result = x
    for _ in range(k - 1):
        result = hadamard(result, x)
    return result
