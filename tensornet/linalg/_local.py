"""Interfaces (environments) and the local operators of the one-core sweeps.

Layouts, kept everywhere in :mod:`tensornet.linalg`:

* operator core ``W`` ``(R, m, n, R')`` (row mode m, column mode n), a TTM core;
* train core ``(r, n, r')``; the *centre* core carries the block index last: ``(r, n, r', p)`` (p = 1
  for a linear system, k for k eigenvectors sharing the other cores);
* operator environment ``(s, R, r)``: bra rank s (the conjugated side, a frame the problem is projected
  on), operator rank R, ket rank r. The left one of core k is ``L[a, alpha, a'] = sum conj(V_{<k}) A_{<k}
  X_{<k}``, the right one ``R[b, beta, b'] = sum conj(V_{>k}) A_{>k} X_{>k}``;
* vector environment ``(s, r)``: ``<V, X>`` over the cores on one side (V the bra).

The local operator of core k maps a centre ``u`` to
``y[a, i, b] = sum L[a, alpha, a'] W[alpha, i, j, beta] u[a', j, b'] R[b, beta, b']``: with orthonormal
frames it is the Galerkin projection ``X_{!=k}^H A X_{!=k}`` of A. It is applied in factored form, three
GEMMs, never assembled unless it is small (:attr:`LocalOperator.size`).
"""

from __future__ import annotations

import math

import numpy as np

from .._backend import Array
from ._ops import Ops


# --- environments -----------------------------------------------------------------------------------
def op_left(ops: Ops, env: Array, bra: Array, w: Array, ket: Array) -> Array:
    """The left operator environment one core further right: ``(s', R', r')``.

    ``env`` (s, R, r), ``bra`` (s, m, s'), ``w`` (R, m, n, R'), ``ket`` (r, n, r').
    Cost ``O(s R r n r' + s r' R n m R' + s m R' r' s')``.
    """
    s, big_r, r = (int(v) for v in env.shape)
    _, n, r2 = (int(v) for v in ket.shape)
    _, m, s2 = (int(v) for v in bra.shape)
    r3 = int(w.shape[3])
    t = ops.mm(ops.reshape(env, (s * big_r, r)), ops.reshape(ket, (r, n * r2)))  # (s, R, n, r')
    t = ops.reshape(ops.permute(ops.reshape(t, (s, big_r, n, r2)), (0, 3, 1, 2)), (s * r2, big_r * n))
    wm = ops.reshape(ops.permute(w, (0, 2, 1, 3)), (big_r * n, m * r3))  # (R n, m R')
    t = ops.reshape(ops.mm(t, wm), (s, r2, m, r3))
    t = ops.reshape(ops.permute(t, (0, 2, 3, 1)), (s * m, r3 * r2))
    out = ops.mm(ops.H(ops.reshape(bra, (s * m, s2))), t)
    return ops.reshape(out, (s2, r3, r2))


def op_right(ops: Ops, env: Array, bra: Array, w: Array, ket: Array) -> Array:
    """The right operator environment one core further left: ``(s, R, r)`` from ``env`` (s', R', r')."""
    s2, r3, r2 = (int(v) for v in env.shape)
    r, n, _ = (int(v) for v in ket.shape)
    s, m, _ = (int(v) for v in bra.shape)
    big_r = int(w.shape[0])
    envp = ops.reshape(ops.permute(env, (2, 0, 1)), (r2, s2 * r3))
    t = ops.mm(ops.reshape(ket, (r * n, r2)), envp)  # (r, n, s', R')
    t = ops.reshape(ops.permute(ops.reshape(t, (r, n, s2, r3)), (0, 2, 1, 3)), (r * s2, n * r3))
    wm = ops.reshape(ops.permute(w, (2, 3, 0, 1)), (n * r3, big_r * m))  # (n R', R m)
    t = ops.reshape(ops.mm(t, wm), (r, s2, big_r, m))
    t = ops.reshape(ops.permute(t, (0, 2, 3, 1)), (r * big_r, m * s2))
    out = ops.mm(t, ops.H(ops.reshape(bra, (s, m * s2))))  # (r, R, s)
    return ops.permute(ops.reshape(out, (r, big_r, s)), (2, 1, 0))


def vec_left(ops: Ops, env: Array, bra: Array, ket: Array) -> Array:
    """``<V, X>`` left environment one core further right: ``(s', r')`` from ``env`` (s, r)."""
    s, r = (int(v) for v in env.shape)
    _, n, r2 = (int(v) for v in ket.shape)
    s2 = int(bra.shape[2])
    t = ops.reshape(ops.mm(env, ops.reshape(ket, (r, n * r2))), (s * n, r2))
    return ops.mm(ops.H(ops.reshape(bra, (s * n, s2))), t)


def vec_right(ops: Ops, env: Array, bra: Array, ket: Array) -> Array:
    """``<V, X>`` right environment one core further left: ``(s, r)`` from ``env`` (s', r')."""
    r, n, r2 = (int(v) for v in ket.shape)
    s = int(bra.shape[0])
    t = ops.reshape(ops.mm(ops.reshape(ket, (r * n, r2)), ops.permute(env, (1, 0))), (r, -1))  # (r, n s')
    return ops.mm(ops.conj(ops.reshape(bra, (s, -1))), ops.permute(t, (1, 0)))


def vec_local(ops: Ops, left: Array, core: Array, right: Array) -> Array:
    """``f[a, i, b] = sum left[a, g] core[g, i, g'] right[b, g']``: a train projected on two frames."""
    s, g = (int(v) for v in left.shape)
    _, n, g2 = (int(v) for v in core.shape)
    t = ops.reshape(ops.mm(left, ops.reshape(core, (g, n * g2))), (s * n, g2))
    return ops.reshape(ops.mm(t, ops.permute(right, (1, 0))), (s, n, int(right.shape[0])))


# --- the local operator ------------------------------------------------------------------------------
class LocalOperator:
    """The projected operator ``L x W x R`` acting on centres ``(r, n, r', p)`` flattened to ``(N, p)``.

    Cost of one product with p columns: ``O(p (s R r n r' + s r' R n m R' + s m R' r' s'))``.
    """

    def __init__(self, ops: Ops, left: Array, w: Array, right: Array) -> None:
        self.ops = ops
        self.left, self.w, self.right = left, w, right
        self.s, self.big_r, self.r = (int(v) for v in left.shape)
        self.m, self.n = int(w.shape[1]), int(w.shape[2])
        self.s2, self.big_r2, self.r2 = (int(v) for v in right.shape)
        self.size = self.s * self.m * self.s2  # rows (bra side)
        self.cols = self.r * self.n * self.r2
        self._lm = ops.reshape(left, (self.s * self.big_r, self.r))
        self._wm = ops.reshape(ops.permute(w, (0, 2, 1, 3)), (self.big_r * self.n, self.m * self.big_r2))
        self._rm = ops.reshape(ops.permute(right, (1, 2, 0)), (self.big_r2 * self.r2, self.s2))
        self.products = 0  # columns multiplied (the local work counter reported by return_info)
        self.indefinite = False  # set when its Kronecker-sum part turned out indefinite

    def matvec(self, u: Array) -> Array:
        """``H u`` for ``u`` of shape (cols, p)."""
        ops = self.ops
        p = int(u.shape[1])
        self.products += p
        s, big_r, r, n, m, r2, s2, big_r2 = (
            self.s, self.big_r, self.r, self.n, self.m, self.r2, self.s2, self.big_r2,
        )  # fmt: skip
        t = ops.mm(self._lm, ops.reshape(u, (r, n * r2 * p)))  # (s, R, n, r', p)
        t = ops.reshape(ops.permute(ops.reshape(t, (s, big_r, n, r2, p)), (0, 3, 4, 1, 2)), (-1, big_r * n))
        t = ops.mm(t, self._wm)  # (s, r', p, m, R')
        t = ops.reshape(
            ops.permute(ops.reshape(t, (s, r2, p, m, big_r2)), (0, 3, 2, 4, 1)), (-1, big_r2 * r2)
        )
        t = ops.mm(t, self._rm)  # (s, m, p, s')
        return ops.reshape(ops.permute(ops.reshape(t, (s, m, p, s2)), (0, 1, 3, 2)), (self.size, p))

    def dense(self) -> Array:
        """The assembled (size, cols) matrix. Memory ``size * cols``."""
        ops = self.ops
        s, big_r, r, n, m, r2, s2, big_r2 = (
            self.s, self.big_r, self.r, self.n, self.m, self.r2, self.s2, self.big_r2,
        )  # fmt: skip
        lp = ops.reshape(ops.permute(self.left, (0, 2, 1)), (s * r, big_r))
        t = ops.mm(lp, ops.reshape(self.w, (big_r, m * n * big_r2)))  # (s, r, m, n, R')
        rp = ops.reshape(ops.permute(self.right, (1, 0, 2)), (big_r2, s2 * r2))
        t = ops.mm(ops.reshape(t, (s * r * m * n, big_r2)), rp)  # (s, r, m, n, s', r')
        t = ops.permute(ops.reshape(t, (s, r, m, n, s2, r2)), (0, 2, 4, 1, 3, 5))
        return ops.reshape(t, (self.size, self.cols))

    def kron_sum(self) -> KronSumPreconditioner | None:
        """The Kronecker-sum preconditioner of this operator, or None where it does not apply."""
        return KronSumPreconditioner.build(self)


MAX_DISTANCE = 0.5  # the preconditioner is used only where ||H - K||_F <= MAX_DISTANCE ||H||_F


def _distance(h: LocalOperator, factors: list[np.ndarray], mu: float) -> float:
    """``||H - K||_F / ||H||_F`` from traces of the small factors (never forming H or K).

    ``||H||^2 = sum GL[a, a'] GW[ab, a'b'] GR[b, b']`` with the Gram matrices of the factors of the terms,
    ``<H, K>`` and ``||K||^2`` from traces; accurate to ~sqrt(u), enough to compare with ``MAX_DISTANCE``.
    """
    ops = h.ops
    left = ops.host(ops.permute(h.left, (1, 0, 2))).reshape(h.big_r, -1)  # (R, s r)
    right = ops.host(ops.permute(h.right, (1, 0, 2))).reshape(h.big_r2, -1)
    mid = ops.host(ops.permute(h.w, (0, 3, 1, 2))).reshape(h.big_r * h.big_r2, -1)  # (R R', n n)
    gl, gr = (left @ left.conj().T).real, (right @ right.conj().T).real
    gw = (mid @ mid.conj().T).real.reshape(h.big_r, h.big_r2, h.big_r, h.big_r2)
    hh = float(np.einsum("ac,abcd,bd->", gl, gw, gr))
    a_left, a_mid, a_right = factors
    size_l, size_w, size_r = h.s, h.n, h.s2
    tl = np.trace(left.reshape(h.big_r, h.s, h.r), axis1=1, axis2=2).real
    tr = np.trace(right.reshape(h.big_r2, h.s2, h.r2), axis1=1, axis2=2).real
    tw = np.trace(mid.reshape(h.big_r, h.big_r2, h.n, h.n), axis1=2, axis2=3).real
    il = (left.conj() @ a_left.reshape(-1)).real  # <L_a, A_L>
    ir = (right.conj() @ a_right.reshape(-1)).real
    iw = (mid.conj() @ a_mid.reshape(-1)).real.reshape(h.big_r, h.big_r2)
    hk = float(il @ tw @ tr + tl @ iw @ tr + tl @ tw @ ir - 2.0 * mu * (tl @ tw @ tr))
    t_l, t_w, t_r = (float(np.trace(a).real) for a in factors)
    n_l, n_w, n_r = (float(np.linalg.norm(a)) ** 2 for a in factors)
    dim = size_l * size_w * size_r
    kk = (
        n_l * size_w * size_r + n_w * size_l * size_r + n_r * size_l * size_w + 4.0 * mu * mu * dim
        + 2.0 * (t_l * t_w * size_r + t_l * t_r * size_w + t_w * t_r * size_l)
        - 4.0 * mu * (t_l * size_w * size_r + t_w * size_l * size_r + t_r * size_l * size_w)
    )  # fmt: skip
    if not hh > 0.0:
        return math.inf
    return math.sqrt(max(hh - 2.0 * hk + kk, 0.0) / hh)


class KronSumPreconditioner:
    """``K^{-1}`` for the Kronecker sum ``K = A_L (x) I (x) I + I (x) A_W (x) I + I (x) I (x) A_R - 2 mu I``.

    Notes
    -----
    ``A_L, A_W, A_R`` are the partial traces of the local operator ``H = sum L_a (x) W_ab (x) R_b`` over the
    other two factors, divided by their sizes, and ``mu = tr(H) / dim``: K equals H whenever H is itself such
    a sum (the local operator of a Laplacian-like Kronecker sum ``sum_k I (x) .. (x) D_k (x) .. (x) I`` on any
    frames), and is a cheap approximation otherwise. K is inverted by diagonalising the three small
    factors (the fast diagonalisation of Lynch, Rice & Thomas 1964): ``O(s^3 + n^3 + s'^3)`` to build,
    ``O(N (s + n + s'))`` per application. Only built for square, symmetric (Hermitian) parts with a positive
    spectrum, so that it is a valid preconditioner for CG.
    """

    def __init__(
        self, ops: Ops, factors: list[Array], denominators: Array, shape: tuple[int, int, int]
    ) -> None:
        self.ops, self.factors, self.denominators, self.shape = ops, factors, denominators, shape

    @classmethod
    def build(cls, h: LocalOperator) -> KronSumPreconditioner | None:
        ops = h.ops
        if h.s != h.r or h.m != h.n or h.s2 != h.r2:
            return None
        xp = ops.xp
        # traces of the factors of every term: tr(L_a), tr(W_ab), tr(R_b)
        tl = xp.sum(xp.linalg.diagonal(ops.permute(h.left, (1, 0, 2))), axis=-1)  # (R,)
        tw = xp.sum(xp.linalg.diagonal(ops.permute(h.w, (0, 3, 1, 2))), axis=-1)  # (R, R')
        tr = xp.sum(xp.linalg.diagonal(ops.permute(h.right, (1, 0, 2))), axis=-1)  # (R',)
        cl = ops.mm(tw, ops.reshape(tr, (-1, 1))) / (h.n * h.r2)  # (R, 1)
        cr = ops.mm(ops.reshape(tl, (1, -1)), tw) / (h.s * h.n)  # (1, R')
        cw = ops.reshape(tl, (-1, 1)) * ops.reshape(tr, (1, -1)) / (h.s * h.r2)  # (R, R')
        mu = ops.mm(ops.mm(ops.reshape(tl, (1, -1)), tw), ops.reshape(tr, (-1, 1)))[0, 0] / (h.s * h.n * h.r2)
        a_left = ops.reshape(
            ops.mm(ops.reshape(ops.permute(h.left, (0, 2, 1)), (h.s * h.s, h.big_r)), cl), (h.s, h.s)
        )
        a_right = ops.reshape(
            ops.mm(
                ops.reshape(ops.permute(h.right, (0, 2, 1)), (h.s2 * h.s2, h.big_r2)),
                ops.reshape(cr, (-1, 1)),
            ),
            (h.s2, h.s2),
        )
        w_terms = ops.reshape(ops.permute(h.w, (1, 2, 0, 3)), (h.n * h.n, h.big_r * h.big_r2))
        a_mid = ops.reshape(ops.mm(w_terms, ops.reshape(cw, (-1, 1))), (h.n, h.n))
        mu_host = float(np.real(ops.host(mu)))
        if _distance(h, [ops.host(a) for a in (a_left, a_mid, a_right)], mu_host) > MAX_DISTANCE:
            return None  # H is far from a Kronecker sum: K would steer the iteration wrong (checked before any eigh)
        factors, spectra = [], []
        for a in (a_left, a_mid, a_right):
            sym = (a + ops.H(a)) / 2
            values, vectors = ops.eigh(sym)
            factors.append(vectors)
            spectra.append(ops.host(values).real.astype(np.float64))
        total = (
            spectra[0][:, None, None] + spectra[1][None, :, None] + spectra[2][None, None, :] - 2.0 * mu_host
        )
        low, high = float(np.min(total)), float(np.max(total))
        if not (math.isfinite(low) and math.isfinite(high)) or low <= 1e-12 * high or high <= 0.0:
            h.indefinite = True  # not positive definite: no valid preconditioner for CG (callers remember)
            return None
        return cls(ops, factors, ops.real_asarray(total), (h.s, h.n, h.s2))

    def apply(self, v: Array) -> Array:
        """``K^{-1} v`` for ``v`` of shape (N, p)."""
        ops = self.ops
        a, n, b = self.shape
        p = int(v.shape[1])
        q_left, q_mid, q_right = self.factors
        t = ops.permute(ops.reshape(v, (a, n, b, p)), (3, 0, 1, 2))  # (p, a, n, b)
        t = self._modes(t, ops.H(q_left), ops.H(q_mid), ops.conj(q_right))
        t = t / self.denominators
        t = self._modes(t, q_left, q_mid, ops.permute(q_right, (1, 0)))
        return ops.reshape(ops.permute(t, (1, 2, 3, 0)), (a * n * b, p))

    def _modes(self, t: Array, left: Array, mid: Array, right_t: Array) -> Array:
        """``t x_1 left x_2 mid x_3 right`` for t (p, a, n, b); ``right_t`` is the transposed third factor."""
        ops = self.ops
        p, a, n, b = (int(s) for s in t.shape)
        t = ops.mm(left, ops.reshape(t, (p, a, n * b)))
        t = ops.mm(mid, ops.reshape(t, (p * a, n, b)))
        t = ops.mm(ops.reshape(t, (p, a * n, b)), right_t)
        return ops.reshape(t, (p, a, n, b))
