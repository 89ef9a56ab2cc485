"""Orthogonalisation sweeps with Q formed, and the rounding route autograd differentiates (private).

:func:`orthogonalized` (QR / LQ sweeps towards a center core) serves :func:`tensornet.orthogonalize`, the
spectra of :func:`tensornet.report` and :func:`differentiable_sweep`, the TT-Toolbox rounding that
:mod:`tensornet._round` takes for cores that require grad, for one core, and for the host rounding of
:func:`tensornet.cross`. The carried factors are renormalised by powers of two as the sweeps go.
"""

from __future__ import annotations

import math

from . import _backend as B
from ._backend import Array
from ._truncation import ErrorLog, choose_rank, safe_norm, svd

__all__ = ["differentiable_sweep", "orthogonalized"]


def _left_step(core: Array, nxt: Array) -> tuple[Array, Array, int]:
    """QR of ``core`` (r, n, r'): the left-orthogonal core, the next core times R, and an exponent.

    The next core times R is renormalised (:func:`tensornet._backend.renormalized`): it was divided by 2 to
    the returned exponent, so the running product never under- or overflows.
    """
    xp = B.namespace(core)
    r, n, _ = (int(s) for s in core.shape)
    q, rmat = B.qr(xp.reshape(core, (r * n, -1)))
    new = int(q.shape[1])
    r2, n2, r3 = (int(s) for s in nxt.shape)
    moved, e = B.renormalized(xp.matmul(rmat, xp.reshape(nxt, (r2, n2 * r3))))
    return xp.reshape(q, (r, n, new)), xp.reshape(moved, (new, n2, r3)), e


def _right_step(prev: Array, core: Array) -> tuple[Array, Array, int]:
    """LQ of ``core`` (r, n, r'): the previous core times L, the right-orthogonal core, and an exponent.

    The previous core times L is renormalised as in :func:`_left_step`.
    """
    xp = B.namespace(core)
    _, n, r2 = (int(s) for s in core.shape)
    q, rmat = B.qr(xp.permute_dims(xp.reshape(core, (-1, n * r2)), (1, 0)))
    new = int(q.shape[1])
    r0, n0, r1 = (int(s) for s in prev.shape)
    left, e = B.renormalized(xp.matmul(xp.reshape(prev, (r0 * n0, r1)), xp.permute_dims(rmat, (1, 0))))
    return xp.reshape(left, (r0, n0, new)), xp.reshape(xp.permute_dims(q, (1, 0)), (new, n, r2)), e


def orthogonalized(cores: list[Array], center: int) -> tuple[list[Array], int]:
    """TT-layout cores left-orthogonal before ``center`` and right-orthogonal after it (Q formed).

    Returns the cores and the exponent ``e``: the train is ``2^e`` times the train of the returned cores
    (the carried factors are renormalised by powers of two as the sweeps go).
    """
    cores = list(cores)
    total = 0
    for k in range(center):
        cores[k], cores[k + 1], e = _left_step(cores[k], cores[k + 1])
        total += e
    for k in range(len(cores) - 1, center, -1):
        cores[k - 1], cores[k], e = _right_step(cores[k - 1], cores[k])
        total += e
    return cores, total


def differentiable_sweep(
    cores: list[Array], caps: list[int | None], log: ErrorLog
) -> tuple[list[Array], int]:
    """TT-Toolbox rounding: right-to-left QR sweep (Q formed), then left-to-right truncated SVDs.

    The route for cores that require grad (autograd differentiates every step) and for one core.
    Returns the cores and the exponent of 2 the train was divided by (:func:`orthogonalized`).
    """
    cores, exponent = orthogonalized(cores, 0)
    xp = B.namespace(*cores)
    log.total = safe_norm(cores[0])
    if not math.isfinite(log.total):
        raise ValueError(f"{log.fn}: the train has NaN or inf entries; rounding is undefined")
    threshold = log.relative * log.total
    for k in range(len(cores) - 1):
        r, n, _ = (int(s) for s in cores[k].shape)
        u, s, vh = svd(xp.reshape(cores[k], (r * n, -1)))
        rank, discarded, needed = choose_rank(s, threshold, caps[k])
        log.add(rank, discarded, needed)
        log.kernels.append("svd")
        cores[k] = xp.reshape(u[:, :rank], (r, n, rank))
        r2, n2, r3 = (int(v) for v in cores[k + 1].shape)
        carry = s[:rank, None] * vh[:rank, :]
        cores[k + 1] = xp.reshape(xp.matmul(carry, xp.reshape(cores[k + 1], (r2, n2 * r3))), (rank, n2, r3))
    return cores, exponent
