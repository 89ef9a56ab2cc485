"""The orthogonal factors of a point of the manifold of fixed-rank trains (private).

A TT ``x`` of ranks ``r = (1, r_1, ..., r_{d-1}, 1)`` whose unfoldings have exactly those ranks is a point of
the smooth manifold ``M_r`` of such trains (Holtz, Rohwedder, Schneider 2012, "On manifolds of tensors of fixed
TT-rank"). Everything the tangent space at ``x`` needs is one left-to-right and one right-to-left QR sweep:

* ``U_1 .. U_{d-1}``: left-orthogonal cores (``U_k^H U_k = I`` for the left unfolding ``(r_{k-1} n_k, r_k)``)
  and ``S_d``, the last core, with ``x = U_1 ... U_{d-1} S_d``;
* ``V_2 .. V_d``: right-orthogonal cores (``V_k V_k^H = I`` for the right unfolding ``(r_{k-1}, n_k r_k)``);
* ``Sigma_k`` (``r_k x r_k``): the suffix of the left-orthogonal form after core k is ``Sigma_k V_{>k}``, so
  ``Sigma_k`` has the singular values of ``x``'s k-th unfolding, and ``x`` lies on ``M_r`` exactly when every
  ``Sigma_k`` is invertible.

Cores are indexed from 0 here (``left[k]`` for k < d - 1, ``right[k]`` for k >= 1, ``bonds[k]`` between cores k
and k + 1). The sweeps use ``xp.linalg.qr`` and are differentiable on torch.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .. import _backend as B
from .. import _checks
from .._backend import Array
from .._einsum import einsum
from ..tt import TT

__all__ = ["Frame", "conj_t", "frame_of", "shape3"]


@dataclass(frozen=True, eq=False)
class Frame:
    """The orthogonal factors of ``point`` (see the module notes); compared by identity."""

    point: TT
    left: tuple[Array, ...]
    last: Array
    right: tuple[Any, ...]
    bonds: tuple[Array, ...]

    @property
    def ncores(self) -> int:
        return self.point.ncores


def shape3(core: Array) -> tuple[int, int, int]:
    r, n, s = (int(v) for v in core.shape)
    return r, n, s


def conj_t(matrix: Array) -> Array:
    """The conjugate transpose of a 2-D array."""
    xp = B.namespace(matrix)
    return B.conj(xp.permute_dims(matrix, (1, 0)))


def _check_point(fn: str, x: Any) -> None:
    _checks.check_type(fn, x, TT, "x")
    _checks.check_precision(fn, x.dtype)
    shape = x.shape
    for k in range(x.ncores - 1):
        useful = min(math.prod(shape[: k + 1]), math.prod(shape[k + 1 :]))
        if x.ranks[k + 1] > useful:
            raise ValueError(
                f"{fn}: x has rank {x.ranks[k + 1]} at bond {k + 1}, more than its unfolding can have "
                f"({useful}); such a train is not a point of a fixed-rank manifold. Round it first, e.g. "
                "tn.round(x, eps=1e-14)"
            )


def _left_sweep(cores: list[Array]) -> tuple[list[Array], Array]:
    xp = B.namespace(*cores)
    left = []
    carry = cores[0]
    for k in range(len(cores) - 1):
        r, n, s = shape3(carry)
        q, factor = xp.linalg.qr(xp.reshape(carry, (r * n, s)))
        left.append(xp.reshape(q, (r, n, s)))
        carry = einsum("ab,bnc->anc", factor, cores[k + 1])
    return left, carry


def _right_sweep(last: Array, left: list[Array]) -> tuple[list[Any], list[Array]]:
    """``V_k`` and ``Sigma_k`` from the left-orthogonal form: ``carry_k = R^H Q^H`` gives ``V_k = Q^H``."""
    xp = B.namespace(last)
    d = len(left) + 1
    right: list[Any] = [None] * d
    bonds: list[Array] = [last] * (d - 1)
    carry = last
    for k in range(d - 1, 0, -1):
        r, n, s = shape3(carry)
        q, factor = xp.linalg.qr(conj_t(xp.reshape(carry, (r, n * s))))
        right[k] = xp.reshape(conj_t(q), (r, n, s))
        bonds[k - 1] = conj_t(factor)
        carry = einsum("anb,bc->anc", left[k - 1], bonds[k - 1])
    return right, bonds


def _check_full_rank(fn: str, frame: Frame) -> None:
    """Raise unless every ``Sigma_k`` is numerically invertible (``x`` is a point of ``M_r``)."""
    xp = B.namespace(frame.last)
    unit = B.finfo_eps(frame.last)
    for k, bond in enumerate(frame.bonds):
        values = xp.linalg.svdvals(B.detach(bond))
        top, bottom = B.to_float(values[0]), B.to_float(values[-1])
        if not (math.isfinite(top) and math.isfinite(bottom)):
            raise ValueError(f"{fn}: x has NaN or inf entries")
        if bottom <= top * int(bond.shape[0]) * unit:
            raise ValueError(
                f"{fn}: x does not have full TT rank: its unfolding at bond {k + 1} has rank below "
                f"{int(bond.shape[0])} (singular values {top:.3g} .. {bottom:.3g}), so it is not a point of the "
                "manifold of trains with its ranks. Round it to its true ranks first, e.g. tn.round(x, eps=1e-12)"
            )


_CACHE: OrderedDict[int, Frame] = OrderedDict()
_CACHE_SIZE = 8


def frame_of(fn: str, x: Any, *, cache: bool = True) -> Frame:
    """The frame of the point ``x``, validated (recent frames of trains without gradients are reused).

    Reuse makes tangent vectors from separate calls at one point (``project(x, a) + project(x, b)``) share
    one frame, which is how they are recognised as vectors of one tangent space.

    Raises
    ------
    TypeError
        ``x`` not a TT, or half precision.
    ValueError
        Ranks above the useful ones, rank-deficient unfoldings, NaN/inf.

    Cost: ``O(d n r^3)``.
    """
    _check_point(fn, x)
    differentiable = any(getattr(c, "requires_grad", False) for c in x.cores)
    key = id(x)
    found = _CACHE.get(key)
    if found is not None and found.point is x:
        _CACHE.move_to_end(key)
        return found
    cores = list(x.cores)
    left, last = _left_sweep(cores)
    right, bonds = _right_sweep(last, left)
    frame = Frame(x, tuple(left), last, tuple(right), tuple(bonds))
    _check_full_rank(fn, frame)
    if cache and not differentiable:
        _CACHE[key] = frame  # the frame holds x, so its id is not reused while the entry lives
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return frame
