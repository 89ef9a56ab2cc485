"""Reductions of trains to scalars in TT form: inner products, norms, sums and marginals.

Re-exported by :mod:`tensornet.ops`. Every core and every running product is renormalised by a power of
two (:mod:`tensornet._pow2`), so results are right at any scale of the cores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from . import _backend as B
from . import _checks, _pow2, _train_checks
from ._backend import Array
from ._einsum import einsum
from .tt import TT, TTM, Train, TrainT

__all__ = ["dot", "norm", "sum"]


# --- scalars ---------------------------------------------------------------------------------------
@B.exact
def dot(a: TrainT, b: TrainT) -> Array:
    """Inner product ``<a, b> = sum(conj(a) * b)`` (Frobenius for TTM) as a 0-d array.

    ``a`` and ``b`` are trains of one structure and storage, as for :func:`tensornet.add` (which also
    lists the errors); the result is a 0-d array. For complex trains the product is sesquilinear:
    conjugate-linear in ``a``, as ``numpy.vdot``, so ``dot(a, b) == conj(dot(b, a))`` and
    ``dot(a, a) == norm(a)**2``. A real and a complex train combine as complex.

    Notes
    -----
    ``<a, b> = L_d`` with ``L_k = sum_i A_k[:, i, :]^T L_{k-1} B_k[:, i, :]``, ``L_0 = 1``. Every core,
    and the running product after each step, is divided by a power of two (exact), so the result is
    right at any scale of the cores: the finite value whenever it is representable, ``+-inf`` when it
    overflows, 0 when it underflows; never NaN from finite cores.

    Cost: ``O(d n r s (r + s))``.
    """
    _train_checks.check_same_structure("dot", a, b)
    a, b = _train_checks.promoted(a, b)
    ca, ea = _pow2.normalized_cores([B.conj(c) for c in a._tt_layout()])
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
        _, carry = B.qr(xp.reshape(current, (r * n, r2)))
    last = scaled[-1] if carry is None else einsum("ab,bnc->anc", carry, scaled[-1])
    last, e = B.normalized(last)
    return B.scale_pow2(xp.linalg.vector_norm(last), exponent + e)


def _norm_with_gradient(cores: list[Array], value: Array) -> Array:
    """``value`` (the QR sweep's norm) carrying the derivatives of ``sqrt(<x, x>)``, to every order.

    ``<x, x> = v 2^c`` by the normalised chain (cores and running products divided by powers of two, which
    are constants for autograd), so ``s = sqrt(v 2^(c mod 2)) 2^(c // 2)`` is ``||x||`` with its whole graph;
    ``value + (s - s.detach())`` has the QR sweep's value (accurate also for differences of nearly equal
    trains) and ``s``'s derivatives, first, second and beyond (double backward: Hessian-vector products of
    losses of the norm). At the zero train the gradient is 0, the subgradient torch's own norm uses.
    """
    scaled, exponent = _pow2.normalized_cores(cores)
    total = 2 * exponent  # <x, x> = <y, y> 2^(2 e): each core's exponent counts twice
    xp = B.namespace(*cores)
    v = xp.ones((1, 1), dtype=cores[0].dtype, device=B.device(cores[0]))
    for y in scaled:
        v, e = B.normalized(einsum("ab,anc,bnd->cd", v, B.conj(y), y))
        total = total + e  # and the chain's own renormalisations once
    v = xp.reshape(v, ())
    if B.is_complex(v):  # <y, y> is real (its imaginary part is rounding)
        v = xp.real(v)
    odd = total % 2
    positive = v > 0
    root = xp.sqrt(
        xp.where(positive, B.scale_pow2(v, odd), xp.ones_like(v))
    )  # no sqrt'(0) = inf in the graph
    s = xp.where(positive, B.scale_pow2(root, (total - odd) // 2), xp.zeros_like(root))
    return value + (s - B.detach(s))


@B.exact
def norm(x: Train) -> Array:
    """Frobenius norm as a 0-d array.

    Parameters
    ----------
    x : TT or TTM
        The train to measure.

    Returns
    -------
    0-d array
        ``||x||_F`` in ``x``'s dtype, real for complex trains (float32 for complex64); computed in
        float32 for float16/bfloat16 trains, which QR does not support.
        A ``TypeError`` if ``x`` is not a train.

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
    _train_checks.check_train("norm", x)
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
    _train_checks.check_train("sum", x)
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
