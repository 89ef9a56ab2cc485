"""Alternating least squares sweeps over sampled entries (private kernel of :func:`tensornet.complete`).

The model at the samples ``(i^j, y_j)``: ``x(i^j) = L_k(i^j) G_k[:, i^j_k, :] R_k(i^j)`` for every core k, with
``L_k`` (``1 x r_{k-1}``) the product of the cores before k and ``R_k`` (``r_k x 1``) of those after it at the
sample's indices. With the others fixed, core k's slices are independent linear least-squares problems: slice
``a`` has the unknowns ``vec G_k[:, a, :]`` (``r_{k-1} r_k`` of them) and one row ``L_k(i^j) (x) R_k(i^j)^T`` per
sample with ``i^j_k = a``. The sweep keeps the cores before k left-orthogonal and those after it right-
orthogonal (QR after each solve), so the rows are products of orthonormal factors and the problems well
scaled (Holtz, Rohwedder, Schneider 2012, "The alternating linear scheme for tensor optimization in the TT
format"). Slices are solved together: the samples of each slice are gathered into a padded block
``(n_k, M_k, r_{k-1} r_k)`` (``M_k`` the largest slice count), normal equations are formed by one batched
matmul and solved by one batched solve.

The regularisation is proximal: slice ``a`` minimises ``||A g - y||^2 + s ||g - g_old||^2`` with
``s = rho tr(A^T A) / p`` and ``g_old`` the core's current slice, so the sweep cannot raise the fitting error
(each solve only lowers it) and the fixed points are the unregularised ones. A ridge toward zero instead
(``s ||g||^2``) dominates the objective once the relative fitting error is below ``sqrt(rho)``: ALS then
trades fit for norm and, on trains fitted past their true ranks, drifts along directions the samples barely
see (measured on a random rank-3 train of 10^6 from 15,000 samples: the fitting error jumped 20x between two
sweeps at 1e-9, and the test error of the result was 3e-5; proximal: 2e-9). Slices without samples are 0.

Everything runs on the values' array namespace (numpy, torch on CPU or GPU); index bookkeeping is on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _backend as B
from .._backend import Array
from .._einsum import einsum

__all__ = ["Samples", "orthogonalize_right", "sweep"]

RIDGE = (
    1e-6  # proximal weight rho (relative to each slice's mean squared feature; at least 10 u of the dtype)
)


@dataclass
class Samples:
    """Sampled entries on a backend: rows (host and device), values and square-root weights, per-mode layouts."""

    rows: np.ndarray  # (m, d) host int64
    index: Any  # (m, d) int64 on the values' backend and device
    values: Array  # (m,) scaled values
    root_weights: Array  # (m,) sqrt of the weights (ones when unweighted)
    layouts: list[tuple[Any, Any]]  # per mode: padded sample positions (n, M) and their mask (n, M)

    @property
    def count(self) -> int:
        return int(self.rows.shape[0])


def layout(modes: np.ndarray, size: int, like: Array, root_weights: Array) -> tuple[Any, Any]:
    """Sample positions grouped by their index in one mode, padded: ``(size, M)`` positions and mask.

    Padding points at sample 0 with mask 0; the mask carries the square-root weights.
    """
    xp = B.namespace(like)
    order = np.argsort(modes, kind="stable")
    counts = np.bincount(modes, minlength=size)
    width = max(int(counts.max(initial=0)), 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(modes.shape[0]) - np.repeat(starts, counts)
    positions = np.zeros((size, width), dtype=np.int64)
    filled = np.zeros((size, width), dtype=np.float64)
    positions[modes[order], slot] = order
    filled[modes[order], slot] = 1.0
    backend, where = B.backend_name(like), B.device(like)
    placed = B.to_backend(positions, backend, device=where)
    mask = B.to_backend(filled, backend, device=where, dtype=like.dtype)
    weights = xp.reshape(xp.take(root_weights, xp.reshape(placed, (-1,)), axis=0), (size, width))
    return placed, mask * weights


def make_samples(rows: np.ndarray, values: Array, weights: Array | None, shape: Sequence[int]) -> Samples:
    """The :class:`Samples` of ``rows`` (host) and ``values`` (scaled; their backend decides everything)."""
    xp = B.namespace(values)
    index = B.to_backend(rows, B.backend_name(values), device=B.device(values))
    root = xp.ones_like(values) if weights is None else xp.sqrt(weights)
    layouts = [layout(rows[:, k], int(n), values, root) for k, n in enumerate(shape)]
    return Samples(rows, index, values, root, layouts)


def interface_step(carry: Array, core: Array, modes: Any, *, left: bool) -> Array:
    """The next left (``carry G[:, i, :]``) or right (``G[:, i, :] carry``) interface rows."""
    xp = B.namespace(core)
    picked = xp.take(core, modes, axis=1)  # (r, m, s)
    if left:
        return einsum("ma,amb->mb", carry, picked)
    return einsum("amb,mb->ma", picked, carry)


def solve_core(left: Array, right: Array, samples: Samples, k: int, ridge: float, center: Array) -> Array:
    """Core k ``(r, n, s)`` minimising the sampled squared error with interfaces ``left`` (m, r), ``right`` (m, s).

    ``center`` (r, n, s) is the current core: the proximal term pulls each slice toward it (module notes).
    """
    xp = B.namespace(left, right)
    m, r = (int(v) for v in left.shape)
    s = int(right.shape[1])
    p = r * s
    features = xp.reshape(left[:, :, None] * right[:, None, :], (m, p))
    positions, mask = samples.layouts[k]
    n, width = (int(v) for v in positions.shape)
    flat = xp.reshape(positions, (-1,))
    block = xp.reshape(xp.take(features, flat, axis=0), (n, width, p)) * mask[:, :, None]
    targets = xp.reshape(xp.take(samples.values, flat, axis=0), (n, width)) * mask
    gram = xp.matmul(xp.permute_dims(block, (0, 2, 1)), block)  # (n, p, p)
    rhs = xp.matmul(xp.permute_dims(block, (0, 2, 1)), targets[:, :, None])  # (n, p, 1)
    eye = xp.eye(p, dtype=gram.dtype, device=B.device(gram))
    trace = xp.sum(gram * eye, axis=(1, 2)) / p
    # an empty slice (no samples) has trace 0: its shift 1 and zero centre make its solution 0
    ridge = max(ridge, 10.0 * B.finfo_eps(gram))
    seen = trace > 0
    shift = xp.where(seen, ridge * trace, xp.ones_like(trace))
    old = xp.reshape(xp.permute_dims(center, (1, 0, 2)), (n, p, 1))
    old = xp.where(seen[:, None, None], old, xp.zeros_like(old))
    solution = xp.linalg.solve(gram + shift[:, None, None] * eye, rhs + shift[:, None, None] * old)
    return xp.permute_dims(xp.reshape(solution, (n, r, s)), (1, 0, 2))


def _qr_left(core: Array, nxt: Array) -> tuple[Array, Array]:
    xp = B.namespace(core)
    r, n, s = (int(v) for v in core.shape)
    q, factor = xp.linalg.qr(xp.reshape(core, (r * n, s)))
    width = int(q.shape[1])
    return xp.reshape(q, (r, n, width)), einsum("ab,bnc->anc", factor, nxt)


def _qr_right(prev: Array, core: Array) -> tuple[Array, Array]:
    xp = B.namespace(core)
    r, n, s = (int(v) for v in core.shape)
    q, factor = xp.linalg.qr(xp.permute_dims(xp.reshape(core, (r, n * s)), (1, 0)))
    width = int(q.shape[1])
    return einsum("anb,cb->anc", prev, factor), xp.reshape(xp.permute_dims(q, (1, 0)), (width, n, s))


def orthogonalize_right(cores: list[Array]) -> list[Array]:
    """The same train with cores 1..d-1 right-orthogonal (the norm in core 0)."""
    cores = list(cores)
    for k in range(len(cores) - 1, 0, -1):
        cores[k - 1], cores[k] = _qr_right(cores[k - 1], cores[k])
    return cores


def right_interfaces(cores: list[Array], samples: Samples) -> list[Array]:
    """``R[k]`` (m, r_k): the product of cores k+1.. at the samples; ``R[d-1]`` is ones."""
    xp = B.namespace(*cores)
    d = len(cores)
    out: list[Array] = [xp.ones((samples.count, 1), dtype=cores[0].dtype, device=B.device(cores[0]))] * d
    for k in range(d - 1, 0, -1):
        out[k - 1] = interface_step(out[k], cores[k], samples.index[:, k], left=False)
    return out


def sweep(
    cores: list[Array], rights: list[Array], samples: Samples, ridge: float = RIDGE
) -> tuple[list[Array], list[Array], Array]:
    """One left-to-right and one right-to-left pass; returns the cores, the new right interfaces and predictions.

    On entry cores 1..d-1 are right-orthogonal and ``rights`` their interfaces; on exit the same holds again.

    Cost: ``O(m d r^4 + d n r^6)`` for m samples and ranks r.
    """
    xp = B.namespace(*cores)
    d = len(cores)
    cores = list(cores)
    ones = xp.ones((samples.count, 1), dtype=cores[0].dtype, device=B.device(cores[0]))
    lefts = [ones] * d
    for k in range(d - 1):
        cores[k] = solve_core(lefts[k], rights[k], samples, k, ridge, cores[k])
        cores[k], cores[k + 1] = _qr_left(cores[k], cores[k + 1])
        lefts[k + 1] = interface_step(lefts[k], cores[k], samples.index[:, k], left=True)
    rights = list(rights)
    rights[d - 1] = ones
    for k in range(d - 1, 0, -1):
        cores[k] = solve_core(lefts[k], rights[k], samples, k, ridge, cores[k])
        cores[k - 1], cores[k] = _qr_right(cores[k - 1], cores[k])
        rights[k - 1] = interface_step(rights[k], cores[k], samples.index[:, k], left=False)
    cores[0] = solve_core(lefts[0], rights[0], samples, 0, ridge, cores[0])
    predictions = interface_step(rights[0], cores[0], samples.index[:, 0], left=False)[:, 0]
    return cores, rights, predictions


def evaluate(cores: list[Array], index: Any) -> Array:
    """The train's values at the rows of ``index`` (device ints), core by core."""
    xp = B.namespace(*cores)
    carry = xp.ones((int(index.shape[0]), 1), dtype=cores[0].dtype, device=B.device(cores[0]))
    for k, core in enumerate(cores):
        carry = interface_step(carry, core, index[:, k], left=True)
    return carry[:, 0]


def _one_hot(modes: Any, size: int, like: Array) -> Array:
    xp = B.namespace(like)
    grid = xp.arange(size, device=B.device(like))
    return xp.astype(modes[:, None] == grid[None, :], like.dtype)


def _residual_direction(left: Array, right: Array, residual: Array, modes: tuple[Any, Any],
                        sizes: tuple[int, int]) -> Array:  # fmt: skip
    """The leading left singular vector of the residual's gradient for the merged cores k, k+1.

    ``Z[a i, i' c] = sum_j res_j L_j[a] [i_k^j = i] [i_{k+1}^j = i'] R_j[c]`` (``L`` the interfaces before core
    k, ``R`` after core k+1): the steepest rank-one change of the pair of cores, whose left factor is the new
    direction of bond k (the enrichment of AMEn, Dolgov & Savostyanov 2014, on sampled entries).
    """
    xp = B.namespace(left)
    m, r = (int(v) for v in left.shape)
    t = int(right.shape[1])
    total = None
    for start in range(0, m, _CHUNK):
        part = slice(start, min(start + _CHUNK, m))
        a = (residual[part, None] * left[part])[:, :, None] * _one_hot(modes[0][part], sizes[0], left)[
            :, None, :
        ]
        b = _one_hot(modes[1][part], sizes[1], left)[:, :, None] * right[part][:, None, :]
        block = xp.matmul(
            xp.permute_dims(xp.reshape(a, (-1, r * sizes[0])), (1, 0)), xp.reshape(b, (-1, sizes[1] * t))
        )
        total = block if total is None else total + block
    u, _, _ = xp.linalg.svd(total, full_matrices=False)
    return u[:, 0]


_CHUNK = 8192  # samples per block when forming the enrichment matrix (bounds its memory)


def growth_sweep(
    cores: list[Array], samples: Samples, grow: Sequence[bool], ridge: float = RIDGE
) -> list[Array]:
    """A left-to-right pass that adds one direction to each bond k with ``grow[k]``; returns right-orthogonal cores.

    After core k is solved and orthogonalised, the residual's steepest direction for the pair of cores
    (:func:`_residual_direction`), made orthogonal to core k's columns, becomes a new column of core k and
    the next core gets a zero row: the train is unchanged, and the next solve decides how much of the new
    direction to use. Cost: ``O(m r n n' t)`` per grown bond, plus a sweep.
    """
    xp = B.namespace(*cores)
    d = len(cores)
    cores = list(cores)
    rights = right_interfaces(cores, samples)
    left = xp.ones((samples.count, 1), dtype=cores[0].dtype, device=B.device(cores[0]))
    for k in range(d - 1):
        cores[k] = solve_core(left, rights[k], samples, k, ridge, cores[k])
        cores[k], cores[k + 1] = _qr_left(cores[k], cores[k + 1])
        if grow[k]:
            cores[k], cores[k + 1] = _enriched(cores[k], cores[k + 1], left, rights[k + 1], samples, k)
        left = interface_step(left, cores[k], samples.index[:, k], left=True)
    return orthogonalize_right(cores)


def _enriched(
    core: Array, nxt: Array, left: Array, right: Array, samples: Samples, k: int
) -> tuple[Array, Array]:
    """``core`` with one more orthonormal column (the residual direction) and ``nxt`` with a zero row."""
    xp = B.namespace(core)
    r, n, s = (int(v) for v in core.shape)
    n2, t = int(nxt.shape[1]), int(nxt.shape[2])
    index = samples.index
    partial = interface_step(left, core, index[:, k], left=True)
    predicted = einsum("ma,amb,mb->m", partial, xp.take(nxt, index[:, k + 1], axis=1), right)
    residual = (samples.values - predicted) * samples.root_weights**2
    direction = _residual_direction(left, right, residual, (index[:, k], index[:, k + 1]), (n, n2))
    basis = xp.reshape(core, (r * n, s))
    direction = direction - basis @ (xp.permute_dims(basis, (1, 0)) @ direction)
    size = B.to_float(xp.linalg.vector_norm(direction))
    if not size > 1e-8:  # the residual direction is (nearly) in the span already: nothing new to add
        return core, nxt
    column = xp.reshape(direction / size, (r * n, 1))
    grown = xp.reshape(xp.concat([basis, column], axis=1), (r, n, s + 1))
    zero = xp.zeros((1, n2, t), dtype=nxt.dtype, device=B.device(nxt))
    return grown, xp.concat([nxt, zero], axis=0)
