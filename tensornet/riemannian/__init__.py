"""Riemannian geometry of the manifold of trains of fixed TT ranks.

The TTs of shape ``(n_1, ..., n_d)`` whose unfoldings have exactly the ranks ``r`` form a smooth embedded
submanifold ``M_r`` of the space of tensors (Holtz, Rohwedder, Schneider 2012). Optimising over it instead of
over the cores removes the gauge freedom of the cores and gives well-conditioned steps; t3f made this
practical (``riemannian.project``, ``gradients``, ``hessian_vector_product``). Here, on numpy and torch:

* :func:`project` -- ``P_x z`` for a TT ``z``, a sum of TTs or a tangent vector elsewhere, in TT form;
* :class:`Tangent` -- tangent vectors as their gauged cores ``D_k``: ``+``, ``-``, scalar ``*``, :func:`inner`
  (``O(d n r^2)``, never through the rank-``2r`` trains), :func:`to_tt`;
* :func:`retract` -- ``round(x + v, max_rank=x.ranks)``, second order;
* :func:`transport` -- ``P_y v``, the projection transport;
* :func:`grad` / :func:`hess_vec` -- Riemannian gradient and Hessian-vector product of a scalar function of a
  train, by one reverse pass through the tangent parametrisation (torch autograd; on numpy, ``f`` returns
  its core gradients, e.g. from :mod:`tensornet.adjoint`).

Costs are ``O(d n r^3)`` per point (two QR sweeps, cached for the last few points) plus ``O(d n r R (r + R))``
per projected train of ranks ``R``. Learning trains from data (completion, optima, sampling) builds on the
core in :mod:`tensornet.learn`.

Example
-------
>>> import tensornet as tn
>>> from tensornet import riemannian as rm
>>> x = tn.random_tt((4, 5, 6), 2, seed=0)
>>> a = tn.random_tt((4, 5, 6), 3, seed=1)
>>> g = rm.project(x, 2.0 * (x - a))            # Riemannian gradient of ||x - a||^2
>>> y = rm.retract(x, -0.1 * g)                  # a step of Riemannian gradient descent
>>> y.ranks == x.ranks
True
"""

from __future__ import annotations

from ._autodiff import grad, hess_vec
from ._retract import retract, transport
from ._tangent import Tangent, inner, project, to_tt

__all__ = ["Tangent", "grad", "hess_vec", "inner", "project", "retract", "to_tt", "transport"]
