"""The parameter budget of ``tensorize(model, rules, budget=...)``: per-layer TT ranks from the layers' spectra.

For each matched layer's weight ``W_l`` ``(M, N)``, bond k's singular values ``sigma_{l,k,1} >= sigma_{l,k,2}
>= ...`` are those of the k-th unfolding of ``W_l``'s TTM tensor. TT-SVD truncated to ranks ``r_{l,k}`` errs by at most
``||W_l - W~_l||_F^2 <= sum_k sum_{i > r_{l,k}} sigma_{l,k,i}^2`` (Oseledets 2011, Theorem 2.2), and stores
``P_l(r) = sum_k r_{k-1} m_k n_k r_k`` numbers. The allocator picks ranks for all layers together: greedy
proposals (not an exact optimum), the one with the least measured objective kept. The objective is the layers'
squared output error on calibration inputs, ``sum_l ||(W_l - W~_l) X_l^T||_F^2``, when the caller gives them,
else the weights' ``sum_l ||W_l - W~_l||_F^2``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import tensornet as tn
from tensornet import _checks
from tensornet import shapes as _shapes

from ._calibration import Gram, record_grams
from ._cores import compress
from ._factor import resolve_shapes
from ._hf import dense_weight


def allocation(calibrated: bool) -> str:
    """The report's one-line account of the allocation and its objective."""
    objective = (
        "the least squared output error on the calibration inputs, sum_l ||(W_l - W~_l) X_l^T||^2"
        if calibrated
        else "the least squared weight error, sum_l ||W_l - W~_l||^2 (no calibration inputs given)"
    )
    return (
        f"ranks from the bond spectra: {12 if calibrated else 6} greedy allocations (not an exact optimum), the "
        f"one with {objective} kept"
    )


_NAMES = ("out_features", "in_features", "out_shape", "in_shape")

__all__ = ["Plan", "Spectrum", "Target", "allocate", "check_budget", "core_params", "plan", "spectrum"]

# (name, module, kind, rule) of a layer a rule matched
Target = tuple[str, Any, str, Any]


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One layer's bond spectra and rank limits.

    ``sizes``: ``m_k n_k`` per core; ``singular``: per bond, the descending singular values in float64;
    ``caps``: per bond, the largest rank allowed (the useful maximum, the rule's rank cap, the exact rank);
    ``norm``: ``||W||_F``; ``dense``: ``M N``.
    """

    name: str
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    singular: tuple[np.ndarray, ...]
    caps: tuple[int, ...]
    norm: float
    dense: int

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(m * n for m, n in zip(self.row_shape, self.col_shape))

    def bound(self, bonds: Sequence[int]) -> float:
        """The TT-SVD bound on ``||W - W~||_F / ||W||_F`` at the bond ranks ``bonds`` (0 for ``W = 0``)."""
        if not self.norm > 0.0:
            return 0.0
        tails = [float(np.sum((s[r:] / self.norm) ** 2)) for s, r in zip(self.singular, bonds)]
        return math.sqrt(sum(tails))


def check_budget(budget: Any) -> float:
    """``budget`` as a float in ``(0, 1]``, or a TypeError/ValueError saying what it must be."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise TypeError(
            f"tensorize: budget must be a real number in (0, 1] (the TT cores' parameters over the replaced "
            f"layers' dense weights), got {type(budget).__name__} {budget!r}"
        )
    value = float(budget)
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise ValueError(
            f"tensorize: budget must be in (0, 1] (the TT cores' parameters over the replaced layers' dense "
            f"weights; 1 allows as many as the dense weights), got {budget!r}"
        )
    return value


def core_params(sizes: Sequence[int], bonds: Sequence[int]) -> int:
    """``sum_k r_{k-1} m_k n_k r_k``: the numbers TTM cores of ``sizes = (m_k n_k)`` and ``bonds`` store."""
    ranks = (1, *bonds, 1)
    return sum(ranks[k] * size * ranks[k + 1] for k, size in enumerate(sizes))


def spectrum(
    name: str,
    weight: torch.Tensor,
    row_shape: tuple[int, ...],
    col_shape: tuple[int, ...],
    cap: tuple[int, ...] | None,
) -> Spectrum:
    """The bond spectra of ``weight`` ``(M, N)`` for the TTM shape ``row_shape x col_shape``.

    ``cap``: the rule's bond ranks (an upper limit), or None. Cost: one singular-value-only SVD of each
    unfolding, ``O(M N u_k)`` with ``u_k`` its smaller side, on the CPU in float64.
    """
    dense = weight.detach().to(device="cpu", dtype=torch.float64).numpy()
    singular, norm = _unfolding_spectra(dense, row_shape, col_shape)
    useful = _shapes.useful_ranks([m * n for m, n in zip(row_shape, col_shape)])
    limits = useful if cap is None else tuple(min(u, c) for u, c in zip(useful, cap))
    caps = tuple(max(1, min(limit, s.size)) for limit, s in zip(limits, singular))
    return Spectrum(
        name=name,
        row_shape=row_shape,
        col_shape=col_shape,
        singular=singular,
        caps=caps,
        norm=norm,
        dense=dense.size,
    )


def _unfolding_spectra(
    dense: np.ndarray, row_shape: tuple[int, ...], col_shape: tuple[int, ...]
) -> tuple[tuple[np.ndarray, ...], float]:
    """Per bond k, the singular values of the k-th unfolding of the TTM tensor of ``dense``; and its norm.

    The tensor ``(m_1, n_1, ..., m_d, n_d)`` (row index ``(i_1..i_d)`` C-order, as :class:`tensornet.TTM`),
    its unfolding k has modes 1..k as rows. The matrix is divided by its largest entry first (no overflow
    or underflow at any finite scale) and the values multiplied back.
    """
    d = len(row_shape)
    peak = float(np.max(np.abs(dense))) if dense.size else 0.0
    if not peak > 0.0:
        return tuple(np.zeros(1) for _ in range(d - 1)), 0.0
    tensor = (dense / peak).reshape(*row_shape, *col_shape)
    tensor = tensor.transpose([axis for k in range(d) for axis in (k, d + k)])  # (m_1, n_1, ..., m_d, n_d)
    sizes = [m * n for m, n in zip(row_shape, col_shape)]
    singular = tuple(
        peak * np.linalg.svd(tensor.reshape(math.prod(sizes[: k + 1]), -1), compute_uv=False)
        for k in range(d - 1)
    )
    return singular, peak * float(np.linalg.norm(tensor))


def _limit(budget: float, spectra: Sequence[Spectrum]) -> tuple[int, int, int]:
    """``(allowed, minimum, dense)``: cores' parameters the budget allows, rank 1 everywhere takes, dense."""
    dense = sum(s.dense for s in spectra)
    # the product as the user computes it: budget 0.6 of 1,920 weights allows 1,152 (the binary 0.6 is a
    # hair below 0.6, and the exact product would allow 1,151)
    allowed = math.floor(budget * dense)
    minimum = sum(core_params(s.sizes, (1,) * (len(s.sizes) - 1)) for s in spectra)
    if minimum > allowed:
        suggest = math.ceil(minimum / dense * 1e4) / 1e4
        while math.floor(suggest * dense) < minimum:  # the printed value must itself be feasible
            suggest += 1e-4
        raise ValueError(
            f"tensorize: budget {budget!r} allows {allowed:,} TT parameters for the {len(spectra)} layers' "
            f"{dense:,} dense weights, but rank 1 at every bond already takes {minimum:,}; give budget >= "
            f"{suggest:.4g} (or fewer cores per layer, or fewer layers)"
        )
    return allowed, minimum, dense


def relative_squares(values: Sequence[float]) -> list[float]:
    """``(v_l / max v)^2`` for non-negative ``values`` (all 0 if they are), at any finite scale."""
    top = max(values, default=0.0)
    return [(v / top) ** 2 if top > 0.0 else 0.0 for v in values]


def allocate(
    spectra: Sequence[Spectrum],
    budget: float,
    *,
    estimate: str = "product",
    start: str = "one",
    weights: Sequence[float] | None = None,
) -> list[tuple[int, ...]]:
    """Bond ranks per layer that fit ``budget`` with a small estimated conversion error (greedy, see Notes).

    Parameters
    ----------
    spectra : sequence of Spectrum
    budget : float
        In ``(0, 1]``.
    estimate : {"product", "bound"}
        The squared error the greedy lowers: ``"bound"`` the TT-SVD upper bound ``sum_k t_k``,
        ``"product"`` the estimate ``1 - prod_k (1 - t_k)`` (both times the layer's weight, see Notes).
    start : {"one", "half", "uniform"}
        Rank 1 at every bond; half the largest uniform rank whose cores fit (rounded down, at least 1); or
        that largest uniform rank (each bond at most its cap).
    weights : sequence of float, optional
        Each layer's weight in the objective, ``w_l >= 0``: the squared error is ``sum_l w_l e_l^2``
        (only ratios matter). Default ``||W_l||_F^2`` (the absolute squared error of the weights); the
        output energy on calibration inputs, ``tr(W_l G_l W_l^T)``, makes it an estimate of the output
        error.

    Returns
    -------
    list of tuple of int
        Per layer its ``d - 1`` bond ranks, each in ``[1, cap]``.

    Raises
    ------
    ValueError
        The budget is below rank 1 everywhere (the message gives the smallest feasible budget).

    Notes
    -----
    With ``t_{l,k} = sum_{i > r_{l,k}} sigma_{l,k,i}^2 / ||W_l||^2`` the share of ``W_l`` bond k's truncation
    discards, TT-SVD's relative error ``e_l`` satisfies ``max_k t_{l,k} <= e_l^2 <= sum_k t_{l,k}``. The
    product estimate lies between the two bounds and sees that a bond left at a low rank discards what its
    neighbours keep; the bound does not (it fills a layer's cheap outer bonds first). Each step raises by
    one the bond whose drop in the estimate, per parameter the step adds, is largest among the steps that
    still fit; it stops when none fits or none lowers the estimate (zero singular values). Ties go to the
    earlier layer, then the earlier bond (deterministic). A step's cost grows with the neighbouring bonds'
    ranks, so this is not an exact optimum; for 2-core layers of equal core sizes every step costs the same,
    the two estimates agree and the greedy is optimal for them. Singular values are divided by each
    layer's norm and weights by the largest, so nothing overflows or all underflows at any finite scale.

    Cost: ``O(S L d^2)`` for S steps over L layers of d cores (``S <= sum`` of the ranks).
    """
    allowed, used, _ = _limit(budget, spectra)
    ranks = [[1] * (len(s.sizes) - 1) for s in spectra]
    if start != "one":
        fits = [
            r
            for r in range(1, max((max(s.caps) for s in spectra if s.caps), default=1) + 1)
            if sum(core_params(s.sizes, [min(r, c) for c in s.caps]) for s in spectra) <= allowed
        ]
        top = max(fits) if start == "uniform" else max(1, max(fits) // 2)
        ranks = [[min(top, c) for c in s.caps] for s in spectra]
        used = sum(core_params(s.sizes, bonds) for s, bonds in zip(spectra, ranks))
    weights = relative_squares([s.norm for s in spectra]) if weights is None else list(weights)
    scale = max(weights, default=0.0)
    if not scale > 0.0:
        return [tuple(bonds) for bonds in ranks]
    weights = [w / scale if s.norm > 0.0 else 0.0 for s, w in zip(spectra, weights)]
    shares = [[(v / s.norm) ** 2 if s.norm > 0.0 else 0.0 * v for v in s.singular] for s in spectra]
    kept = [[float(np.sum(v[:r])) for v, r in zip(layer, bonds)] for layer, bonds in zip(shares, ranks)]
    while True:
        best: tuple[float, int, int, int] | None = None
        for layer, (s, bonds) in enumerate(zip(spectra, ranks)):
            full, sizes = (1, *bonds, 1), s.sizes
            for k, rank in enumerate(bonds):
                if rank >= s.caps[k]:
                    continue
                others = 1.0
                if estimate == "product":
                    others = math.prod(min(c, 1.0) for j, c in enumerate(kept[layer]) if j != k)
                gain = weights[layer] * float(shares[layer][k][rank]) * others
                cost = full[k] * sizes[k] + sizes[k + 1] * full[k + 2]
                if not gain > 0.0 or used + cost > allowed:
                    continue
                if best is None or gain / cost > best[0]:
                    best = (gain / cost, layer, k, cost)
        if best is None:
            return [tuple(bonds) for bonds in ranks]
        _, layer, k, cost = best
        kept[layer][k] += float(shares[layer][k][ranks[layer][k]])
        ranks[layer][k] += 1
        used += cost


def parse_cap(name: str, rank: Any, ncores: int) -> tuple[int, ...] | None:
    """A rule's rank spec as the bond-rank cap of the layer ``name`` (None: no cap)."""
    if rank is None:
        return None
    return _checks.parse_ranks(f"tensorize: layer {name}", "rank", rank, ncores, owner="layer")


@dataclass(frozen=True, eq=False)
class Plan:
    """The budget's choice for one layer: its spectra and bond ranks, the TT-SVD bound there, and the TTM.

    ``ttm``: the layer's float64 CPU TTM at ``bonds`` (TT-SVD, computed once while the proposals are
    compared and reused for the conversion); ``error``: its measured relative error.
    """

    spectrum: Spectrum
    bonds: tuple[int, ...]
    ttm: tn.TTM
    error: float

    @property
    def bound(self) -> float:
        return self.spectrum.bound(self.bonds)


def _layer_spectrum(name: str, module: Any, kind: str, rule: Any) -> Spectrum:
    """A matched layer's spectra, on the TTM shape its rule's options give (as ``from_linear`` would)."""
    where = f"tensorize: layer {name} ({kind})"
    if kind == "Embedding":
        raise ValueError(
            f"{where}: a budget allocates the ranks of Linear/Conv1D layers only; convert the embedding "
            "with a rank or eps of its own in a separate tensorize call"
        )
    if not rule.from_weights:
        raise ValueError(
            f"{where}: {rule!r} builds from scratch, but a budget chooses ranks from the trained weights' "
            "spectra; use from_weights=True, or give the rule a rank and no budget"
        )
    if rule.eps is not None:
        raise ValueError(
            f"{where}: {rule!r} gives eps, but with a budget the budget sets the accuracy; drop eps "
            "(a rule's rank stays allowed: it caps the layer's ranks)"
        )
    weight, _ = dense_weight(where, module)  # (out, in), Conv1D transposed
    ncores = _checks.check_count(where, "ncores", rule.options.get("ncores", 3))
    out_features, in_features = (int(n) for n in weight.shape)
    row_shape, col_shape = resolve_shapes(
        where,
        out_features,
        in_features,
        rule.options.get("out_shape"),
        rule.options.get("in_shape"),
        ncores,
        _NAMES,
    )
    return spectrum(name, weight, row_shape, col_shape, parse_cap(name, rule.rank, len(row_shape)))


# the greedy runs the plan compares by the measured objective: (estimate, start)
CANDIDATES = tuple((e, s) for s in ("one", "half", "uniform") for e in ("product", "bound"))


def plan(
    targets: Sequence[Target], budget: Any, model: nn.Module | None = None, calibration: Any = None
) -> dict[str, Plan]:
    """The budget's ranks for every matched layer, by name (see :func:`tensornet.nn.tensorize`).

    Every run of :data:`CANDIDATES` proposes ranks; each distinct layer choice is converted by TT-SVD once
    and scored, and the proposal with the least total wins (the first on a tie). The score is the
    layers' squared output error on the inputs ``X_l`` they receive when ``model`` runs on the
    ``calibration`` batches, ``sum_l ||(W_l - W~_l) X_l^T||_F^2``, when they are given, else the weights'
    ``sum_l ||W_l - W~_l||_F^2``.
    The winner's TTMs are kept in the plans, so the conversion runs no second TT-SVD.

    Raises
    ------
    TypeError, ValueError
        A budget that is not a number in ``(0, 1]`` or is below rank 1 everywhere; a matched embedding, a
        from-scratch rule or a rule with eps.
    """
    value = check_budget(budget)
    spectra = [_layer_spectrum(*target) for target in targets]
    grams: Mapping[str, Gram] | None = None
    if calibration is not None and model is not None:
        grams = record_grams(model, [(name, module) for name, module, _, _ in targets], calibration)
    denses = [_weight(name, module) for name, module, _, _ in targets]
    if grams is None:  # the weights' own energy: ||W_l||^2 = peak_l^2 ||W_l / peak_l||^2
        factors = [peak for _, peak in denses]
        energies = [float(torch.sum(_divide(dense, peak) ** 2)) for dense, peak in denses]
    else:
        factors = [peak * grams[s.name].scale for (_, peak), s in zip(denses, spectra)]
        energies = [grams[s.name].energy(_divide(dense, peak)) for (dense, peak), s in zip(denses, spectra)]
    # each layer's score is (its factor / the largest)^2 times an O(1) number: no overflow at any scale
    scales = relative_squares(factors)
    weights = [scale * energy for scale, energy in zip(scales, energies)]
    # with calibration, the runs on the weights' norms propose too (scored by the output error as well)
    weightings = [weights] if grams is None else [weights, None]
    proposals = [
        allocate(spectra, value, estimate=e, start=s, weights=w) for w in weightings for e, s in CANDIDATES
    ]
    totals = [0.0] * len(proposals)
    converted: list[dict[tuple[int, ...], tuple[tn.TTM, float, float]]] = []
    for layer, ((dense, peak), s) in enumerate(zip(denses, spectra)):
        gram = None if grams is None else grams[s.name]
        found: dict[tuple[int, ...], tuple[tn.TTM, float, float]] = {}
        for index, proposal in enumerate(proposals):
            bonds = proposal[layer]
            if bonds not in found:
                ttm, error = compress(dense, s.row_shape, s.col_shape, rank=bonds, eps=None)
                residual = _divide(dense - tn.full(ttm), peak)
                score = float(torch.sum(residual**2)) if gram is None else gram.energy(residual)
                found[bonds] = (ttm, error, scales[layer] * score)
            totals[index] += found[bonds][2]
        converted.append(found)
    chosen = proposals[min(range(len(proposals)), key=lambda i: (totals[i], i))]
    return {s.name: Plan(s, bonds, *found[bonds][:2]) for s, bonds, found in zip(spectra, chosen, converted)}


def _weight(name: str, module: Any) -> tuple[torch.Tensor, float]:
    """A layer's weight ``(out, in)`` in float64 on the CPU, and its largest ``|entry|``."""
    dense = dense_weight(name, module)[0].detach().to(device="cpu", dtype=torch.float64)
    return dense, float(dense.abs().max()) if dense.numel() else 0.0


def _divide(matrix: torch.Tensor, peak: float) -> torch.Tensor:
    """``matrix / peak`` (``matrix`` itself for a zero layer, whose peak is 0)."""
    return matrix / peak if peak > 0.0 else matrix
