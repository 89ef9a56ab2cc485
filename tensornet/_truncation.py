"""Truncation kernels shared by TT-SVD and rounding.

They are the rank rule, the error log, and the SVD / R-only QR / certified Gram kernels.

Private: :mod:`tensornet.decomp` holds the public functions and states the truncation rule.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np

from . import _backend as B
from ._backend import Array


class RankCapWarning(UserWarning):
    """``max_rank`` stopped the result from meeting ``eps``; the message gives the achieved bound."""


# --- truncation -------------------------------------------------------------------------------------
def choose_rank(singular: Array, threshold: float, cap: int | None) -> tuple[int, float, int]:
    """(rank kept, norm of the discarded values, rank eps alone would keep).

    The values are divided by the largest before squaring, so the choice is the same at every scale of
    the data (squares of 1e-200 underflow, of 1e200 overflow).
    """
    s = np.asarray(B.to_backend(singular, "numpy"), dtype=np.float64)
    top = float(np.max(s)) if s.size else 0.0
    if not top > 0.0:
        return 1, 0.0, 1
    scaled = s / top
    tail = np.concatenate([np.cumsum((scaled * scaled)[::-1])[::-1], [0.0]])  # tail[r] = sum_{i >= r}
    # compared as norms, not squares: the threshold may be any finite size (eps = 1e300 means "rank 1 is
    # fine"), and its ratio to the top value may overflow to inf, which keeps rank 1 as it should
    with np.errstate(over="ignore"):
        limit = np.float64(threshold) / np.float64(top)
    fits = np.nonzero(np.sqrt(tail) <= limit)[0]
    needed = max(1, int(fits[0]))
    rank = needed if cap is None else min(needed, cap)
    return rank, math.sqrt(float(tail[rank])) * top, needed


class ErrorLog:
    def __init__(self, fn: str, eps: float | None) -> None:
        self.fn, self.eps, self.discarded, self.capped = fn, eps, 0.0, False
        self.relative, self.total, self.threshold = 0.0, 0.0, 0.0
        self.kernels: list[str] = []  # per truncated bond of a rounding: "gram" or "svd" (for tests)
        self.noise_rows = 0  # rows of R factors dropped as rounding noise by the first sweep of round
        # the bond being truncated holds its data divided by 2^unit relative to the first bond's (the
        # sweeps renormalise their running factors): discarded norms are logged times 2^unit
        self.unit = 0

    def pending(self, singular: Array) -> float:
        """Set ``total = ||singular||`` (the tensor's norm) and return the per-unfolding threshold."""
        s = np.asarray(B.to_backend(singular, "numpy"), dtype=np.float64)
        top = float(np.max(s)) if s.size else 0.0
        self.total = top * float(np.linalg.norm(s / top)) if top > 0 else 0.0  # no overflow
        self.threshold = self.relative * self.total
        return self.threshold

    def add(self, rank: int, discarded: float, needed: int) -> None:
        """Record one truncation; ``discarded`` is the norm (not the square) of what it dropped."""
        if self.unit:
            with np.errstate(over="ignore", under="ignore"):
                discarded = float(np.ldexp(np.float64(discarded), self.unit))
        self.discarded = math.hypot(self.discarded, discarded)  # no overflow or underflow in squares
        self.capped = self.capped or rank < needed

    def spread(self, eps: float | None, bonds: int) -> None:
        """Set the per-bond relative threshold for ``eps`` over ``bonds`` truncated bonds.

        ``eps / sqrt(bonds)`` keeps the sum of the squared discarded norms within ``eps^2 ||x||^2``. From
        ``eps >= 1`` on, rank 1 everywhere already meets eps (every truncation here is an orthogonal
        projection, so its error is at most ``||x||``), and the threshold is ``eps ||x||``: each unfolding's
        tail past its first singular value is below ``||x||``, so every bond is cut to rank 1.
        """
        eps = eps or 0.0
        self.relative = eps if eps >= 1.0 else eps / math.sqrt(max(bonds, 1))

    def relative_bound(self, reference_norm: float) -> float:
        """The relative error bound: the norm of all that was discarded over ``reference_norm``.

        At most 1: the result is an orthogonal projection of the input, whose error is at most its norm
        (the sum over bonds may exceed that when every bond is cut hard).
        """
        return min(self.discarded / reference_norm, 1.0) if reference_norm > 0 else 0.0

    def finish(self, reference_norm: float) -> float:
        """The relative error bound; a :class:`RankCapWarning` (at the user's line) if a cap kept it above eps."""
        bound = self.relative_bound(reference_norm)
        self.warn_if_capped(bound)
        return bound

    def warn_if_capped(self, bound: float) -> None:
        """Warn (:class:`RankCapWarning`, at the user's line) if a rank cap kept ``bound`` above eps.

        :func:`tensornet._backend.warn` finds the user's frame: no hand-counted stacklevel.
        """
        if self.capped and self.eps is not None and bound > self.eps:
            B.warn(
                f"{self.fn}: max_rank kept the result from meeting eps={self.eps:g}; the achieved relative "
                f"error bound is {bound:.3g}. Raise max_rank to meet eps.",
                RankCapWarning,
            )


def svd(matrix: Array) -> tuple[Any, Any, Any]:
    xp = B.namespace(matrix)
    return xp.linalg.svd(matrix, full_matrices=False)


# Fast kernels. With the data not requiring grad, every SVD is taken on the small side of its matrix.
# A wide (m, N) unfolding first tries the certified Gram route (gram_factors: A A^T, its eigenvectors
# V, B = V^T A; two BLAS-3 passes, and the rank and error are verified from B itself). When that cannot
# be certified (singular values within ~sqrt(machine eps) ||A|| of the threshold, a binding max_rank,
# eps = 0, extreme scaling) it is reduced to the (m, m) triangle R of a QR of its transpose
# (A = R^T Q^T, blocked so that each block's Householder QR runs in cache); the SVD of R^T = U S W^T
# gives U and S of A, and the kept rows S W^T Q^T are formed as U_r^T A (one GEMM); Q is never built.
# Tensors that require grad take the plain SVD path, which autograd differentiates.
_BLOCK_ELEMENTS = 32768  # one block of the blocked QR: (rows, m) with rows * m ~ 256 KiB of float64


def safe_norm(x: Array) -> float:
    """||x||_F without overflow or underflow in the squares (NaN/inf entries give NaN/inf)."""
    xp = B.namespace(x)
    top = B.to_float(xp.max(xp.abs(x)))
    if not math.isfinite(top) or top == 0.0:
        return top
    return top * B.to_float(xp.linalg.vector_norm(x / top))


def _is_torch(x: Array) -> bool:
    return B.backend_name(x) == "torch"


def differentiable(x: Array) -> bool:
    return bool(getattr(x, "requires_grad", False))


def qr_r(x: Array) -> Any:
    """The R factor of a (stack of) QR factorisation(s), Q not formed (:func:`tensornet._backend.qr_r`)."""
    return B.qr_r(x)


def _block_rows(total: int, width: int, target: int) -> int | None:
    """A divisor ``b`` of ``total`` with ``width <= b <= target`` (the largest found), or None."""
    for b in range(min(target, total // 2), width - 1, -1):
        if total % b == 0:
            return b
    return None


def _r_of_transpose(a: Array) -> Any:
    """Upper-triangular (m, m) R with ``a = R^T Q^T`` for a wide C-ordered (m, N) matrix ``a``."""
    xp = B.namespace(a)
    m, total = (int(n) for n in a.shape)
    target = max(_BLOCK_ELEMENTS // max(m, 1), 4 * m)
    rows = _block_rows(total, m, target) if total >= 8 * m else None
    if rows is None:
        return qr_r(xp.permute_dims(a, (1, 0)))
    # blocks (nb, rows, m) of a^T: each block's columns are contiguous pieces of a's rows
    blocks = xp.permute_dims(xp.reshape(a, (m, total // rows, rows)), (1, 2, 0))
    stacked = xp.reshape(qr_r(blocks), (-1, m))  # (nb * m, m): a^T = diag(Q_b) stacked
    while int(stacked.shape[0]) > 4 * target:
        count = int(stacked.shape[0]) // m
        group = _block_rows(count, 2, max(target // m, 2)) or count
        stacked = xp.reshape(qr_r(xp.reshape(stacked, (count // group, group * m, m))), (-1, m))
    return qr_r(stacked)


def truncated_factors(
    matrix: Array, threshold: float | None, cap: int | None, log: ErrorLog
) -> tuple[Any, Any, Any]:
    """``(U_r, S_r V_r^T, singular values)`` of the truncated SVD of ``matrix`` (m, N).

    The rank is chosen by :func:`choose_rank` (``threshold`` None: from the norm of ``matrix``) and logged.
    """
    xp = B.namespace(matrix)
    m, total = (int(n) for n in matrix.shape)
    if not differentiable(matrix) and total >= 2 * m:
        certified = gram_factors(matrix, threshold, cap, log)
        if certified is not None:
            return certified
        u, s, _ = svd(xp.permute_dims(_r_of_transpose(matrix), (1, 0)))
        rank = log_rank(s, threshold, cap, log)
        kept = u[:, :rank]
        return kept, xp.matmul(B.conj(xp.permute_dims(kept, (1, 0))), matrix), s  # U_r^H A
    u, s, vh = svd(matrix)
    rank = log_rank(s, threshold, cap, log)
    return u[:, :rank], s[:rank, None] * vh[:rank, :], s


def row_norms2(b: Array) -> np.ndarray:
    """Squared row norms of ``b`` as float64 numpy (no (m, N) temporary on numpy)."""
    if _is_torch(b):  # no (m, N) temporary: large CPU allocations cost torch page faults
        torch = importlib.import_module("torch")
        norms = np.asarray(B.to_backend(torch.linalg.vector_norm(b, dim=1), "numpy"), dtype=np.float64)
        return norms * norms
    if np.iscomplexobj(b):
        return np.einsum("ij,ij->i", b.real, b.real).astype(np.float64) + np.einsum(
            "ij,ij->i", b.imag, b.imag
        ).astype(np.float64)
    return np.einsum("ij,ij->i", b, b).astype(np.float64)


def gram_factors(
    matrix: Array, threshold: float | None, cap: int | None, log: ErrorLog
) -> tuple[Any, Any, Any] | None:
    """Truncated factors of a wide ``matrix`` (m, N) from its Gram matrix, or None if not certified.

    Notes: ``V`` = eigenvectors of ``G = A A^T`` (descending) and ``B = V^T A`` cost two BLAS-3
    passes over A. B has A's singular values sigma_i. Because V is orthogonal, keeping B's first r
    rows discards exactly ``tail(r) = sum_{i >= r} ||B_i||^2``, computed from B itself, so the eps
    guarantee holds whatever V's accuracy, and ``sum_{i >= r} sigma_i^2 <= tail(r)``: the rank r
    chosen from ``tail`` is at least the SVD's. Minimality is certified from the kept rows
    ``B_K = D C D`` (D = their norms, C their correlation matrix, rho = ||C - I||_2 plus the
    rounding allowance of forming C): by interlacing and Ostrowski's theorem
    ``sigma_{r-1}^2 >= sigma_{r-1}(B_K)^2 >= (1 - rho) min_{i<r} ||B_i||^2``, and if that exceeds
    the threshold squared the SVD cannot keep fewer than r values. Where it does not (a kept
    singular value that alone is below the threshold), or ``max_rank`` binds, or eps = 0, or the
    squares would overflow/underflow, None sends the caller to the QR route. Cost ``O(m^2 N)``.
    """
    if (threshold is not None and threshold <= 0.0) or log.relative <= 0.0:
        return None
    rotated = _rotated(matrix)
    if rotated is None:
        return None
    vectors, rows = rotated
    norms2 = row_norms2(rows)
    norm2 = float(np.sum(norms2))
    first = threshold is None
    if threshold is None:
        threshold = log.relative * math.sqrt(norm2)
    tail = np.concatenate([np.cumsum(norms2[::-1])[::-1], [0.0]])  # tail[r] = sum_{i >= r} ||B_i||^2
    needed = max(1, int(np.nonzero(tail <= threshold * threshold)[0][0]))
    if cap is not None and cap < needed:
        return None
    if needed > 1 and not _certified_minimal(rows[:needed, :], norms2[:needed], threshold):
        return None
    if first:  # ||x||_F of tt_svd's first unfolding
        log.total, log.threshold = math.sqrt(norm2), threshold
    log.add(needed, math.sqrt(float(tail[needed])), needed)
    return vectors[:, :needed], rows[:needed, :], None


def _rotated(matrix: Array) -> tuple[Any, Any] | None:
    """``(V, B = V^H A)`` with V the eigenvectors of ``A A^H`` (descending), or None if squares over/underflow."""
    xp = B.namespace(matrix)
    m = int(matrix.shape[0])
    unit = B.finfo_eps(matrix)
    with np.errstate(all="ignore"):  # overflow/underflow is detected below and sent the QR route
        gram = xp.matmul(matrix, B.conj(xp.permute_dims(matrix, (1, 0))))  # A A^H, Hermitian
        trace = B.to_float(xp.real(xp.sum(xp.linalg.diagonal(gram))))
    finfo = xp.finfo(matrix.dtype)
    if not float(finfo.smallest_normal) / unit**2 < trace < float(finfo.max) / (4 * m):
        return None  # squares would underflow or overflow: the QR route scales safely
    _, vectors = xp.linalg.eigh(gram)
    order = xp.arange(m - 1, -1, -1, device=B.device(matrix))
    vectors = xp.take(vectors, order, axis=1)  # descending eigenvalues, a copy: BLAS-ready strides
    return vectors, xp.matmul(B.conj(xp.permute_dims(vectors, (1, 0))), matrix)  # B = V^H A, (m, N)


def _certified_minimal(kept: Any, norms2: np.ndarray, threshold: float) -> bool:
    """Whether no SVD could keep fewer than ``len(kept)`` values: ``(1 - rho) min ||B_i||^2 > threshold^2``.

    ``rho = ||C - I||_2`` of the kept rows' correlation matrix C, plus the rounding allowance of forming it.
    """
    xp = B.namespace(kept)
    needed, total = (int(n) for n in kept.shape)
    cross = np.asarray(B.to_backend(xp.matmul(kept, B.conj(xp.permute_dims(kept, (1, 0)))), "numpy"))
    scale = np.sqrt(np.real(np.diag(cross)))
    if not np.all(scale > 0):
        return False
    rho = float(np.linalg.norm(cross / np.outer(scale, scale) - np.eye(needed), 2))
    rho += 2.0 * total * B.finfo_eps(kept)  # rounding of the products forming ``cross`` (worst case)
    return (1.0 - rho) * float(np.min(norms2)) > threshold * threshold


def log_rank(singular: Array, threshold: float | None, cap: int | None, log: ErrorLog) -> int:
    if threshold is None:  # the caller needs the norm first (first unfolding of tt_svd)
        threshold = log.pending(singular)
    rank, discarded, needed = choose_rank(singular, threshold, cap)
    log.add(rank, discarded, needed)
    return rank
