"""Rank changes of TT layers in training: :func:`truncate` (round to eps or a budget); :func:`grow` is in ``_grow``.

Both replace each layer's packed cores by a new parameter and carry an optimizer's state over to it, so
training continues without a restart. The new cores are linear images of the old ones,
``H_k = A_k x_1 G_k x_4 L_k`` (``A_k`` acting on the left rank index, ``L_k`` on the right one), and the
optimizer's moments are carried by the same maps (see :func:`truncate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tensornet import _checks

from ._adapter import TTAdapter
from ._cores import TTCoresModule
from ._materialize import regroup
from ._tensorize import LayerReport

__all__ = ["RankReport", "truncate"]

# optimizer state entries that are linear in the gradient (carried by the maps) and those that are
# squares of it (carried by the maps' entrywise squares); any other entry of the parameter's shape is refused
_LINEAR = ("exp_avg", "momentum_buffer")
_SQUARED = ("exp_avg_sq", "max_exp_avg_sq")
Maps = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class RankReport:
    """What :func:`truncate` or :func:`grow` did to each TT layer (``LayerReport.error``: what it lost).

    ``eps``: the relative accuracy every layer was rounded to (for a budget, the one found); None for grow.
    """

    layers: list[LayerReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    eps: float | None = None

    @property
    def ratio(self) -> float:
        """TT parameters after divided by before."""
        return self.params_after / self.params_before if self.params_before else 1.0


def _tt_layers(fn: str, model: Any) -> list[tuple[str, TTCoresModule]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: expected an nn.Module, got {type(model).__name__}")
    seen: dict[int, tuple[str, TTCoresModule]] = {}
    for name, module in model.named_modules():
        if isinstance(module, TTAdapter) and module.merged:  # its base weight holds the old update
            raise ValueError(
                f"{fn}: the adapter {name} is merged; unmerge(model) first (unmerge subtracts the update "
                "merge added, which a changed update could no longer do)"
            )
        if isinstance(module, TTCoresModule) and id(module) not in seen:
            seen[id(module)] = (name, module)
    if not seen:
        raise ValueError(f"{fn}: the model has no TT layers (TTMLinear, TTEmbedding, TT adapters)")
    return list(seen.values())


def _right_factors(cores: list[torch.Tensor]) -> list[torch.Tensor]:
    """``Z_k`` with ``X_{>k} = Z_k Q_{>k}``, ``Q`` orthonormal rows: the right parts' R factors (no inverses)."""
    factors = [torch.ones(1, 1, dtype=torch.float64, device=cores[0].device)]
    for core in reversed(cores[1:]):
        carried = torch.einsum("aijb,bc->aijc", core, factors[0]).reshape(core.shape[0], -1)
        _, r = torch.linalg.qr(carried.T)
        factors.insert(0, r.T)
    return factors


def _round(
    cores: list[torch.Tensor], factors: list[torch.Tensor], eps: float
) -> tuple[list[torch.Tensor], Maps, float]:
    """TT rounding (right-orthogonal sweep, then truncated SVDs left to right) with the maps it applies.

    Returns the new cores, ``(A_k, L_k)`` per core with ``H_k = A_k x_1 G_k x_4 L_k``, and the relative
    error ``sqrt(sum of the discarded squared singular values) / ||W||_F`` (exact for this sweep).
    """
    d = len(cores)
    left = torch.ones(1, 1, dtype=torch.float64, device=cores[0].device)
    new, maps, norm, lost = [], [], 0.0, 0.0
    for k in range(d - 1):
        carried = torch.einsum("xa,aijb->xijb", left, cores[k])
        flat = carried.reshape(-1, carried.shape[-1])
        u, s, vh = torch.linalg.svd(flat @ factors[k], full_matrices=False)
        if k == 0:
            norm = float(torch.linalg.vector_norm(s))
        tail = torch.cumsum(s.flip(0) ** 2, 0).flip(0)  # tail[i]: sum of s[i:]^2
        threshold = (eps / math.sqrt(d - 1) * norm) ** 2
        tiny = float(s[0]) * max(flat.shape) * torch.finfo(torch.float64).eps  # numerically zero
        keep = max(1, int(((tail > threshold) & (s > tiny)).sum()))
        lost += float(tail[keep]) if keep < len(s) else 0.0
        inverse = torch.where(s[:keep] > 0, 1 / s[:keep].clamp_min(1e-300), torch.zeros_like(s[:keep]))
        right = factors[k] @ vh[:keep].T * inverse  # (r_k, keep): H_k = carried x_4 right
        core = u[:, :keep].reshape(*carried.shape[:-1], keep)
        new.append(core)
        maps.append((left, right))
        left = u[:, :keep].T @ flat  # (keep, r_k): the old left interface seen from the new one
    new.append(torch.einsum("xa,aijb->xijb", left, cores[-1]))
    maps.append((left, torch.ones(1, 1, dtype=torch.float64, device=cores[0].device)))
    return new, maps, (math.sqrt(lost) / norm if norm > 0 else 0.0)


def _apply_maps(flat: torch.Tensor, shapes: Any, maps: Maps, squared: bool) -> torch.Tensor:
    """The maps applied core by core to a flat tensor of the old cores' layout.

    ``squared``: a second moment ``v``, carried by the maps' entrywise squares, ``(A*A) v (L*L)``.
    """
    sizes = [math.prod(s) for s in shapes]
    out = []
    for piece, shape, (a, b) in zip(flat.double().split(sizes), shapes, maps):
        if squared:
            a, b = a * a, b * b
        out.append(torch.einsum("xa,aijb,by->xijy", a, piece.reshape(shape), b).reshape(-1))
    return torch.cat(out).to(flat.dtype)


def _balanced(
    new: list[torch.Tensor], old: list[torch.Tensor], maps: Maps
) -> tuple[list[torch.Tensor], Maps]:
    """The new cores rescaled to the old cores' Frobenius norms (a scalar gauge: W unchanged), the maps too.

    The rounding leaves cores 1..d-1 orthonormal and the weight's norm in the last core; Adam moves every
    entry by about ``lr`` whatever its size, so without this the relative steps of the cores would change.
    """
    scales = []
    for h, g in zip(new[:-1], old[:-1]):
        hn, gn = float(torch.linalg.vector_norm(h)), float(torch.linalg.vector_norm(g))
        scales.append(gn / hn if hn > 0 and gn > 0 else 1.0)
    scales.append(math.exp(-sum(math.log(c) for c in scales)))  # the product of the scales is 1
    return [c * h for c, h in zip(scales, new)], [(a, c * b) for c, (a, b) in zip(scales, maps)]


def _check_optimizer(fn: str, optimizer: Any, layers: list[tuple[str, TTCoresModule]]) -> None:
    if optimizer is None:
        return
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"{fn}: optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}"
        )
    for name, layer in layers:
        packed = layer.packed_cores
        for key, value in optimizer.state.get(packed, {}).items():
            if (
                isinstance(value, torch.Tensor)
                and value.shape == packed.shape
                and key not in _LINEAR + _SQUARED
            ):
                raise TypeError(
                    f"{fn}: the optimizer's state {key!r} of {name} has the cores' shape but is not one whose "
                    f"transformation is known ({', '.join(_LINEAR + _SQUARED)}); use Adam/AdamW/SGD or "
                    "rebuild the optimizer after the call"
                )


def _install(layer: TTCoresModule, cores: list[torch.Tensor], maps: Maps, optimizer: Any) -> None:
    """Replace ``layer``'s packed cores by ``cores`` and move the optimizer's state to the new parameter."""
    old = layer.packed_cores
    flat = torch.cat([c.reshape(-1) for c in cores]).to(device=old.device, dtype=old.dtype)
    new = nn.Parameter(flat, requires_grad=old.requires_grad)
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["params"] = [new if p is old else p for p in group["params"]]
        if old in optimizer.state:
            state = optimizer.state.pop(old)
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == old.shape:
                    state[key] = _apply_maps(value, layer.core_shapes, maps, key in _SQUARED)
            optimizer.state[new] = state
    layer.packed_cores = new  # a materialize group it is in is rebuilt by _regroup (shapes changed)
    layer.core_shapes = tuple(tuple(int(n) for n in c.shape) for c in cores)  # type: ignore[misc]
    cache = getattr(layer, "_dense_cache", None)
    if cache is not None:
        cache.clear()


def _report(name: str, layer: TTCoresModule, before: int, error: float, note: str) -> LayerReport:
    rows = tuple(s[1] for s in layer.core_shapes)
    cols = tuple(s[2] for s in layer.core_shapes)
    return LayerReport(
        name,
        type(layer).__name__,
        (math.prod(rows), math.prod(cols)),
        rows,
        cols,
        layer.ranks,
        before,
        layer.nparams,
        error,
        note,
    )


def _check_budget(fn: str, eps: Any, budget: Any) -> tuple[float | None, float | None]:
    if (eps is None) == (budget is None):
        raise ValueError(
            f"{fn}: give exactly one of eps (a relative accuracy) and budget (a fraction in (0, 1])"
        )
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, int | float):
            raise TypeError(f"{fn}: budget must be a number in (0, 1], got {type(budget).__name__}")
        if not 0 < float(budget) <= 1:
            raise ValueError(
                f"{fn}: budget must be in (0, 1] (the fraction of the TT layers' parameters to keep), got {budget}"
            )
        return None, float(budget)
    return _checks.check_eps(fn, eps), None


def truncate(
    model: nn.Module, *, eps: float | None = None, budget: float | None = None, optimizer: Any = None
) -> RankReport:
    """Round every TT layer of ``model`` (TTMLinear, TTEmbedding, TT adapters) in place, to ``eps`` or a budget.

    Parameters
    ----------
    model : nn.Module
    eps : float, optional
        Every layer's weight ``W`` is rounded to ``||W - W'||_F <= eps ||W||_F``.
    budget : float in (0, 1], optional
        Keep at most this fraction of the TT layers' parameters (their sum now): every layer is rounded
        to one common relative accuracy, the smallest (found by bisection) whose total fits the budget.
    optimizer : torch.optim.Optimizer, optional
        Its state for the layers' cores is carried over to the new cores and the new parameters replace
        the old ones in its param groups, so training continues without a restart.

    Returns
    -------
    RankReport
        Per layer (``LayerReport``): the new ranks, parameters before and after and ``error``, the
        relative Frobenius error of its weight (what it lost); the common ``eps``.

    Raises
    ------
    TypeError
        ``model`` not a module, a bad ``optimizer`` or one with state entries of the cores' shape whose
        transformation is unknown (only ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` and
        ``momentum_buffer`` are carried).
    ValueError
        No TT layers; both or neither of ``eps`` and ``budget``; ``eps`` negative or not finite;
        ``budget`` outside ``(0, 1]`` or below the fraction that rank 1 everywhere keeps; a merged
        TT adapter (:func:`unmerge` first). Nothing is changed then.

    Notes
    -----
    The rounding is TT-SVD rounding (Oseledets 2011): a right-to-left QR sweep, then truncated SVDs left
    to right with the per-bond threshold ``eps / sqrt(d - 1) * ||W||_F``; it computes, without
    inverting any factor, the maps ``A_k`` (old left rank index to new) and ``L_k`` (old right index to
    new) with ``H_k = A_k x_1 G_k x_4 L_k``: each new core is a linear image of its old core.

    The new cores are then rescaled to the old cores' Frobenius norms (scalars whose product is 1, so
    ``W`` is unchanged): Adam moves each entry by about ``lr`` whatever its size, and the rounding's
    orthonormal cores would otherwise take relatively larger steps than the trained ones did.

    The optimizer's state is carried by the same maps: ``exp_avg`` and ``momentum_buffer`` as the cores
    are (``m' = A m L``); ``exp_avg_sq`` (and ``max_exp_avg_sq``) by the maps' entrywise squares,
    ``v' = (A*A) v (L*L)``, the second moment of ``A g L`` if the entries of ``g`` were independent:
    nonnegative, and where a map only rescales, Adam's ``m / sqrt(v)`` is unchanged. (Tried and set
    aside: ``v' = (|A| sqrt(v) |L|)^2``, which bounds ``|m'|`` by ``sqrt(v')`` but made the steps after
    a truncation smaller and the recovery slower in ``tests/test_nn_ranks.py``'s model.) ``step`` is
    kept. ``optimizer.state`` then holds the new parameter
    only (no reference to the old one is kept anywhere). A :func:`materialize`'d model is regrouped.
    Wrap the model in DDP again after a call (DDP holds the old parameters).

    Cost: ``O(d n r^3)`` per layer (``n = m_k n_k``), times about 40 for a budget's bisection.
    """
    fn = "truncate"
    eps, budget = _check_budget(fn, eps, budget)
    layers = _tt_layers(fn, model)
    _check_optimizer(fn, optimizer, layers)
    prepared, scales = [], []
    for _, layer in layers:
        cores, powers = _normalized(layer)
        prepared.append((cores, _right_factors(cores) if len(cores) > 1 else None))
        scales.append(powers)
    before = sum(layer.nparams for _, layer in layers)
    if budget is not None:
        eps = _bisect(fn, prepared, budget * before, before)
    eps = float(eps or 0.0)  # one of the two was given (checked above)
    results = []
    for cores, factors in prepared:
        if factors is None:  # one core: no bond to round
            results.append((cores, [_identity(cores[0])], 0.0))
            continue
        rounded, maps, error = _round(cores, factors, eps)
        results.append((*_balanced(rounded, cores, maps), error))
    reports, groups = [], _groups(layers)
    for (name, layer), (cores, maps, error), powers in zip(layers, results, scales):
        params = layer.nparams
        ranks = layer.ranks
        # H_k = A_k (G_k / s_k) L_k, so s_k H_k = A_k G_k L_k: the scales return, the maps stay
        _install(layer, [c * p for c, p in zip(cores, powers)], maps, optimizer)
        reports.append(_report(name, layer, params, error, f"ranks {ranks} -> {layer.ranks}"))
    _regroup(groups)
    return RankReport(reports, before, sum(layer.nparams for _, layer in layers), eps)


def _normalized(layer: TTCoresModule) -> tuple[list[torch.Tensor], list[float]]:
    """The cores in float64, each divided by a power of 2 near its largest entry, and those powers.

    The sweep's norms and squared singular values then neither overflow nor underflow at any finite
    scale of the cores (1e200 or 1e-200 in float64).
    """
    cores, powers = [], []
    for core in layer.cores:
        core = core.detach().to(torch.float64)
        peak = float(core.abs().max()) if core.numel() else 0.0
        power = 2.0 ** math.floor(math.log2(peak)) if peak > 0 and math.isfinite(peak) else 1.0
        cores.append(core / power)
        powers.append(power)
    return cores, powers


def _identity(core: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    one = torch.ones(1, 1, dtype=torch.float64, device=core.device)
    return one, one


def _params(prepared: list[Any], eps: float) -> int:
    total = 0
    for cores, factors in prepared:
        new = _round(cores, factors, eps)[0] if factors is not None else cores
        total += sum(c.numel() for c in new)
    return total


def _bisect(fn: str, prepared: list[Any], target: float, before: int) -> float:
    """The smallest common eps whose rounded layers total at most ``target`` parameters."""
    high = 2.0 * math.sqrt(max(len(c) for c, _ in prepared))  # past sqrt(d - 1): rank 1 everywhere
    floor = _params(prepared, high)
    if floor > target:
        raise ValueError(
            f"{fn}: budget {target / before:.4g} is below what rank 1 everywhere keeps "
            f"({floor / before:.4g} of the TT layers' {before:,} parameters); give a budget >= {floor / before:.4g}"
        )
    if _params(prepared, 0.0) <= target:
        return 0.0
    low = 1e-12
    for _ in range(40):  # on a log scale: a relative width of about 1e-3 in eps
        middle = math.sqrt(low * high)
        if _params(prepared, middle) <= target:
            high = middle
        else:
            low = middle
    return high


def _groups(layers: list[tuple[str, TTCoresModule]]) -> list[Any]:
    """The :func:`~tensornet.nn.materialize` groups the layers are in (before their shapes change)."""
    found = {}
    for _, layer in layers:
        entry = layer.__dict__.get("_weight_group")
        if entry is not None:
            found[id(entry[0])] = entry[0]
    return list(found.values())


def _regroup(groups: list[Any]) -> None:
    """Group the members of ``groups`` (some changed their core shapes) again by their shapes now.

    This also holds where the model given was a submodule of the materialized one.
    """
    regroup([layer for group in groups for layer in group.layers])
