"""Rounding sweeps (private): the certified two-sweep algorithm, on one train or on a sum of trains.

Every route below keeps the guarantee of :mod:`tensornet.decomp` (``||x - y||_F <= eps ||x||_F`` with the
per-unfolding threshold ``eps / sqrt(d - 1) ||x||_F``) and logs an honest bound; they differ in how the
first sweep and each truncation of the second sweep are computed, chosen per call and per bond:

* First sweep (right to left): R-only Householder QRs (:func:`right_factors`). With ``drop_noise`` the
  trailing rows of each R whose root-sum-square is within the QR's own backward error
  (``4 sqrt(max(m, n)) u ||A||_F``, u the unit roundoff) are dropped, so exactly rank-deficient sums
  (``t + t + t``, ``a - 2a + 3a``, a term in the span of the others) shrink to their true rank at the
  first bond that reveals it instead of carrying the zero directions through every later QR and SVD.
  This is done only where that tolerance is below 1% of the relative per-bond threshold, never for
  ``eps = 0``.
* Second sweep (left to right), per bond: the certified Gram truncation of the small (s n, rho) matrix
  (:func:`tensornet._truncation.gram_factors`: eigenvectors of its Gram matrix, discarded norm measured
  from the rotated matrix itself, rank minimality certified by Ostrowski's theorem, the Gram-SVD idea of
  Al Daas, Ballard and Benner, "Parallel algorithms for tensor train arithmetic", SISC 44 (2022)), which
  falls back to the SVD at that bond where it cannot certify (eps = 0, a binding ``max_rank``, a kept
  singular value within ~sqrt(u) of the threshold, extreme scale).

Randomized rounding (Al Daas, Ballard, Cazeaux, Hallman, Miedlar, Pasha, Reid, Saibaba, "Randomized
algorithms for rounding in the tensor-train format", SISC 45 (2023)) is not used: its error can only be
certified through ``||x||^2 - ||y||^2``, accurate to ~sqrt(u) ||x|| only, and its rank must be guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _backend as B
from . import _pow2
from ._backend import Array
from ._orthogonal import differentiable_sweep
from ._truncation import (
    ErrorLog,
    choose_rank,
    differentiable,
    gram_factors,
    log_rank,
    qr_r,
    row_norms2,
    svd,
)
from .tt import TrainT

# Noise tolerance of the first sweep, in units of u ||A||_F: Householder QR's backward error is
# O(sqrt(m n) u ||A||); the trailing rows of exactly dependent columns measure ~2 u ||A||_F.
_NOISE_FACTOR = 4.0


@dataclass(frozen=True)
class Route:
    """Private switches of the sweeps (tests force each combination).

    ``gram``: try the certified Gram truncation at each bond of the second sweep (SVD where it cannot
    certify); ``drop_noise``: drop the first sweep's trailing R rows within the QR's rounding;
    ``split``: take the SVD of the leading columns only when the trailing ones are negligible.
    """

    gram: bool = True
    drop_noise: bool = True
    split: bool = True
    gram_min: int = 48  # below this size the (s n, rho) matrix's SVD is cheaper than the Gram route


AUTO = Route()
PLAIN = Route(gram=False, drop_noise=False, split=False)  # R-only QRs, then SVDs: the reference sweep


# --- the two products the sweeps need, on one train or on the block cores of a sum -------------------
class Train:
    """A train's cores ``(r_{k-1}, n_k, r_k)``."""

    def __init__(self, cores: list[Array]) -> None:
        self.cores = cores
        self.d = len(cores)
        self.xp = B.fast_namespace(*cores)

    def mode(self, k: int) -> int:
        return int(self.cores[k].shape[1])

    def right(self, k: int, factor: Array) -> Any:
        """``core_k x_3 factor`` unfolded ``(r_{k-1}, n_k rho)``; ``factor`` (rho, r_k) or None."""
        xp, core = self.xp, self.cores[k]
        r, n, rk = (int(s) for s in core.shape)
        if factor is None:
            return xp.reshape(core, (r, n * rk))
        return xp.reshape(xp.matmul(xp.reshape(core, (r * n, rk)), factor.T), (r, -1))

    def left(self, k: int, carry: Array) -> Any:
        """``carry x_1 core_k`` unfolded ``(s n_k, r_k)``; ``carry`` (s, r_{k-1}) or None."""
        xp, core = self.xp, self.cores[k]
        r, n, rk = (int(s) for s in core.shape)
        if carry is None:
            return xp.reshape(core, (r * n, rk))
        return xp.reshape(xp.matmul(carry, xp.reshape(core, (r, n * rk))), (-1, rk))

    def last(self, carry: Array) -> Any:
        """``carry x_1 core_{d-1}`` as ``(s, n_d)``."""
        xp, core = self.xp, self.cores[-1]
        return xp.matmul(carry, xp.reshape(core, (int(core.shape[0]), -1)))


class Sum:
    """The sum of trains ``t_1 + ... + t_m`` without its block cores.

    As a train, its core k is block diagonal (first core: the terms' first cores side by side; last core:
    stacked), so a product with it costs ``sum_i r_i^2`` instead of ``(sum_i r_i)^2`` per slice, and the zero
    blocks are never stored.
    """

    def __init__(self, trains: list[list[Any]]) -> None:
        self.trains = trains
        self.d = len(trains[0])
        self.xp = B.fast_namespace(*(c for cores in trains for c in cores))
        self.offsets = []  # offsets[k][i]: first column of term i at bond k (between cores k and k+1)
        for k in range(self.d - 1):
            sizes = [int(cores[k].shape[2]) for cores in trains]
            self.offsets.append([0, *np.cumsum(sizes).tolist()])

    def mode(self, k: int) -> int:
        return int(self.trains[0][k].shape[1])

    def right(self, k: int, factor: Array) -> Any:
        xp = self.xp
        pieces = []
        for i, cores in enumerate(self.trains):
            core = cores[k]
            r, n, rk = (int(s) for s in core.shape)
            if factor is None:
                pieces.append(xp.reshape(core, (r, n * rk)))
                continue
            part = factor[:, self.offsets[k][i] : self.offsets[k][i + 1]]
            pieces.append(xp.reshape(xp.matmul(xp.reshape(core, (r * n, rk)), part.T), (r, -1)))
        return xp.concat(pieces, axis=0)

    def left(self, k: int, carry: Array) -> Any:
        xp = self.xp
        pieces = []
        for i, cores in enumerate(self.trains):
            core = cores[k]
            r, n, rk = (int(s) for s in core.shape)
            if carry is None:
                pieces.append(xp.reshape(core, (r * n, rk)))
                continue
            part = carry[:, self.offsets[k - 1][i] : self.offsets[k - 1][i + 1]]
            pieces.append(xp.reshape(xp.matmul(part, xp.reshape(core, (r, n * rk))), (-1, rk)))
        return xp.concat(pieces, axis=1)

    def last(self, carry: Array) -> Any:
        xp = self.xp
        total = None
        for i, cores in enumerate(self.trains):
            part = carry[:, self.offsets[-1][i] : self.offsets[-1][i + 1]]
            term = xp.matmul(part, xp.reshape(cores[-1], (int(cores[-1].shape[0]), -1)))
            total = term if total is None else total + term
        return total

    def dense_cores(self) -> list[Array]:
        """The block cores of the sum (what ``t_1 + ... + t_m`` stores)."""
        xp, d = self.xp, self.d
        if d == 1:
            total = self.trains[0][0]
            for cores in self.trains[1:]:
                total = total + cores[0]
            return [total]
        out = [xp.concat([cores[0] for cores in self.trains], axis=2)]
        for k in range(1, d - 1):
            rows = []
            width = self.offsets[k][-1]
            for i, cores in enumerate(self.trains):
                core = cores[k]
                r, n, _ = (int(s) for s in core.shape)
                blocks = []
                start, stop = self.offsets[k][i], self.offsets[k][i + 1]
                if start:
                    blocks.append(xp.zeros((r, n, start), dtype=core.dtype, device=B.device(core)))
                blocks.append(core)
                if width - stop:
                    blocks.append(xp.zeros((r, n, width - stop), dtype=core.dtype, device=B.device(core)))
                rows.append(xp.concat(blocks, axis=2) if len(blocks) > 1 else core)
            out.append(xp.concat(rows, axis=0))
        out.append(xp.concat([cores[-1] for cores in self.trains], axis=0))
        return out


# --- first sweep ------------------------------------------------------------------------------------
def _select(matrix: Array, keep: np.ndarray, axis: int) -> Any:
    """The rows (axis 0) or columns (axis 1) ``keep`` (sorted indices) of ``matrix``."""
    if int(keep.size) == int(matrix.shape[axis]):
        return matrix
    if int(keep[-1]) == int(keep.size) - 1:  # a leading block: a view
        return matrix[: int(keep.size)] if axis == 0 else matrix[:, : int(keep.size)]
    xp = B.namespace(matrix)
    return xp.take(matrix, xp.asarray(keep, device=B.device(matrix)), axis=axis)


def _negligible(norms2: np.ndarray, budget2: float) -> np.ndarray:
    """Sorted indices to keep once the smallest entries of ``norms2`` are set aside.

    Set aside: the smallest entries whose sum is at most ``budget2``; at least one index is kept.
    """
    order = np.argsort(norms2, kind="stable")
    dropped = int(np.searchsorted(np.cumsum(norms2[order]), budget2, side="right"))
    dropped = min(dropped, int(norms2.size) - 1)
    return np.sort(order[dropped:])


def _drop_noise(factor: Array, tolerance: float, log: ErrorLog) -> Any:
    """``factor`` without its rows whose root-sum-square is at most ``tolerance ||factor||_F``.

    At least one row is kept. With ``A^T = Q R``, dropping any set S of rows of R (and columns of Q) changes
    A^T by exactly ``||R_S||_F``; the rows of R past a column that depends on earlier ones hold only the QR's
    rounding, and dropping them changes the factorised matrix by less than the QR's backward error. The kept
    rows need not stay triangular: F only has to satisfy ``X = F^T Q^T`` with Q orthonormal.
    """
    rows = int(factor.shape[0])
    if rows <= 1:
        return factor
    norms2 = row_norms2(factor)  # one pass and one host transfer
    top = float(np.max(norms2))
    if not top > 0.0:
        log.noise_rows += rows - 1
        return factor[:1, :]
    scaled = norms2 / top
    keep = _negligible(scaled, tolerance * tolerance * float(np.sum(scaled)))
    log.noise_rows += rows - int(keep.size)
    return _select(factor, keep, axis=0)


def right_factors(op: Train | Sum, log: ErrorLog, route: Route) -> tuple[list[Array], list[int]]:
    """Right to left, the R factors ``F_k`` (rho_k, r_{k-1}) with ``X_{>=k} = 2^(E_k) F_k^T Q_k^T``.

    Q_k is orthonormal and never formed; ``X_{>=k}`` is the (r_{k-1}, n_k...n_d) unfolding of the cores from k
    on. Each factor is divided by a power of two near its largest entry and ``E_k`` (the second list, with
    ``E_d = 0`` last) accumulates those exponents, so the running product neither under- nor overflows however
    the cores' scales run along the train (per-core normalisation alone can leave the train's norm far below
    the product of its cores' scales).
    """
    factors: list[Any] = [None] * op.d
    exponents = [0] * (op.d + 1)
    factor = None
    for k in range(op.d - 1, 0, -1):
        unfolding = op.right(k, factor)  # (r_{k-1}, n_k rho_k) = X_{>=k} in the basis Q_{k+1}
        factor = qr_r(unfolding.T)
        if route.drop_noise:
            rows, cols = (int(s) for s in unfolding.shape)
            tolerance = _NOISE_FACTOR * math.sqrt(max(rows, cols)) * B.finfo_eps(unfolding)
            if tolerance <= 0.01 * log.relative:  # far below what eps lets each bond discard
                factor = _drop_noise(factor, tolerance, log)
        factor, e = B.renormalized(factor)
        exponents[k] = exponents[k + 1] + e
        factors[k] = factor
    return factors, exponents


# --- second sweep -----------------------------------------------------------------------------------
def _truncate(reduced: Array, threshold: float | None, cap: int | None, log: ErrorLog, route: Route) -> Any:
    """Orthonormal ``U_r`` (m, rank) spanning the kept left singular subspace of ``reduced`` (m, p).

    The rank and the discarded norm are logged (``threshold`` None: from ``||reduced||_F``).
    """
    m, p = (int(s) for s in reduced.shape)
    if route.split and p > 1 and log.relative > 0.0:
        kept = _split_truncate(reduced, threshold, cap, log)
        if kept is not None:
            return kept
    if route.gram and min(m, p) >= route.gram_min:
        if m >= p:  # tall: V from the (p, p) Gram, then an orthonormal basis of reduced V_r
            found = gram_factors(reduced.T, threshold, cap, log)
            if found is not None:
                log.kernels.append("gram")
                q, _ = B.qr(found[1].T)
                return q
        else:  # wide: U straight from the (m, m) Gram
            found = gram_factors(reduced, threshold, cap, log)
            if found is not None:
                log.kernels.append("gram")
                return found[0]
    u, s, _ = svd(reduced)
    rank = log_rank(s, threshold, cap, log)
    log.kernels.append("svd")
    return u[:, :rank]


def _split_truncate(reduced: Array, threshold: float | None, cap: int | None, log: ErrorLog) -> Any | None:
    """The truncation of ``reduced = [B S]`` (m, p; columns in any order) from the SVD of B alone.

    S is made of the smallest columns that hold at most 1% of the squared threshold; None where that is not
    certified.

    Notes: the columns of ``reduced`` follow the rows of the first sweep's R factor, so the directions
    of a small term of a sum (``a + 1e-10 b``) are columns of small norm. For any orthonormal U,
    ``||(I - U U^T) [B S]||_F^2 = ||(I - U U^T) B||_F^2 + ||(I - U U^T) S||_F^2``, so keeping the
    leading singular vectors of B discards at most ``tail_B(r)^2 + ||S||_F^2``: the rank is chosen for
    ``sqrt(threshold^2 - ||S||_F^2)`` and the bound logged includes ``||S||_F``. The rank is minimal for
    ``reduced`` too when the smallest kept singular value of B exceeds the threshold (by interlacing,
    the SVD of ``reduced`` cannot drop it); otherwise, and where ``max_rank`` binds (Eckart-Young needs
    the whole matrix), None sends the caller to the full SVD. Cost: the SVD of (m, p') for p' <= p.
    """
    norms2 = row_norms2(reduced.T)
    top = float(np.max(norms2)) if norms2.size else 0.0
    if not top > 0.0 or not math.isfinite(top):
        return None
    total = math.sqrt(top) * math.sqrt(float(np.sum(norms2 / top)))
    # first bond (threshold None): ||reduced||_F is the train's norm
    limit = log.relative * total if threshold is None else threshold
    budget = 0.01 * limit * limit
    keep = _negligible(norms2 / top, budget / top)
    if int(keep.size) >= int(norms2.size):
        return None
    aside = np.ones(norms2.size, dtype=bool)
    aside[keep] = False
    small = float(np.sum(norms2[aside]))  # the set-aside columns' squared norm (at most the budget)
    u, s, _ = svd(_select(reduced, keep, axis=1))
    rank, discarded, needed = choose_rank(s, math.sqrt(limit * limit - small), cap)
    if rank < needed:
        return None
    if rank > 1 and not B.to_float(s[rank - 1]) > limit:
        return None
    if threshold is None:
        log.total, log.threshold = total, limit
    log.add(rank, math.hypot(discarded, math.sqrt(small)), needed)
    log.kernels.append("split")
    return u[:, :rank]


def sweep(op: Train | Sum, caps: list[int | None], log: ErrorLog, route: Route) -> tuple[list[Array], int]:
    """Round ``op`` (d >= 2): the cores of the result, left-orthonormal but the last, and an exponent.

    The result is ``2^exponent`` times the train of the returned cores.

    Notes: with the R factors ``F_k`` of :func:`right_factors` and the kept cores left-orthonormal,
    the k-th unfolding of x is ``U_{<k} M_k F_{k+1}^T Q_{k+1}^T`` with ``M_k = P_{k-1} core_k`` (s n, r_k),
    so the truncated SVD of the small ``M_k F_{k+1}^T`` (s n, rho) gives the rank, the new core U_r and
    the discarded norm exactly as the Q-formed algorithm (TT-Toolbox) does; the carry is
    ``P_k = U_r^H M_k``. For complex trains the first sweep's ``X = F^T Q^T`` keeps plain transposes
    (``Q^T`` has orthonormal rows when ``Q^H Q = I``), and only the carry is conjugated. The factors and the
    carry are renormalised by powers of two as the sweeps go; each bond's threshold and discarded norm are
    converted to the first bond's units (:attr:`ErrorLog.unit`), so the rule is the one stated. Cost:
    ``O(d n R^3)`` for the first sweep (R the input ranks), ``O(d n r R^2)`` for the second (r the output
    ranks).
    """
    xp = op.xp
    factors, exponents = right_factors(op, log, route)
    cores = []
    carry = None
    carried = 0  # the carry is 2^carried times the stored one
    for k in range(op.d - 1):
        matrix = op.left(k, carry)  # M_k (s n_k, r_k)
        reduced = xp.matmul(matrix, factors[k + 1].T)  # (s n_k, rho_{k+1})
        if k == 0 and not B.all_finite(reduced):
            raise ValueError(f"{log.fn}: the train has NaN or inf entries; rounding is undefined")
        log.unit = exponents[k + 1] - exponents[1] + carried
        threshold = None if k == 0 else _in_units(log.threshold, log.unit)
        kept = _truncate(reduced, threshold, caps[k], log, route)
        rows = 1 if carry is None else int(carry.shape[0])
        cores.append(xp.reshape(kept, (rows, op.mode(k), int(kept.shape[1]))))
        carry, e = B.renormalized(xp.matmul(B.conj(kept.T), matrix))  # P_k = U_r^H M_k (rank, r_k)
        carried += e
    log.unit = 0
    last = op.last(carry)
    cores.append(xp.reshape(last, (int(last.shape[0]), op.mode(op.d - 1), 1)))
    return cores, carried


def _in_units(threshold: float, unit: int) -> float:
    """``threshold / 2^unit`` (inf or 0 where that leaves float64's range: keep everything or nothing)."""
    with np.errstate(over="ignore", under="ignore"):
        return float(np.ldexp(np.float64(threshold), -unit))


def rounded(
    fn: str, like: TrainT, trains: list[list[Array]], eps: float | None, caps: list[int | None], route: Route
) -> tuple[TrainT, ErrorLog]:
    """Round the sum of ``trains`` (lists of TT-layout cores; one list: a plain train).

    The result is wrapped like ``like``; returns it with the error log (``log.total`` is the norm of
    the input). Data far from 1 are scaled by powers of two around the sweeps (:mod:`tensornet._pow2`).
    """
    d = len(trains[0])
    log = ErrorLog(fn, eps)
    log.spread(eps, d - 1)
    operand: Train | Sum
    if len(trains) == 1:
        cores, shift = _pow2.normalize_cores(fn, trains[0])
        operand = Train(cores)
    else:
        scaled, shift = _pow2.normalize_terms(fn, trains)
        operand = Sum(scaled)
    if d == 1 or any(differentiable(c) for cores in trains for c in cores):
        flat = operand.cores if isinstance(operand, Train) else operand.dense_cores()
        result, extra = differentiable_sweep(flat, caps, log)
    else:
        result, extra = sweep(operand, caps, log, route)
    return like._from_tt_layout(_pow2.restore(result, shift + extra, at=-1)), log
