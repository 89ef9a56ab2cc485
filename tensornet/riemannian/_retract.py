"""Retraction and vector transport on the manifold of trains of fixed ranks: :func:`retract`, :func:`transport`."""

from __future__ import annotations

from .. import _backend as B
from .. import _checks
from ..decomp import round as tt_round
from ..tt import TT
from ._tangent import Tangent, _check_tangent, _project, tangent_cores, to_tt

__all__ = ["retract", "transport"]


@B.exact
def retract(x: TT, v: Tangent) -> TT:
    """``R_x(v)``: the point ``x + v`` brought back to the manifold of trains with ``x``'s ranks by rounding.

    Parameters
    ----------
    x : TT
        The point.
    v : Tangent
        A tangent vector at ``x``.

    Returns
    -------
    TT
        ``tn.round(x + v, max_rank=x.ranks)``: the TT-SVD truncation of ``x + v`` to ``x``'s ranks.

    Raises
    ------
    TypeError
        Bad types.
    ValueError
        ``v`` at another point.

    Notes
    -----
    ``x + v`` is the rank-``2r`` train of :func:`to_tt` with ``D_d + S_d`` in the last core (``S_d`` the last
    core of ``x``'s left-orthogonal form). Truncated SVDs of the unfoldings are quasi-optimal
    (``||y - (x + v)|| <= sqrt(d - 1) min_{w in M_r} ||w - (x + v)||``) and, since ``x + v`` is within
    ``O(||v||^2)`` of the manifold, ``||R_x(v) - (x + v)|| = O(||v||^2)``: a second-order retraction
    (Steinlechner 2016, "Riemannian optimization for high-dimensional tensor completion", SISC 38).

    Cost: ``O(d n r^3)`` (rounding a rank-``2r`` train).
    """
    _checks.check_type("retract", x, TT, "x")
    _check_tangent("retract", v)
    if v.point is not x:
        raise ValueError(
            "retract: v is a tangent vector at another point; give the point it was made at (v.point), or "
            "transport it first"
        )
    frame = v._frame
    deltas = list(v._deltas)
    deltas[-1] = deltas[-1] + frame.last
    return tt_round(TT._trusted(tangent_cores(frame, deltas)), max_rank=x.ranks)


@B.exact
def transport(x: TT, y: TT, v: Tangent) -> Tangent:
    """Vector transport of a tangent vector at ``x`` to the tangent space at ``y`` by orthogonal projection.

    Parameters
    ----------
    x : TT
        The point ``v`` belongs to.
    y : TT
        The point to move it to (same shape; any ranks of a point of its own manifold).
    v : Tangent
        A tangent vector at ``x``.

    Returns
    -------
    Tangent
        ``P_y v`` at ``y``.

    Raises
    ------
    TypeError, ValueError
        As :func:`project`; ``v`` not at ``x``.

    Notes
    -----
    ``T_{x -> y} v = P_y(v)``, with ``v`` in its rank-``2r`` TT form (:func:`to_tt`): the projection
    transport of embedded submanifolds (Absil, Mahony, Sepulchre 2008, section 8.1.3), as in Riemannian CG.

    Cost: ``O(d n r s (r + s))`` for ``x`` of ranks r and ``y`` of ranks s.
    """
    _checks.check_type("transport", x, TT, "x")
    _check_tangent("transport", v)
    if v.point is not x:
        raise ValueError("transport: v is not a tangent vector at x; pass the point it was made at (v.point)")
    return _project("transport", y, to_tt(v), ("y", "v"))
