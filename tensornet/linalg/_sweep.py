"""The one-core sweep with residual enrichment (AMEn) shared by :func:`solve` and :func:`eigsh`.

State: the solution train ``X`` in mixed canonical form (cores left of the centre left-orthonormal, right of
it right-orthonormal) whose centre core ``(r, n, r', p)`` carries the block index (p = 1 for a linear system,
k eigenvectors sharing all other cores: the block TT format of Dolgov, Khoromskij, Oseledets & Savostyanov
2014), and a second train ``Z`` of small rank that approximates the residual (Dolgov & Savostyanov 2014,
"Alternating minimal energy methods for linear systems in higher dimensions", SISC 36).

One step at core k (moving right; moving left mirrors it):

1. the local problem on the frames ``X_{<k}``, ``X_{>k}`` is solved for the centre ``u`` (subclass);
2. ``u`` is truncated by an SVD of its ``(r n, r' p)`` unfolding, the rank chosen by the subclass;
3. enrichment: the residual projected on the left frame ``X_{<k}`` and the right frame ``Z_{>k}`` gives
   ``rz`` new columns appended to the left factor, which is re-orthonormalised; the next core gets the
   matching zero rows, so X itself is unchanged but the next local problem sees the residual's directions;
4. Z's core k is refitted to the residual projected on Z's own frames;
5. the environments of core k + 1 are updated (one product per frame pair).

Enrichment is what lets a one-core method grow ranks and escape the local minima of ALS; its cost is that of
one local product with rz columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import Array
from ._local import LocalOperator, op_left, op_right
from ._ops import Ops


class Sweeper:
    """The block train, the residual train and their environments over an operator (TT-layout cores).

    Subclasses implement :meth:`solve_local`, :meth:`choose_rank` and :meth:`residual`.
    """

    def __init__(
        self,
        ops: Ops,
        op_cores: list[Array],
        x_cores: list[Array],
        center: Array,
        z_cores: list[Array],
        kick: int,
    ) -> None:
        # x_cores[0] is replaced by ``center`` (r0, n, r1, p); the others are right-orthonormal
        self.ops, self.w, self.d, self.kick = ops, op_cores, len(op_cores), kick
        self.x = list(x_cores)
        self.z = list(z_cores)
        self.u = center
        self.k = 0
        one_op = ops.reshape(ops.eye(1), (1, 1, 1))
        self.xl: list[Any] = [one_op] + [None] * (self.d - 1)
        self.xr: list[Any] = [None] * (self.d - 1) + [one_op]
        self.zl: list[Any] = list(self.xl)
        self.zr: list[Any] = list(self.xr)
        self.max_rank: int | None = None
        self.capped = False
        self.enrich = True  # eigsh turns it off once no bond is limited by growth (the ranks have settled)
        # eigsh: the relative threshold of its truncations; where its square exceeds 10 u cols, the Gram route
        # of _truncated resolves every singular value it could discard (0: always the SVD)
        self.gram_rank = 0.0
        self.growth_limited = False  # some truncation in this pass kept every column it was given
        self.stats = {"local_solves": 0, "products": 0, "dense": 0, "krylov": 0}

    def build(self) -> None:
        """The right environments of every core (call once the subclass's lists exist)."""
        for k in range(self.d - 1, 0, -1):
            self._update_right(k)

    # --- environments (subclasses add their vector environments) --------------------------------
    def _update_left(self, k: int) -> None:
        """Environments of core k + 1 from the final left-orthonormal X and Z cores k."""
        ops = self.ops
        self.xl[k + 1] = op_left(ops, self.xl[k], self.x[k], self.w[k], self.x[k])
        if self.enrich:
            self.zl[k + 1] = op_left(ops, self.zl[k], self.z[k], self.w[k], self.x[k])

    def _update_right(self, k: int) -> None:
        """Environments of core k - 1 from the final right-orthonormal X and Z cores k."""
        ops = self.ops
        self.xr[k - 1] = op_right(ops, self.xr[k], self.x[k], self.w[k], self.x[k])
        if self.enrich:
            self.zr[k - 1] = op_right(ops, self.zr[k], self.z[k], self.w[k], self.x[k])

    def local_operator(self, k: int, left: str = "x", right: str = "x") -> LocalOperator:
        """The operator projected on the ``left`` and ``right`` frames ('x' or 'z') around core k."""
        lenv = self.xl[k] if left == "x" else self.zl[k]
        renv = self.xr[k] if right == "x" else self.zr[k]
        return LocalOperator(self.ops, lenv, self.w[k], renv)

    # --- hooks ---------------------------------------------------------------------------------
    def solve_local(self, k: int) -> None:
        """Replace ``self.u`` by the solution of the local problem at core k."""
        raise NotImplementedError

    def choose_rank(self, k: int, factors: tuple[Array, Array, Array], rows_first: bool) -> int:
        """The rank kept from the SVD ``factors`` of the centre's unfolding."""
        raise NotImplementedError

    def residual(self, k: int, u: Array, left: str, right: str) -> Array:
        """The residual at core k for centre ``u``, projected on the ``left``/``right`` frames: (s, n, s', p)."""
        raise NotImplementedError

    # --- moves ---------------------------------------------------------------------------------------
    def step(self, forward: bool) -> None:
        """Solve at the centre, then move it one core right (``forward``) or left, with enrichment."""
        k = self.k
        self.solve_local(k)
        if forward:
            self._move_right(k)
        else:
            self._move_left(k)

    def _move_right(self, k: int) -> None:
        ops = self.ops
        r0, n, r1, p = (int(v) for v in self.u.shape)
        mat = ops.reshape(self.u, (r0 * n, r1 * p))
        kept, trunc_mat, orthonormal = self._truncated(k, mat, forward=True)
        rank = int(kept.shape[1])
        trunc = ops.reshape(trunc_mat, (r0, n, r1, p))
        extra = self._kick_columns(rank) if self.enrich else 0
        if extra > 0:
            zt = ops.reshape(self.residual(k, trunc, "x", "z"), (r0 * n, -1))  # (r0 n, rz p)
            if int(zt.shape[1]) > extra:  # more residual directions than room: the dominant ones
                zt = self._dominant(zt, extra, columns=True)
            q, _ = ops.qr(ops.concat([kept, zt], axis=1))
        else:
            q = kept if orthonormal else ops.qr(kept)[0]
        carry = ops.mm(ops.H(q), trunc_mat)  # (rank', r1 p)
        if self.enrich:
            self._refit_z(k, trunc, forward=True)
        rank2 = int(q.shape[1])
        self.x[k] = ops.reshape(q, (r0, n, rank2))
        nxt = self.x[k + 1]
        _, n2, r2 = (int(v) for v in nxt.shape)
        carry = ops.reshape(ops.permute(ops.reshape(carry, (rank2, r1, p)), (0, 2, 1)), (rank2 * p, r1))
        t = ops.mm(carry, ops.reshape(nxt, (r1, n2 * r2)))  # (rank', p, n2, r2)
        self.u = ops.permute(ops.reshape(t, (rank2, p, n2, r2)), (0, 2, 3, 1))
        self._update_left(k)
        self.k = k + 1

    def _move_left(self, k: int) -> None:
        ops = self.ops
        r0, n, r1, p = (int(v) for v in self.u.shape)
        mat = ops.reshape(ops.permute(self.u, (0, 3, 1, 2)), (r0 * p, n * r1))
        kept, trunc_mat, orthonormal = self._truncated(k, ops.H(mat), forward=False)
        rows = ops.H(kept)  # (rank, n r1)
        trunc_mat = ops.H(trunc_mat)
        rank = int(rows.shape[0])
        trunc = ops.permute(ops.reshape(trunc_mat, (r0, p, n, r1)), (0, 2, 3, 1))
        extra = self._kick_columns(rank) if self.enrich else 0
        if extra > 0:
            zt = self.residual(k, trunc, "z", "x")  # (rz, n, r1, p)
            zt = ops.reshape(ops.permute(zt, (0, 3, 1, 2)), (-1, n * r1))
            if int(zt.shape[0]) > extra:
                zt = self._dominant(zt, extra, columns=False)
            q, _ = ops.qr(ops.H(ops.concat([rows, zt], axis=0)))  # (n r1, rank')
        else:
            q = ops.H(rows) if orthonormal else ops.qr(ops.H(rows))[0]
        carry = ops.mm(trunc_mat, q)  # (r0 p, rank')
        if self.enrich:
            self._refit_z(k, trunc, forward=False)
        rank2 = int(q.shape[1])
        self.x[k] = ops.reshape(ops.H(q), (rank2, n, r1))
        prev = self.x[k - 1]
        r_, n0, _ = (int(v) for v in prev.shape)
        t = ops.mm(
            ops.reshape(prev, (r_ * n0, r0)), ops.reshape(carry, (r0, p * rank2))
        )  # (r_, n0, p, rank')
        self.u = ops.permute(ops.reshape(t, (r_, n0, p, rank2)), (0, 1, 3, 2))
        self._update_right(k)
        self.k = k - 1

    def _truncated(self, k: int, mat: Array, *, forward: bool) -> tuple[Array, Array, bool]:
        """``(kept, truncated, orthonormal)`` for the unfolding ``mat`` (the bond's side as rows).

        ``kept`` spans the kept left singular subspace (orthonormal when the flag says so; otherwise its columns
        are orthogonal with the singular values as norms) and ``truncated`` is ``mat`` projected on it. By an
        SVD, or, where ``gram_rank^2 >= 10 u cols``, by the eigenvectors of the small Gram matrix ``mat^H mat``:
        ``mat V_r`` and ``mat V_r V_r^H`` (an exact projection whatever the accuracy of V), ~3x cheaper than
        the SVD at rank 80 and accurate in the squared singular values to ``~u cols s_max^2``, a tenth of what
        that threshold lets a bond discard.
        """
        ops = self.ops
        rows, cols = (int(v) for v in mat.shape)
        room = rows  # the bond's whole space on this side
        if cols <= rows and self.gram_rank**2 >= 10.0 * ops.eps * cols:
            values, vectors = ops.eigh(ops.mm(ops.H(mat), mat))
            order = ops.xp.asarray(list(range(cols - 1, -1, -1)), device=ops.device)
            vectors = ops.xp.take(vectors, order, axis=1)
            s = ops.xp.sqrt(ops.xp.clip(ops.xp.take(ops.xp.real(values), order), 0, None))
            rank = self.choose_rank(k, (None, s, None), forward)
            self._note_growth(rank, cols, room)
            basis = vectors[:, :rank]
            kept = ops.mm(mat, basis)
            return kept, ops.mm(kept, ops.H(basis)), False
        u_mat, s, vh = ops.svd(mat)
        rank = self.choose_rank(k, (u_mat, s, vh), forward)
        self._note_growth(rank, int(s.shape[0]), room)
        kept = u_mat[:, :rank]
        return kept, ops.mm(kept, s[:rank, None] * vh[:rank, :]), True

    def _note_growth(self, rank: int, available: int, room: int) -> None:
        """Record whether this bond's rank is limited by growth: every column kept, and the space not full."""
        self.growth_limited = self.growth_limited or (rank == available and available < room)

    def _kick_columns(self, rank: int) -> int:
        """Enrichment columns at a bond of this rank: ``min(kick, max(4, rank))`` (growth by up to 2x), capped."""
        extra = min(self.kick, max(4, rank))
        if self.max_rank is None:
            return extra
        allowed = max(0, min(extra, self.max_rank - rank))
        self.capped = self.capped or allowed < extra  # the cap kept the ranks from growing
        return allowed

    def _dominant(self, mat: Array, count: int, *, columns: bool) -> Array:
        """The ``count`` dominant left (``columns``) or right singular vectors of ``mat`` (as columns/rows)."""
        ops = self.ops
        rows, cols = (int(v) for v in mat.shape)
        if (cols if columns else rows) <= count:  # nothing to choose: an orthonormal basis of all of them
            if columns:
                return ops.qr(mat)[0]
            return ops.H(ops.qr(ops.H(mat))[0])
        u, _, vh = ops.svd(mat)
        return u[:, :count] if columns else vh[:count, :]

    def _refit_z(self, k: int, trunc: Array, *, forward: bool) -> None:
        """Z's core k fitted to the residual of the truncated centre on Z's own frames (then orthonormal)."""
        ops = self.ops
        zk = self.residual(k, trunc, "z", "z")  # (sz, n, sz', p)
        sz, n, sz2, p = (int(v) for v in zk.shape)
        if forward:
            basis = self._dominant(ops.reshape(zk, (sz * n, sz2 * p)), min(self.kick, sz * n), columns=True)
            self.z[k] = ops.reshape(basis, (sz, n, int(basis.shape[1])))
        else:
            mat = ops.reshape(ops.permute(zk, (0, 3, 1, 2)), (sz * p, n * sz2))
            basis = self._dominant(mat, min(self.kick, n * sz2), columns=False)
            self.z[k] = ops.reshape(basis, (int(basis.shape[0]), n, sz2))

    # --- the train ----------------------------------------------------------------------------------
    def cores(self, column: int | None = None) -> list[Array]:
        """The TT-layout cores of column ``column`` of the block (p = 1: the only one)."""
        ops = self.ops
        center = self.u[..., 0 if column is None else column]
        cores = list(self.x)
        cores[self.k] = ops.reshape(center, tuple(int(v) for v in center.shape))
        return cores

    def ranks(self) -> tuple[int, ...]:
        return (1, *(int(c.shape[2]) for c in self.x[:-1]), 1)


def svd_tail(s: np.ndarray) -> np.ndarray:
    """``tail[r] = sqrt(sum_{i >= r} s_i^2)`` for descending ``s`` (length len(s) + 1), without overflow."""
    top = float(np.max(s)) if s.size else 0.0
    if not top > 0.0:
        return np.zeros(s.size + 1)
    scaled = s / top
    tail = np.concatenate([np.cumsum((scaled * scaled)[::-1])[::-1], [0.0]])
    return np.sqrt(tail) * top


def frobenius_rank(s: np.ndarray, threshold: float, cap: int | None) -> tuple[int, bool]:
    """The smallest rank whose discarded singular values have root-sum-square <= ``threshold``, and if capped."""
    tail = svd_tail(s)
    fits = np.nonzero(tail <= threshold)[0]
    needed = max(1, int(fits[0])) if fits.size else int(s.size)
    if cap is not None and needed > cap:
        return cap, True
    return needed, False
