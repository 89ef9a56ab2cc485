"""Levenberg-Marquardt steps on all cores at once for sampled entries (private kernel of ``tn.complete``).

ALS solves one core at a time; where the cores are strongly coupled it crawls ("swamps": the fitting error
falls by a few per cent a sweep for hundreds of sweeps). A Gauss-Newton step moves every core together: with
``J`` the Jacobian of the sampled values with respect to all core entries and ``e`` the residuals, it solves
``(J^T W J + lambda D) delta = J^T W e`` (``W`` the weights, ``D`` the diagonal of ``J^T W J``: Marquardt's
scaling, which also makes the system definite along the gauge directions of the train, where ``J`` is rank
deficient). ``lambda`` shrinks after a step that lowers the fitting error and grows after one that does not
(Nocedal & Wright, "Numerical Optimization", 2006, ch. 10.3).

Assembly without forming ``J``: a sample's row of ``J`` is nonzero only in the slices ``i_k`` of each core,
where it is ``L_k (x) R_k`` (its interfaces, as in ALS). Block ``(k, l)`` of ``J^T J`` therefore sums, over the
samples with ``(i_k, i_l) = (a, b)``, outer products of their features: the samples are grouped by the pair of
indices into padded blocks (like the per-mode layouts of ALS), and one batched matmul per pair of modes gives
the block. Cost ``O(m (sum_k p_k)^2)`` for m samples and ``p_k = r_{k-1} r_k``, n^2 times less than forming
the dense ``J``; the solve is ``O(P^3)`` for ``P = sum_k r_{k-1} n_k r_k`` unknowns, which is why
:func:`tensornet.complete` only takes these steps for ``P <= MAX_UNKNOWNS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import _backend as B
from .._backend import Array
from .._einsum import einsum
from . import _als

__all__ = ["MAX_UNKNOWNS", "PairLayouts", "levenberg_marquardt", "pair_layouts", "unknowns"]

MAX_UNKNOWNS = 2000  # the system is P x P: 32 MB in float64 at this size, an O(P^3) solve a step
_PADDING = 4  # a pair's padded groups may hold at most 4x the samples (uniform samples: about 1-2x)
_DAMPING = 1e-3  # the first lambda
_GIVE_UP = 1e6  # lambda this large and still no decrease: a minimum (to rounding)


def unknowns(cores: list[Array]) -> int:
    return sum(int(c.shape[0]) * int(c.shape[1]) * int(c.shape[2]) for c in cores)


class PairLayouts:
    """The samples grouped by the pair ``(i_k, i_l)`` for every ``k < l`` (built once per sample set)."""

    def __init__(self, layouts: dict[tuple[int, int], tuple[Any, Any]]) -> None:
        self.layouts = layouts


def pair_layouts(samples: _als.Samples, shape: tuple[int, ...]) -> PairLayouts | None:
    """The :class:`PairLayouts` of ``samples``, or None where padding would take over 4x their memory.

    Padded groups are ``n_k n_l`` wide times the largest count of a pair: samples bunched on a few pairs of
    indices (or modes so large that most pairs are empty) would make them mostly padding.
    """
    rows = samples.rows
    codes = {}
    for k in range(len(shape)):
        for l in range(k + 1, len(shape)):
            codes[k, l] = rows[:, k] * shape[l] + rows[:, l]
            groups = shape[k] * shape[l]
            widest = int(np.bincount(codes[k, l], minlength=groups).max(initial=0))
            if groups * max(widest, 1) > _PADDING * max(samples.count, 1):
                return None
    return PairLayouts(
        {
            pair: _als.layout(code, shape[pair[0]] * shape[pair[1]], samples.values, samples.root_weights)
            for pair, code in codes.items()
        }
    )


def _interfaces(cores: list[Array], samples: _als.Samples) -> tuple[list[Array], list[Array], Array]:
    """Left and right interfaces of every core at the samples, and the predicted values."""
    d = len(cores)
    rights = _als.right_interfaces(cores, samples)
    xp = B.namespace(*cores)
    lefts = [xp.ones((samples.count, 1), dtype=cores[0].dtype, device=B.device(cores[0]))]
    for k in range(d - 1):
        lefts.append(_als.interface_step(lefts[k], cores[k], samples.index[:, k], left=True))
    predicted = _als.interface_step(lefts[d - 1], cores[d - 1], samples.index[:, d - 1], left=True)[:, 0]
    return lefts, rights, predicted


def _gathered(features: Array, layout: tuple[Any, Any]) -> Array:
    """``features`` (m, p) gathered into the padded groups of ``layout``, times the root weights: (g, M, p)."""
    xp = B.namespace(features)
    positions, mask = layout
    groups, width = (int(v) for v in positions.shape)
    block = xp.take(features, xp.reshape(positions, (-1,)), axis=0)
    return xp.reshape(block, (groups, width, int(features.shape[1]))) * mask[:, :, None]


def _normal_equations(
    cores: list[Array], samples: _als.Samples, pairs: PairLayouts
) -> tuple[Array, Array, Array]:
    """The normal equations ``J^T W J`` (P, P), ``J^T W e`` (P,), and the predicted values.

    Unknowns in slice-major order: core k's as ``(n_k, r_{k-1}, r_k)``.
    """
    xp = B.namespace(*cores)
    d = len(cores)
    lefts, rights, predicted = _interfaces(cores, samples)
    m = samples.count
    features = [xp.reshape(lefts[k][:, :, None] * rights[k][:, None, :], (m, -1)) for k in range(d)]
    residual = samples.values - predicted
    sizes = [int(c.shape[1]) for c in cores]
    widths = [int(f.shape[1]) for f in features]
    rows: list[list[Array]] = [[] for _ in range(d)]
    gradient = []
    for k in range(d):
        n, p = sizes[k], widths[k]
        block = _gathered(features[k], samples.layouts[k])
        targets = _gathered(residual[:, None], samples.layouts[k])[:, :, 0]
        gradient.append(xp.reshape(einsum("nwp,nw->np", block, targets), (-1,)))
        gram = xp.matmul(xp.permute_dims(block, (0, 2, 1)), block)  # (n, p, p)
        eye = xp.eye(n, dtype=gram.dtype, device=B.device(gram))
        diagonal = gram[:, :, None, :] * eye[:, None, :, None]  # (n, p, n, p): one block per slice
        rows[k].append(xp.reshape(diagonal, (n * p, n * p)))
    for k in range(d):
        for l in range(k + 1, d):
            a = _gathered(features[k], pairs.layouts[k, l])
            b = _gathered(features[l], pairs.layouts[k, l])
            cross = xp.matmul(xp.permute_dims(a, (0, 2, 1)), b)  # (n_k n_l, p_k, p_l)
            cross = xp.reshape(cross, (sizes[k], sizes[l], widths[k], widths[l]))
            cross = xp.reshape(
                xp.permute_dims(cross, (0, 2, 1, 3)), (sizes[k] * widths[k], sizes[l] * widths[l])
            )
            rows[k].append(cross)
            rows[l].insert(k, xp.permute_dims(cross, (1, 0)))
    normal = xp.concat([xp.concat(row, axis=1) for row in rows], axis=0)
    return normal, xp.concat(gradient), predicted


def _moved(cores: list[Array], step: Array) -> list[Array]:
    """The cores plus ``step`` (slice-major order)."""
    xp = B.namespace(*cores)
    out, offset = [], 0
    for core in cores:
        r, n, s = (int(v) for v in core.shape)
        part = xp.reshape(step[offset : offset + r * n * s], (n, r, s))
        out.append(core + xp.permute_dims(part, (1, 0, 2)))
        offset += r * n * s
    return out


def _objective(predicted: Array, samples: _als.Samples) -> float:
    xp = B.namespace(predicted)
    return B.to_float(xp.sum((samples.root_weights * (samples.values - predicted)) ** 2))


def levenberg_marquardt(
    cores: list[Array],
    samples: _als.Samples,
    pairs: PairLayouts,
    accept: Callable[[list[Array], Array], bool],
) -> list[Array]:
    """Damped Gauss-Newton steps on all cores, while ``accept`` says so and some step lowers the fitting error.

    ``accept(cores, predicted)`` is called after every step that lowers the fitting error, with the moved
    (right-orthogonal) cores and their predicted values; False ends the steps.

    Cost: ``O(m (sum_k r_{k-1} r_k)^2 + P^3)`` a step for m samples and P unknowns.
    """
    xp = B.namespace(*cores)
    damping = _DAMPING
    cores = _als.orthogonalize_right(cores)
    while True:
        normal, gradient, predicted = _normal_equations(cores, samples, pairs)
        current = _objective(predicted, samples)
        scale = xp.linalg.diagonal(normal)
        # unknowns no sample sees (empty slices) have a zero diagonal: the floor keeps the system definite
        floor = 10.0 * B.finfo_eps(normal) * max(B.to_float(xp.max(scale)), 1.0)
        eye = xp.eye(int(normal.shape[0]), dtype=normal.dtype, device=B.device(normal))
        while True:
            shifted = normal + (damping * scale + floor)[:, None] * eye
            trial = _moved(cores, xp.linalg.solve(shifted, gradient[:, None])[:, 0])
            moved = _als.evaluate(trial, samples.index)
            if _objective(moved, samples) < current:
                damping = max(damping / 3.0, 1e-12)
                break
            damping *= 4.0
            if damping > _GIVE_UP:
                return cores
        cores = _als.orthogonalize_right(trial)
        if not accept(cores, moved):
            return cores
