"""Riemannian gradients and Hessian-vector products of scalar functions of a train (t3f's "Riemannian autodiff").

The trick (Novikov, Rakhuba, Oseledets 2022, "Automatic differentiation for Riemannian optimization on
low-rank matrix and tensor-train manifolds", SISC 44): the tangent vectors at ``x`` are the trains
``T(D) = sum_k U_{<k} D_k V_{>k}`` (:func:`tensornet.riemannian.to_tt`), linear in the cores ``D``, and
``T(0, ..., 0, S_d) = x``. So for ``g(D) = f(T(D))`` one reverse pass gives ``dg/dD_k = U_{<k}^H grad f(x)
V_{>k}^H`` for every k at once, at about the cost of one gradient of ``f`` on a rank-``2r`` train; the gauge
projection ``D_k - U_k U_k^H D_k`` (k < d) then gives exactly ``P_x grad f(x)``, the Riemannian gradient.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from .. import _backend as B
from .. import _checks
from .._backend import Array
from ..tt import TT
from ._frame import Frame, frame_of, shape3
from ._retract import retract
from ._tangent import Tangent, _check_tangent, gauge, tangent_cores, to_tt, ungauged

__all__ = ["grad", "hess_vec"]


def _value(fn: str, out: Any) -> Any:
    if not (B.is_array(out) and out.ndim == 0) and not isinstance(out, (int, float)):
        raise TypeError(
            f"{fn}: f must return a real scalar (a 0-d array or a float), got {type(out).__name__}"
        )
    if B.is_array(out) and B.is_complex(out):
        raise TypeError(f"{fn}: f returned a complex value; a gradient needs a real scalar function")
    return out


def _block_grads(frame: Frame, core_grads: Sequence[Array]) -> list[Array]:
    """The gradients of the ``D_k`` inside the gradients of the tangent train's block cores."""
    d = frame.ncores
    if d == 1:
        return [core_grads[0]]
    ranks = frame.point.ranks
    out = [core_grads[0][:, :, : ranks[1]]]
    for k in range(1, d - 1):
        out.append(core_grads[k][ranks[k] :, :, : ranks[k + 1]])
    out.append(core_grads[d - 1][ranks[d - 1] :, :, :])
    return out


def _numpy_grads(fn: str, f: Callable[[TT], Any], frame: Frame) -> tuple[Any, list[Array]]:
    """``(f(x), dg/dD)`` from ``f`` returning ``(value, core gradients)`` of the tangent train (numpy)."""
    deltas = [B.namespace(c).zeros_like(c) for c in frame.left] + [frame.last]
    tangent = TT._trusted(tangent_cores(frame, deltas))
    out = f(tangent)
    shapes = [tuple(int(s) for s in c.shape) for c in tangent.cores]
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"{fn}: numpy has no reverse mode, so on a numpy train f must return (value, core_grads): f's "
            f"value and its gradients with respect to the cores of the train it is given (shapes {shapes}), "
            "e.g. from tensornet.adjoint's rules; or convert x to torch (x.to('torch')) and return the value"
        )
    value, core_grads = out
    core_grads = list(core_grads)
    if len(core_grads) != len(shapes) or any(
        not B.is_array(g) or tuple(int(s) for s in g.shape) != shape for g, shape in zip(core_grads, shapes)
    ):
        got = [tuple(g.shape) if B.is_array(g) else type(g).__name__ for g in core_grads]
        raise ValueError(
            f"{fn}: f returned core gradients of shapes {got}, but the train it was given has cores {shapes}; "
            "return one gradient per core, shaped like it"
        )
    return _value(fn, value), _block_grads(frame, core_grads)


def _torch_grads(
    fn: str, f: Callable[[TT], Any], frame: Frame, create_graph: bool
) -> tuple[Any, list[Array]]:
    """``(f(x), dg/dD)`` by torch's reverse mode; ``create_graph`` keeps them differentiable (hess_vec)."""
    torch = importlib.import_module("torch")
    offsets = [torch.zeros_like(c, requires_grad=True) for c in [*frame.left, frame.last]]
    deltas = [*offsets[:-1], frame.last + offsets[-1]]
    value = _value(fn, f(TT._trusted(tangent_cores(frame, deltas))))
    if not (isinstance(value, torch.Tensor) and value.requires_grad):
        return value, [torch.zeros_like(o) for o in offsets]  # f does not depend on its argument
    grads = torch.autograd.grad(value, offsets, create_graph=create_graph, allow_unused=True)
    return value, [torch.zeros_like(o) if g is None else g for g, o in zip(grads, offsets)]


def _riemannian(
    fn: str, f: Callable[[TT], Any], frame: Frame, create_graph: bool = False
) -> tuple[Any, Tangent]:
    if not callable(f):
        raise TypeError(f"{fn}: f must be callable (a TT -> a real scalar), got {type(f).__name__}")
    if frame.point.backend == "torch":
        value, blocks = _torch_grads(fn, f, frame, create_graph)
    elif frame.point.backend == "numpy":
        value, blocks = _numpy_grads(fn, f, frame)
    else:
        raise TypeError(f"{fn}: x has {frame.point.backend} cores; numpy and torch are supported")
    return value, Tangent(frame, gauge(frame, blocks))


@B.exact
def grad(f: Callable[[TT], Any], x: TT, *, return_value: bool = False) -> Any:
    """The Riemannian gradient of a real function ``f`` of a train on the manifold of trains with x's ranks.

    Parameters
    ----------
    f : callable
        ``f(t) -> real scalar`` for a TT ``t`` of ``x``'s shape. On torch, any differentiable computation
        (tensornet operations, ``torch`` on ``tn.gather`` values, ...). On numpy, which has no reverse mode,
        ``f(t)`` returns ``(value, core_grads)``: the value and its gradients with respect to the cores of
        ``t`` (one array per core, shaped like it), e.g. assembled from :mod:`tensornet.adjoint`'s rules
        (``adjoint.dot``, ``adjoint.full``, ...).
    x : TT
        The point (full TT rank: round it first otherwise).
    return_value : bool
        Also return ``f(x)``.

    Returns
    -------
    Tangent, or (Tangent, value) with ``return_value``
        ``grad f(x) = P_x nabla f(x)``, the projection of the Euclidean gradient onto the tangent space
        (and ``f(x)``, detached from autograd's graph).

    Raises
    ------
    TypeError
        ``f`` not callable or not returning a real scalar (or, on numpy, the pair described above).
    ValueError
        Core gradients of the wrong shapes; ``x`` not of full rank (see :func:`project`).

    Notes
    -----
    ``f`` is called once, on the rank-``2r`` train ``T(D) = sum_k U_{<k} D_k V_{>k}`` at
    ``D = (0, ..., 0, S_d)``, which equals ``x``; one reverse pass gives ``dg/dD_k = U_{<k}^H nabla f(x)
    V_{>k}^H`` for every k (T is linear in D), and the gauge projection ``D_k - U_k U_k^H D_k`` (k < d) turns
    them into ``P_x nabla f(x)`` (:func:`project`'s formula). On numpy the gradient of core k of ``T`` holds
    ``dg/dD_k`` as its lower-left block. As t3f's ``riemannian.gradients`` (Novikov, Rakhuba, Oseledets 2022).

    Cost: one evaluation and one reverse pass of ``f`` on a rank-``2r`` train, plus ``O(d n r^3)``.
    """
    _checks.check_type("grad", x, TT, "x")
    value, g = _riemannian("grad", f, frame_of("grad", x))
    return (g, B.detach(value)) if return_value else g


# --- Hessian-vector products ---------------------------------------------------------------------------
def _solve_right(matrix: Array, bond: Array) -> Array:
    """``core x_3 bond^{-1}`` for a core ``(r, n, s)`` and an invertible ``(s, s)`` bond."""
    xp = B.namespace(matrix)
    r, n, s = shape3(matrix)
    flat = xp.reshape(matrix, (r * n, s))
    solved = xp.permute_dims(
        xp.linalg.solve(xp.permute_dims(bond, (1, 0)), xp.permute_dims(flat, (1, 0))), (1, 0)
    )
    return xp.reshape(solved, (r, n, s))


def _curve(frame: Frame, v: Tangent, t: Array) -> TT:
    """A curve ``c(t)`` on the manifold with ``c(0) = x`` and ``c'(0) = v``, linear in ``t`` core by core.

    Cores ``U_k + t D_k Sigma_k^{-1}`` (k < d) and ``S_d + t D_d``: the derivative at 0 is
    ``sum_k U_{<k} D_k Sigma_k^{-1} Sigma_k V_{>k} = v`` (the suffix of the left-orthogonal form after core k is
    ``Sigma_k V_{>k}``).
    """
    cores = [u + t * _solve_right(dk, bond) for u, dk, bond in zip(frame.left, v.deltas, frame.bonds)]
    cores.append(frame.last + t * v.deltas[-1])
    return TT._trusted(cores)


def _hess_torch(f: Callable[[TT], Any], frame: Frame, v: Tangent) -> list[Array]:
    torch = importlib.import_module("torch")
    real = torch.float64 if frame.last.dtype == torch.float64 else torch.float32
    t = torch.zeros((), dtype=real, device=frame.last.device, requires_grad=True)
    moving = frame_of("hess_vec", _curve(frame, v, t), cache=False)
    _, field = _riemannian("hess_vec", f, moving, create_graph=True)
    # P_x of the gradient field along the curve: its t-derivative at 0 is Hess f(x)[v]
    along = gauge(frame, ungauged(frame, tangent_cores(moving, field.deltas)))
    if not any(a.requires_grad for a in along):
        return [torch.zeros_like(a) for a in along]
    weights = [torch.zeros_like(a, requires_grad=True) for a in along]
    (slope,) = torch.autograd.grad(along, t, grad_outputs=weights, create_graph=True, allow_unused=True)
    if slope is None:
        return [torch.zeros_like(a) for a in along]
    derivative = torch.autograd.grad(slope, weights, allow_unused=True)
    return [torch.zeros_like(a) if g is None else g.detach() for g, a in zip(derivative, along)]


def _hess_numpy(f: Callable[[TT], Any], x: TT, frame: Frame, v: Tangent) -> list[Array]:
    size = B.to_float(v.norm())
    if size == 0.0:
        return [c * 0.0 for c in v.deltas]
    scale = B.to_float(B.namespace(frame.last).linalg.vector_norm(frame.last))
    step = B.finfo_eps(frame.last) ** (1.0 / 3.0) * max(scale, math.ulp(0.0)) / size
    sides = []
    for h in (step, -step):
        y = retract(x, h * v)
        _, g = _riemannian("hess_vec", f, frame_of("hess_vec", y, cache=False))
        sides.append(ungauged(frame, list(to_tt(g).cores)))
    return gauge(frame, [(a - b) / (2.0 * step) for a, b in zip(*sides)])


@B.exact
def hess_vec(f: Callable[[TT], Any], x: TT, v: Tangent) -> Tangent:
    """The Riemannian Hessian of ``f`` at ``x`` applied to the tangent vector ``v``.

    Parameters
    ----------
    f : callable
        As for :func:`grad` (on numpy, returning ``(value, core_grads)``).
    x : TT
        The point (real float32/float64; full TT rank).
    v : Tangent
        A tangent vector at ``x``.

    Returns
    -------
    Tangent
        ``Hess f(x)[v]`` at ``x``.

    Raises
    ------
    TypeError
        As :func:`grad`; complex trains.
    ValueError
        ``v`` at another point; as :func:`grad`.

    Notes
    -----
    For a submanifold with the induced metric, ``Hess f(x)[v] = P_x D(grad f)(x)[v]``: the derivative of the
    Riemannian gradient field along any curve ``c`` on the manifold with ``c(0) = x``, ``c'(0) = v``, projected
    back (Absil, Mahony, Trumpf 2013, "An extrinsic look at the Riemannian Hessian"). It is the projected
    Euclidean Hessian ``P_x nabla^2 f(x) v`` plus the curvature term ``P_x (D P_x[v]) nabla f(x)``, which
    involves ``Sigma_k^{-1}`` (the inverse singular values of x's unfoldings); t3f's
    ``hessian_vector_product`` returns the first term only.

    On torch the derivative is exact: the curve with cores ``U_k + t D_k Sigma_k^{-1}`` and ``S_d + t D_d`` is
    differentiated by double backward through :func:`grad` (with the QRs of the moving point). On numpy it
    is the central difference ``P_x (grad f(R_x(h v)) - grad f(R_x(-h v))) / 2h`` along the retraction, with
    ``h |v| = u^(1/3) |x|`` (u the unit roundoff): accurate to about ``u^(2/3)`` relative (1e-10 in float64).

    Cost: about three gradient evaluations (torch: one forward and a double backward; numpy: two
    gradients and two retractions), plus ``O(d n r^3)``.
    """
    _checks.check_type("hess_vec", x, TT, "x")
    _check_tangent("hess_vec", v)
    if v.point is not x:
        raise ValueError("hess_vec: v is not a tangent vector at x; pass the point it was made at (v.point)")
    if B.is_complex(x.cores[0]):
        raise TypeError("hess_vec: complex trains are not supported; use a real x")
    frame = frame_of("hess_vec", x)
    if not callable(f):
        raise TypeError(f"hess_vec: f must be callable (a TT -> a real scalar), got {type(f).__name__}")
    deltas = _hess_torch(f, frame, v) if x.backend == "torch" else _hess_numpy(f, x, frame, v)
    return Tangent(frame, deltas)
