"""Tangent vectors of the manifold of fixed-rank trains: projection and arithmetic (retraction and transport: ``_retract``).

Notation of :mod:`tensornet.riemannian._frame` (``U_k`` left-orthogonal, ``V_k`` right-orthogonal cores of
the point ``x``, ``S_d`` its last core in the left-orthogonal form). A tangent vector at ``x`` is

    ``v = sum_k U_{<k} D_k V_{>k}``

(``U_{<k}`` the product of ``U_1 .. U_{k-1}``, ``V_{>k}`` of ``V_{k+1} .. V_d``) with the gauge condition
``U_k^H D_k = 0`` on the left unfoldings for k < d; its cores ``D_k`` have ``x``'s core shapes, so the
tangent space has ``sum_k r_{k-1} n_k r_k - sum_k r_k^2`` dimensions. Under the gauge the terms are
mutually orthogonal, so ``<v, w> = sum_k <D_k^v, D_k^w>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import _backend as B
from .. import _checks, _pow2, _train_checks
from .._backend import Array
from .._einsum import einsum
from .._scalars import check_scalar
from ..tt import TT
from ._frame import Frame, frame_of, shape3

__all__ = ["Tangent", "inner", "project", "to_tt"]


class Tangent:
    """A tangent vector of the manifold of TTs with the ranks of its point ``x``.

    Stored as its gauged cores ``D_k`` (the module notes): ``v = sum_k U_{<k} D_k V_{>k}`` with
    ``U_k^H D_k = 0`` for k < d, which costs as many numbers as ``x`` itself. Made by
    :func:`project` or :func:`~tensornet.riemannian.grad`, never dense.

    Vectors at one point (the same ``x`` object) add, subtract and scale (``u + v``, ``2.0 * v``, ``-v``,
    ``v / 2``); :func:`inner` is their inner product and :meth:`to_tt` the TT they stand for. Vectors at
    different points are refused: bring one over with :func:`transport` first.
    """

    __slots__ = ("_deltas", "_frame")
    _frame: Frame
    _deltas: tuple[Array, ...]

    def __init__(self, frame: Frame, deltas: Sequence[Array]) -> None:  # private: use project()
        object.__setattr__(self, "_frame", frame)
        object.__setattr__(self, "_deltas", tuple(B.frozen(c, copy=False) for c in deltas))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Tangent is immutable; operations return new tangent vectors")

    def __bool__(self) -> bool:
        raise TypeError("the truth value of a Tangent is ambiguous; compare its norm, e.g. v.norm() > 0")

    @property
    def point(self) -> TT:
        """The point ``x`` whose tangent space holds this vector."""
        return self._frame.point

    @property
    def deltas(self) -> tuple[Array, ...]:
        """The gauged cores ``D_k``, shaped like ``x``'s cores (do not modify them in place)."""
        return self._deltas

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the tensor the vector stands for (that of ``x``)."""
        return self.point.shape

    @property
    def dtype(self) -> Any:
        """The dtype of the tangent vector's cores (its base point's)."""
        return self._deltas[0].dtype

    def __repr__(self) -> str:
        return f"Tangent(shape={self.shape}, point ranks={self.point.ranks}, dtype={self.dtype})"

    # --- arithmetic -------------------------------------------------------------------------------
    def _combine(self, other: Any, sign: float, op: str) -> Tangent:
        if not isinstance(other, Tangent):
            return NotImplemented
        _check_same_point(op, self, other)
        return Tangent(self._frame, [a + sign * b for a, b in zip(self._deltas, other._deltas)])

    def __add__(self, other: Any) -> Tangent:
        return self._combine(other, 1.0, "Tangent +")

    def __sub__(self, other: Any) -> Tangent:
        return self._combine(other, -1.0, "Tangent -")

    def __neg__(self) -> Tangent:
        return Tangent(self._frame, [-c for c in self._deltas])

    def __pos__(self) -> Tangent:
        return self

    def __mul__(self, alpha: Any) -> Tangent:
        if isinstance(alpha, Tangent):
            return NotImplemented
        alpha = _scalar("Tangent *", self, alpha)
        return Tangent(self._frame, [alpha * c for c in self._deltas])

    __rmul__ = __mul__

    def __truediv__(self, alpha: Any) -> Tangent:
        alpha = _scalar("Tangent /", self, alpha)
        return Tangent(self._frame, [c / alpha for c in self._deltas])

    # --- reductions -------------------------------------------------------------------------------
    def inner(self, other: Tangent) -> Array:
        """``<self, other>`` (see :func:`inner`)."""
        return inner(self, other)

    def norm(self) -> Array:
        """``||v||_F`` as a real 0-d array: the root-sum-square of the gauged cores. Cost: ``O(d n r^2)``."""
        xp = B.namespace(*self._deltas)
        total = sum(xp.sum(xp.abs(c) ** 2) for c in self._deltas)
        return xp.sqrt(total)

    def to_tt(self) -> TT:
        """The TT of ranks ``2 r`` this vector stands for (see :func:`to_tt`)."""
        return to_tt(self)


def _scalar(fn: str, v: Tangent, alpha: Any) -> Any:
    """``alpha`` as :func:`tensornet._scalars.check_scalar` gives it for the point's cores (dtype kept)."""
    alpha = check_scalar(fn, v.point, alpha)
    complex_scalar = isinstance(alpha, complex) or (B.is_array(alpha) and B.is_complex(alpha))
    if complex_scalar and not B.is_complex(v._deltas[0]):
        raise TypeError(f"{fn}: a complex scalar cannot scale a real tangent vector; convert x to complex")
    return alpha


def _check_tangent(fn: str, v: Any, name: str = "v") -> None:
    if not isinstance(v, Tangent):
        raise TypeError(
            f"{fn}: {name} must be a tensornet.riemannian.Tangent (made by project or grad), got "
            f"{type(v).__name__}"
        )


def _check_same_point(fn: str, a: Tangent, b: Tangent) -> None:
    if a.point is b.point:  # one point: its factors are computed by the same deterministic sweeps
        return
    raise ValueError(
        f"{fn}: the tangent vectors belong to different points (a TT of shape {a.shape} and ranks "
        f"{a.point.ranks}, and one of ranks {b.point.ranks}); bring one to the other's point with "
        "tn.riemannian.transport(x, y, v)"
    )


def inner(u: Tangent, v: Tangent) -> Array:
    """The inner product ``<u, v> = sum(conj(u) * v)`` of two tangent vectors at one point.

    Parameters
    ----------
    u, v : Tangent
        Tangent vectors at the same point ``x``.

    Returns
    -------
    0-d array
        On ``x``'s backend; sesquilinear for complex trains (conjugate-linear in ``u``, as :func:`tensornet.dot`).

    Raises
    ------
    TypeError
        Not tangent vectors.
    ValueError
        Vectors at different points.

    Notes
    -----
    Under the gauge ``U_k^H D_k = 0`` the terms ``U_{<k} D_k V_{>k}`` of a tangent vector are mutually
    orthogonal, and ``U_{<k}``, ``V_{>k}`` have orthonormal columns and rows, so
    ``<u, v> = sum_k <D_k^u, D_k^v>``: the inner product of the cores, never of the ``2r``-rank trains.

    Cost: ``O(d n r^2)``.
    """
    _check_tangent("inner", u, "u")
    _check_tangent("inner", v, "v")
    _check_same_point("inner", u, v)
    xp = B.namespace(*u._deltas)
    return sum(xp.sum(B.conj(a) * b) for a, b in zip(u._deltas, v._deltas))


def tangent_cores(frame: Frame, deltas: Sequence[Array]) -> list[Array]:
    """The cores of ``sum_k U_{<k} D_k V_{>k}`` (ranks ``2 r_k``), differentiable in ``deltas`` and the frame.

    First core ``[D_1, U_1]``, core k ``[[V_k, 0], [D_k, U_k]]``, last core ``[[V_d], [D_d]]``: a row of the
    running product is ``[sum_{j<=k} U_{<j} D_j V_{j+1..k}, U_{<=k}]``.
    """
    d = frame.ncores
    if d == 1:
        return [deltas[0]]
    xp = B.namespace(*deltas)
    cores = [xp.concat([deltas[0], frame.left[0]], axis=2)]
    for k in range(1, d - 1):
        v, u = frame.right[k], frame.left[k]
        top = xp.concat([v, xp.zeros_like(v)], axis=2)
        bottom = xp.concat([deltas[k], u], axis=2)
        cores.append(xp.concat([top, bottom], axis=0))
    cores.append(xp.concat([frame.right[d - 1], deltas[d - 1]], axis=0))
    return cores


def to_tt(v: Tangent) -> TT:
    """The TT a tangent vector stands for, of ranks ``2 r`` (``r`` those of its point).

    Parameters
    ----------
    v : Tangent

    Returns
    -------
    TT
        ``sum_k U_{<k} D_k V_{>k}``, on ``v``'s backend (differentiable on torch).

    Raises
    ------
    TypeError
        ``v`` not a tangent vector.

    Notes
    -----
    Cores ``[D_1, U_1]``, ``[[V_k, 0], [D_k, U_k]]`` (1 < k < d), ``[[V_d], [D_d]]``: the running product of
    the first k cores is ``[sum_{j <= k} U_{<j} D_j V_{j+1..k}, U_{<=k}]``. ``tn.round`` of it gives the
    smallest ranks (at most ``2 r``).

    Cost: ``O(d n r^2)`` (building the cores).
    """
    _check_tangent("to_tt", v)
    return TT._trusted(tangent_cores(v._frame, v._deltas))


# --- projection ---------------------------------------------------------------------------------------
def gauge(frame: Frame, deltas: Sequence[Array]) -> list[Array]:
    """``D_k - U_k (U_k^H D_k)`` on the left unfoldings for k < d (the last core is unconstrained)."""
    xp = B.namespace(*deltas)
    out = []
    for k, delta in enumerate(deltas):
        if k == frame.ncores - 1:
            out.append(delta)
            continue
        r, n, s = shape3(delta)
        u = xp.reshape(frame.left[k], (r * n, s))
        flat = xp.reshape(delta, (r * n, s))
        flat = flat - u @ (B.conj(xp.permute_dims(u, (1, 0))) @ flat)
        out.append(xp.reshape(flat, (r, n, s)))
    return out


def _scaled(step: Array, exponent: Any) -> tuple[Array, Any]:
    value, e = B.normalized(step)
    return value, exponent + e


def ungauged(frame: Frame, z: list[Array]) -> list[Array]:
    """``U_{<k}^H z V_{>k}^H`` for every k, for a train ``z`` of the point's shape.

    Left environments ``L_{k+1} = sum_i U_k[:, i, :]^H L_k Z_k[:, i, :]`` and right environments
    ``Q_{k-1} = sum_i Z_k[:, i, :] Q_k V_k[:, i, :]^H`` (``r_k x R_k`` and ``R_k x r_k``), each renormalised by a
    power of two (exact), so the result is right at any scale of ``z``'s cores.
    """
    d = frame.ncores
    cores, exponent = _pow2.normalized_cores(z)
    xp = B.namespace(*cores)
    one = xp.ones((1, 1), dtype=cores[0].dtype, device=B.device(cores[0]))
    lefts, left_e = [one], [0]
    for k in range(d - 1):
        env, e = _scaled(einsum("ac,aib,cie->be", lefts[k], B.conj(frame.left[k]), cores[k]), left_e[k])
        lefts.append(env)
        left_e.append(e)
    rights: list[Any] = [None] * d
    right_e: list[Any] = [0] * d
    rights[d - 1] = one
    for k in range(d - 1, 0, -1):
        env, e = _scaled(einsum("cie,eb,aib->ca", cores[k], rights[k], B.conj(frame.right[k])), right_e[k])
        rights[k - 1], right_e[k - 1] = env, e
    return [
        B.scale_pow2(
            einsum("ac,cie,eb->aib", lefts[k], cores[k], rights[k]), exponent + left_e[k] + right_e[k]
        )
        for k in range(d)
    ]


def _terms(fn: str, x: TT, z: Any, names: tuple[str, str] = ("x", "z")) -> list[TT]:
    if isinstance(z, Tangent):
        z = to_tt(z)
    items = [z] if isinstance(z, TT) else z
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise TypeError(
            f"{fn}: z must be a TT, a non-empty sequence of TTs (their sum) or a Tangent, got {type(z).__name__}"
        )
    out = [to_tt(t) if isinstance(t, Tangent) else t for t in items]
    for i, t in enumerate(out):
        _checks.check_type(fn, t, TT, f"term {i} of z" if len(out) > 1 else "z")
        _train_checks.check_same_structure(fn, x, t)
    if any(B.is_complex(t.cores[0]) for t in out) and not B.is_complex(x.cores[0]):
        raise TypeError(
            f"{fn}: {names[1]} is complex but {names[0]} is real; the tangent space of a real manifold holds real "
            f"vectors (project tn.real({names[1]}) and tn.imag({names[1]}) separately, or make {names[0]} complex)"
        )
    precision, own = B.real_dtype_name(x.dtype), B.dtype_name(x.dtype)
    for t in out:  # a real z of x's precision joins a complex x; a wider z is not narrowed silently
        if B.real_dtype_name(t.dtype) != precision:
            wider = B.real_dtype_name(t.dtype)
            wider = B.complex_dtype_name(wider) if B.is_complex(x.cores[0]) else wider
            raise TypeError(
                f"{fn}: {names[0]} is {own} but {names[1]} is {B.dtype_name(t.dtype)}; the tangent space at "
                f"{names[0]} holds {own} vectors: convert one of them (e.g. {names[0]}.to(dtype='{wider}'))"
            )
    return [t if t.dtype == x.dtype else t.to(dtype=x.dtype) for t in out]


@B.exact
def project(x: TT, z: Any) -> Tangent:
    """The orthogonal projection of ``z`` onto the tangent space at ``x`` of the manifold of trains of x's ranks.

    Parameters
    ----------
    x : TT
        The point: a TT whose unfoldings have exactly its ranks (round it first otherwise).
    z : TT, sequence of TT, or Tangent
        What to project: a train of ``x``'s shape, backend and dtype (a real one for a complex ``x`` is
        promoted), a sum of such trains given as a sequence (projected term by term, never added), or a
        tangent vector at any point (vector transport, see :func:`transport`).

    Returns
    -------
    Tangent
        ``P_x z``, in TT form (its gauged cores; :meth:`Tangent.to_tt` gives the rank-``2r`` train).

    Raises
    ------
    TypeError
        ``x`` not a TT, ``z`` not a TT/sequence/Tangent, complex ``z`` for a real ``x``, mixed backends.
    ValueError
        Different shapes or devices; ``x`` with a rank-deficient unfolding or ranks above the useful ones.

    Notes
    -----
    With ``U_{<=k}`` the orthonormal left factors and ``V_{>k}`` the orthonormal right factors of ``x``
    (``P_{<=k} = U_{<=k} U_{<=k}^H``, ``P_{>k} = V_{>k}^H V_{>k}``), the projector onto the tangent space is
    (Lubich, Oseledets, Vandereycken 2015, "Time integration of tensor trains")

        ``P_x = sum_{k=1}^{d} P_{<k} (x) I (x) P_{>k} - sum_{k=1}^{d-1} P_{<=k} (x) P_{>k}``.

    In cores: ``Z_k = U_{<k}^H z V_{>k}^H`` (left and right environments of ``z`` against ``x``'s factors), then
    ``D_k = (I - U_k U_k^H) Z_k`` on the left unfolding for k < d and ``D_d = Z_d``. Linear in ``z``, so a sum
    is projected term by term.

    Cost: ``O(d n r R (r + R))`` for ``z`` of ranks R (plus ``O(d n r^3)`` to orthogonalise ``x`` once; the
    factors of the last few points are cached).
    """
    return _project("project", x, z)


def _project(fn: str, x: TT, z: Any, names: tuple[str, str] = ("x", "z")) -> Tangent:
    frame = frame_of(fn, x)
    terms = _terms(fn, x, z, names)
    total = None
    for t in terms:
        part = ungauged(frame, list(t.cores))
        total = part if total is None else [a + b for a, b in zip(total, part)]
    assert total is not None  # _terms refuses an empty sequence
    return Tangent(frame, gauge(frame, total))
