"""AMEn for ``A x = b`` in TT form: the local systems, the rank rule, the stopping rule and stagnation."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from .. import _backend as B
from .._backend import Array
from .._cross import ConvergenceWarning
from ..decomp import round as round_tt
from ..ops import add, matvec, norm, scale
from ..tt import TT, TTM
from . import _krylov
from ._local import vec_left, vec_local, vec_right
from ._ops import Ops
from ._sweep import Sweeper

# Local systems up to this many unknowns are assembled and solved by LU; larger ones by a Krylov method with the
# operator applied in factored form. LU costs ~N^3/3 flops plus N^2 R^2 to assemble; CG ~k factored products of
# O(R r^3 n) each plus ~20 us of Python per iteration. Measured on one CPU thread (``python
# benchmarks/bench_solvers.py --switch``, benchmarks/results/solvers.md; CG without preconditioner from a
# 1e-3-perturbed solution, as a sweep hands it over): LU 1.3 ms vs CG 2.1 ms at N = 288, 6.5 vs 3.3 ms at
# N = 512; the Kronecker-sum preconditioner only moves the crossover down.
DENSE_SOLVE = 400

# The residual has to fall by this factor over the last STALL_WINDOW passes, or the solver stops (stagnation).
STALL_FACTOR = 0.5
STALL_WINDOW = 3


@dataclass(frozen=True)
class SolveInfo:
    """What :func:`tensornet.linalg.solve` did (``return_info=True``).

    ``residuals``: ``||A x - b|| / ||b||`` after each pass (one sweep over the cores in one direction),
    computed in TT form; ``ranks``: the solution's ranks after each pass; ``local_solves`` / ``dense`` /
    ``krylov``: local systems solved (and how); ``products``: local operator products (columns) in the
    Krylov solves and rank searches; ``converged``: ``residual <= tol``; ``stagnated``: stopped because
    the residual stopped falling; ``capped``: ``max_rank`` bound a truncation; ``seconds``: wall time.
    """

    residual: float
    residuals: list[float] = field(default_factory=list)
    ranks: list[tuple[int, ...]] = field(default_factory=list)
    passes: int = 0
    local_solves: int = 0
    dense: int = 0
    krylov: int = 0
    products: int = 0
    converged: bool = False
    stagnated: bool = False
    capped: bool = False
    symmetric: bool = False
    seconds: float = 0.0


class SolveSweeper(Sweeper):
    """AMEn for ``A x = b``: local Galerkin systems, residual-based truncation, enrichment by the residual."""

    def __init__(
        self, ops: Ops, w: list[Array], b: list[Array], x: list[Array], z: list[Array], kick: int
    ) -> None:
        center = ops.reshape(x[0], (*(int(v) for v in x[0].shape), 1))
        super().__init__(ops, w, x, center, z, kick)
        self.b = b
        one = ops.eye(1)
        self.bxl: list[Any] = [one] + [None] * (self.d - 1)
        self.bxr: list[Any] = [None] * (self.d - 1) + [one]
        self.bzl: list[Any] = list(self.bxl)
        self.bzr: list[Any] = list(self.bxr)
        self.symmetric = False
        self.solve_target = 0.0  # absolute local residual the solves aim for
        self.trunc_target = 0.0  # absolute local residual the truncation may reach
        self.max_initial = 0.0  # largest local residual before a solve in this pass (absolute)
        self._h: Any = None
        self._f: Any = None
        self._achieved = 0.0
        self.build()

    def _update_left(self, k: int) -> None:
        super()._update_left(k)
        self.bxl[k + 1] = vec_left(self.ops, self.bxl[k], self.x[k], self.b[k])
        self.bzl[k + 1] = vec_left(self.ops, self.bzl[k], self.z[k], self.b[k])

    def _update_right(self, k: int) -> None:
        super()._update_right(k)
        self.bxr[k - 1] = vec_right(self.ops, self.bxr[k], self.x[k], self.b[k])
        self.bzr[k - 1] = vec_right(self.ops, self.bzr[k], self.z[k], self.b[k])

    def residual(self, k: int, u: Array, left: str, right: str) -> Array:
        ops = self.ops
        lb = self.bxl[k] if left == "x" else self.bzl[k]
        rb = self.bxr[k] if right == "x" else self.bzr[k]
        f = vec_local(ops, lb, self.b[k], rb)
        h = self.local_operator(k, left, right)
        hu = h.matvec(ops.reshape(u, (h.cols, 1)))
        self.stats["products"] += 1
        return ops.reshape(f, (*(int(v) for v in f.shape), 1)) - ops.reshape(
            hu, (*(int(v) for v in f.shape), 1)
        )

    def solve_local(self, k: int) -> None:
        ops = self.ops
        h = self.local_operator(k)
        f = ops.reshape(vec_local(ops, self.bxl[k], self.b[k], self.bxr[k]), (h.size, 1))
        u0 = ops.reshape(self.u, (h.cols, 1))
        initial = ops.norm(f - h.matvec(u0))
        self.max_initial = max(self.max_initial, initial)
        self.stats["local_solves"] += 1
        if initial <= self.solve_target:
            u, achieved = u0, initial
        elif h.size <= DENSE_SOLVE:
            u, achieved = self._dense(h.dense(), f)
            self.stats["dense"] += 1
        else:
            u, achieved = self._krylov(h, f, u0)
            self.stats["krylov"] += 1
        self.stats["products"] += h.products
        self._h, self._f, self._achieved = (h, f, achieved)
        self.u = ops.reshape(u, tuple(int(v) for v in self.u.shape))

    def _dense(self, hd: Array, f: Array) -> tuple[Array, float]:
        ops = self.ops
        try:
            u = ops.solve(hd, f)
            if not B.all_finite(u):
                raise ValueError("non-finite local solution")
        except (ValueError, RuntimeError, ArithmeticError):  # singular local matrix: least squares
            u = ops.lstsq_solve(hd, f)
        return u, ops.norm(f - ops.mm(hd, u))

    def _krylov(self, h: Any, f: Array, u0: Array) -> tuple[Array, float]:
        precond = h.kron_sum()
        apply = precond.apply if precond is not None else None
        if self.symmetric:
            result = _krylov.cg(self.ops, h.matvec, f, u0, self.solve_target, 400, apply)
            if not result.breakdown:
                return result.x, result.residual
        result = _krylov.gmres(self.ops, h.matvec, f, u0, self.solve_target, 400, apply)
        return result.x, result.residual

    def choose_rank(self, k: int, factors: tuple[Array, Array, Array], rows_first: bool) -> int:
        """Smallest rank whose truncated centre keeps the local residual within the truncation target."""
        ops = self.ops
        u_mat, s, vh = factors
        full = int(s.shape[0])
        limit = max(self.trunc_target, 1.5 * self._achieved)
        h, f = self._h, self._f

        def fits(rank: int) -> bool:
            # p = 1: the (r n, r') unfolding flattens to the centre's C order; moving left, the factors are those
            # of the conjugate transpose of the (r, n r') unfolding
            approx = ops.mm(u_mat[:, :rank] * s[None, :rank], vh[:rank, :])
            approx = approx if rows_first else ops.H(approx)
            self.stats["products"] += 1
            return ops.norm(f - h.matvec(ops.reshape(approx, (h.cols, 1)))) <= limit

        lo, hi = 1, full
        if self.max_rank is not None and self.max_rank < full:
            if not fits(self.max_rank):
                self.capped = True
                return self.max_rank
            hi = self.max_rank
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo


def residual_norm(a: TTM, x: TT, b: TT) -> float:
    """``||A x - b||_F`` in TT form (QR sweep over the difference's cores: accurate to working precision)."""
    return B.to_float(norm(add(matvec(a, x), scale(b, -1.0))))


def _sweep_once(sweeper: SolveSweeper, forward: bool, d: int, local_tol: float, residual: float) -> None:
    """One AMEn pass (a local solve for d = 1); ``residual`` is the last pass's ``||A x - b||``."""
    # early passes solve loosely (the frames will change); the targets tighten with the residual
    sweeper.trunc_target = local_tol
    sweeper.solve_target = max(0.5 * local_tol, 0.05 * residual)
    sweeper.max_initial = 0.0
    if d == 1:
        sweeper.solve_local(0)
    else:
        for _ in range(d - 1):
            sweeper.step(forward)


def _stagnated(residuals: list[float]) -> bool:
    """Whether the last :data:`STALL_WINDOW` passes failed to cut the best earlier residual by STALL_FACTOR."""
    return len(residuals) > STALL_WINDOW and min(residuals[-STALL_WINDOW:]) > STALL_FACTOR * min(
        residuals[:-STALL_WINDOW]
    )


def run(
    ops: Ops,
    a: TTM,
    b: TT,
    x0: TT,
    z0: TT,
    *,
    tol: float,
    max_rank: int | None,
    max_sweeps: int,
    symmetric: bool,
    kick: int,
) -> tuple[TT, SolveInfo]:
    """The AMEn passes until the TT-form residual meets ``tol``, stagnates, or ``max_sweeps`` passes."""
    start = time.perf_counter()
    d = a.ncores
    norm_b = B.to_float(norm(b))
    sweeper = SolveSweeper(ops, list(a.cores), list(b.cores), list(x0.cores), list(z0.cores), kick)
    sweeper.symmetric, sweeper.max_rank = symmetric, max_rank
    local_tol = tol / math.sqrt(d) * norm_b
    residuals: list[float] = []
    ranks: list[tuple[int, ...]] = []
    best: tuple[float, list[Array]] = (math.inf, list(x0.cores))
    current = 1.0
    stagnated = False
    for sweep in range(max_sweeps):
        _sweep_once(sweeper, sweep % 2 == 0, d, local_tol, current * norm_b)
        x = TT._trusted(sweeper.cores())
        current = residual_norm(a, x, b) / norm_b
        residuals.append(current)
        ranks.append(x.ranks)
        if current < best[0]:
            best = (current, list(x.cores))
        if current <= tol:
            break
        if _stagnated(residuals):
            stagnated = True
            break
    best = _compressed(a, b, best, tol, norm_b)
    stats = sweeper.stats
    info = SolveInfo(
        residual=best[0],
        residuals=residuals,
        ranks=ranks,
        passes=len(residuals),
        local_solves=stats["local_solves"],
        dense=stats["dense"],
        krylov=stats["krylov"],
        products=stats["products"],
        converged=best[0] <= tol,
        stagnated=stagnated,
        capped=sweeper.capped,
        symmetric=symmetric,
        seconds=time.perf_counter() - start,
    )
    return TT._trusted(best[1]), info


def _compressed(
    a: TTM, b: TT, best: tuple[float, list[Array]], tol: float, norm_b: float
) -> tuple[float, list[Array]]:
    """The solution rounded to smaller ranks where the TT-form residual stays within ``max(tol, reached)``.

    The last pass leaves the enrichment's directions (zero or small) in the ranks. Rounding at ``tol / 10``
    (relative Frobenius) is tried first; if the residual grows past the limit (an ill-conditioned A
    amplifies the rounding), the growth measured per unit of eps sets a second, smaller eps, and the
    rounding level ``100 u`` (only the zero directions) comes last. A candidate is kept only if its
    residual, checked in TT form, meets the limit.
    """
    residual, cores = best
    x = TT._trusted(cores)
    limit = max(tol, residual * 1.01)
    floor = 100.0 * B.finfo_eps(cores[0])
    eps = 0.1 * tol
    for attempt in range(3):
        candidate = round_tt(x, eps=eps)
        if candidate.ranks == x.ranks:
            value = residual
        else:
            value = residual_norm(a, candidate, b) / norm_b
            if value <= limit:
                return value, list(candidate.cores)
        if attempt == 0 and value > residual:  # the residual's growth per unit of eps sets the next eps
            eps = max(0.5 * (limit - residual) * eps / (value - residual), floor)
        else:
            eps = floor
    return residual, cores


def warn_unconverged(info: SolveInfo, tol: float, max_sweeps: int) -> None:
    """The :class:`ConvergenceWarning` of a solve that did not meet ``tol``, saying why."""
    if info.converged:
        return
    if info.capped:
        why = "max_rank capped the ranks (no room left to grow them); raise max_rank to meet tol"
    elif info.stagnated:
        why = (
            f"the residual stopped falling (less than {1 / STALL_FACTOR:g}x over {STALL_WINDOW} passes): tol is "
            "below what rounding allows for this A (the residual of the exact solution is ~cond(A) u), or the "
            "local solves cannot reach it; a better-conditioned formulation is needed to go lower"
        )
    else:
        why = f"max_sweeps={max_sweeps} passes were not enough; raise max_sweeps"
    B.warn(
        f"solve: ||A x - b|| / ||b|| = {info.residual:.3g} > tol = {tol:g} after {info.passes} passes; {why}",
        ConvergenceWarning,
    )
