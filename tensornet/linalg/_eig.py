"""Block AMEn / DMRG for the k extreme eigenpairs of a symmetric TTM: local eigenproblems and the stopping rule."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _backend as B
from .._backend import Array
from .._cross import ConvergenceWarning
from ..decomp import round as round_tt
from ..tt import TT, TTM
from . import _krylov
from ._local import vec_left, vec_right
from ._ops import Ops
from ._sweep import Sweeper, frobenius_rank

# Local eigenproblems up to this size are assembled and solved by one dense ``eigh`` (~9 N^3 flops); larger ones by
# Lanczos (or preconditioned Davidson) from the current centre, which a sweep hands over nearly converged. Measured
# on one CPU thread (``python benchmarks/bench_solvers.py --switch``, benchmarks/results/solvers.md): dense eigh
# 0.5 ms at N = 72, 1.5 ms at 128, 8.9 ms at 288; Lanczos from a 1e-3-perturbed eigenvector 1.1, 1.4, 1.6 ms.
DENSE_EIG = 128
LOOSE = 0.02  # early passes solve their local problems to 2% of the previous pass's largest residual


@dataclass(frozen=True)
class EigInfo:
    """What :func:`tensornet.linalg.eigsh` did (``return_info=True``).

    ``values``: the k values after each pass; ``ranks``: the block's ranks after each pass;
    ``local_residuals``: per pass, the largest residual ``||H u - u theta||`` of a centre *before* its local
    solve (how far the pass found the block from a fixed point); ``local_solves``, ``dense``, ``krylov``,
    ``products`` as for :class:`tensornet.linalg.SolveInfo`; ``converged``; ``seconds``.
    """

    values: list[np.ndarray] = field(default_factory=list)
    ranks: list[tuple[int, ...]] = field(default_factory=list)
    local_residuals: list[float] = field(default_factory=list)
    passes: int = 0
    local_solves: int = 0
    dense: int = 0
    krylov: int = 0
    products: int = 0
    converged: bool = False
    capped: bool = False
    seconds: float = 0.0


class EigSweeper(Sweeper):
    """Block AMEn for ``A X = X Lambda``: local Rayleigh-Ritz problems, Frobenius truncation, residual kicks."""

    def __init__(
        self, ops: Ops, w: list[Array], x: list[Array], center: Array, z: list[Array], kick: int
    ) -> None:
        super().__init__(ops, w, x, center, z, kick)
        self.p = int(center.shape[3])
        self.nzl: list[Any] = [ops.eye(1)] + [None] * (self.d - 1)
        self.nzr: list[Any] = [None] * (self.d - 1) + [ops.eye(1)]
        self.values = np.zeros(self.p)
        self.largest = False
        self.trunc_rel = 0.0  # discarded root-sum-square per bond, relative to ||u||_F
        self.target = 0.0  # absolute residual the local eigensolver aims for
        self.tight = 0.0  # the target of the last passes (preconditioned solves always aim for it)
        self.max_initial = 0.0
        self.try_precond = True  # off for "LA" and once a local operator's Kronecker-sum part is indefinite
        self.build()

    def _update_left(self, k: int) -> None:
        super()._update_left(k)
        if self.enrich:
            self.nzl[k + 1] = vec_left(self.ops, self.nzl[k], self.z[k], self.x[k])

    def _update_right(self, k: int) -> None:
        super()._update_right(k)
        if self.enrich:
            self.nzr[k - 1] = vec_right(self.ops, self.nzr[k], self.z[k], self.x[k])

    def _project(self, u: Array, left: Array | None, right: Array | None) -> Array:
        """``(left (x) I (x) right) u`` for u (r, n, r', p); None is the identity (an X frame on itself)."""
        ops = self.ops
        r0, n, r1, p = (int(v) for v in u.shape)
        if left is not None:
            u = ops.reshape(ops.mm(left, ops.reshape(u, (r0, n * r1 * p))), (-1, n, r1, p))
        if right is not None:
            s = int(u.shape[0])
            t = ops.mm(ops.reshape(ops.permute(u, (0, 1, 3, 2)), (s * n * p, r1)), ops.permute(right, (1, 0)))
            u = ops.permute(ops.reshape(t, (s, n, p, int(right.shape[0]))), (0, 1, 3, 2))
        return u

    def residual(self, k: int, u: Array, left: str, right: str) -> Array:
        ops = self.ops
        h = self.local_operator(k, left, right)
        _r0, n, _r1, p = (int(v) for v in u.shape)
        hu = ops.reshape(h.matvec(ops.reshape(u, (h.cols, p))), (h.s, n, h.s2, p))
        self.stats["products"] += p
        nu = self._project(u, self.nzl[k] if left == "z" else None, self.nzr[k] if right == "z" else None)
        return hu - nu * ops.real_asarray(self.values.reshape(1, 1, 1, -1))

    def solve_local(self, k: int) -> None:
        ops = self.ops
        h = self.local_operator(k)
        u0 = ops.reshape(self.u, (h.cols, self.p))
        self.stats["local_solves"] += 1
        if h.size <= DENSE_EIG:
            dense = h.dense()
            initial = _ritz_residual(ops, ops.mm(dense, u0), u0)
            result = _krylov.dense_eigh(ops, dense, self.p, largest=self.largest)
            self.stats["dense"] += 1
        elif (precond := h.kron_sum() if self.try_precond else None) is not None:
            # with a near-inverse preconditioner a tight solve costs a few products: no loose early passes
            result = _krylov.block_eigh(
                ops, h.matvec, u0, self.p, self.tight, 40 * self.p, largest=False, precond=precond.apply
            )
            initial = result.initial
            self.stats["krylov"] += 1
        elif self.p == 1:
            result = _krylov.lanczos(ops, h.matvec, u0, self.target, 40, largest=self.largest)
            initial = result.initial
            self.stats["krylov"] += 1
        else:
            result = _krylov.block_eigh(
                ops, h.matvec, u0, self.p, self.target, 40 * self.p, largest=self.largest
            )
            initial = result.initial
            self.stats["krylov"] += 1
        self.try_precond = self.try_precond and not h.indefinite  # an indefinite A stays indefinite
        self.stats["products"] += h.products
        self.max_initial = max(self.max_initial, initial)
        self.values = result.values
        self.u = ops.reshape(result.vectors, tuple(int(v) for v in self.u.shape))

    def choose_rank(self, k: int, factors: tuple[Array, Array, Array], rows_first: bool) -> int:
        s = self.ops.host(factors[1]).real.astype(np.float64)
        rank, capped = frobenius_rank(s, self.trunc_rel * math.sqrt(self.p), self.max_rank)
        self.capped = self.capped or capped
        # the next centre must hold p vectors: (rank n r) >= p
        nxt = self.x[k + 1] if rows_first else self.x[k - 1]
        other = int(nxt.shape[1]) * (int(nxt.shape[2]) if rows_first else int(nxt.shape[0]))
        return min(max(rank, -(-self.p // other)), int(s.size))


def _ritz_residual(ops: Ops, hu: Array, u: Array) -> float:
    """Largest residual of the Ritz pairs of the block ``u`` (orthonormal columns) given ``hu = H u``."""
    g = ops.host(ops.inner(u, hu))
    theta, y = np.linalg.eigh((g + g.conj().T) / 2)
    yd = ops.asarray(y)
    resid = ops.mm(hu, yd) - ops.mm(u, yd) * ops.real_asarray(theta.reshape(1, -1))
    return float(np.max(ops.col_norms(resid)))


def _sweeper(
    ops: Ops, a: TTM, x: list[Array], center: Array, z: list[Array], tol: float, largest: bool,
    max_rank: int | None, kick: int,
) -> EigSweeper:  # fmt: skip
    """The sweeper of an eigsh: its truncation rule from ``tol``, preconditioned for the smallest values."""
    sweeper = EigSweeper(ops, list(a.cores), x, center, z, kick)
    sweeper.largest, sweeper.max_rank = largest, max_rank
    sweeper.try_precond = not largest
    sweeper.trunc_rel = math.sqrt(tol / max(a.ncores - 1, 1))
    sweeper.gram_rank = sweeper.trunc_rel
    return sweeper


def _sweep_once(sweeper: EigSweeper, sweep: int, d: int, tol: float, scale: float, previous: float) -> None:
    """One AMEn pass over the cores (a local solve for d = 1); the local targets from the last pass."""
    # the frames move while the block is far from converged: solve to a fraction of the last pass's residual
    sweeper.tight = 0.1 * math.sqrt(tol) * scale
    sweeper.target = max(sweeper.tight, LOOSE * min(previous, scale))
    sweeper.max_initial = 0.0
    sweeper.growth_limited = False
    if d == 1:
        sweeper.solve_local(0)
    else:
        for _ in range(d - 1):
            sweeper.step(sweep % 2 == 0)
    if sweep >= 1 and not sweeper.growth_limited:
        # every bond now truncates by tol (or holds its whole space): the ranks have settled, and the rest
        # is one-core DMRG without the residual train (its refits cost ~a third of a step)
        sweeper.enrich = False


def _settled(values: list[np.ndarray], local: float, tol: float, scale: float) -> bool:
    """Whether the values moved by at most ``tol * scale`` in the last pass and the local residuals are small."""
    return (
        len(values) >= 2
        and float(np.max(np.abs(values[-1] - values[-2]))) <= tol * scale
        and local <= math.sqrt(tol) * scale
    )


def run(
    ops: Ops,
    a: TTM,
    x: list[Array],
    center: Array,
    z: list[Array],
    *,
    tol: float,
    scale: float,
    largest: bool,
    max_rank: int | None,
    max_sweeps: int,
    kick: int,
) -> tuple[np.ndarray, list[TT], EigInfo]:
    """Block AMEn passes until the values and the local residuals settle, or ``max_sweeps`` passes."""
    start = time.perf_counter()
    d = a.ncores
    sweeper = _sweeper(ops, a, x, center, z, tol, largest, max_rank, kick)
    values: list[np.ndarray] = []
    ranks: list[tuple[int, ...]] = []
    local: list[float] = []
    converged = False
    for sweep in range(max_sweeps):
        _sweep_once(sweeper, sweep, d, tol, scale, local[-1] if local else math.inf)
        values.append(np.array(sweeper.values))
        ranks.append(sweeper.ranks())
        local.append(sweeper.max_initial)
        scale = max(scale, float(np.max(np.abs(sweeper.values))))
        if d == 1 or _settled(values, sweeper.max_initial, tol, scale):
            converged = True
            break
    # the shared frames carry every vector's directions (and, next to the centre, k times the left states):
    # rounding at 100 u drops only the directions a vector does not use, so orthonormality is kept
    floor = 100.0 * ops.eps
    vectors = [round_tt(TT._trusted(sweeper.cores(i)), eps=floor) for i in range(sweeper.p)]
    stats = sweeper.stats
    info = EigInfo(
        values=values, ranks=ranks, local_residuals=local, passes=len(values), local_solves=stats["local_solves"],
        dense=stats["dense"], krylov=stats["krylov"], products=stats["products"], converged=converged,
        capped=sweeper.capped, seconds=time.perf_counter() - start,
    )  # fmt: skip
    return np.array(sweeper.values), vectors, info


def warn_unconverged(info: EigInfo, tol: float, max_sweeps: int) -> None:
    """The :class:`ConvergenceWarning` of an eigsh that did not settle within ``max_sweeps`` passes."""
    if info.converged:
        return
    change = float(np.max(np.abs(info.values[-1] - info.values[-2]))) if len(info.values) > 1 else math.inf
    why = "max_rank capped the ranks; raise max_rank" if info.capped else "raise max_sweeps"
    B.warn(
        f"eigsh: not converged after {info.passes} passes (max_sweeps={max_sweeps}): the values changed by "
        f"{change:.3g} in the last pass and the largest local residual was {info.local_residuals[-1]:.3g} "
        f"(tol={tol:g}); {why}",
        ConvergenceWarning,
    )
