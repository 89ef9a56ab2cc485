"""Rank growth of TT layers in training: :func:`grow`, the reverse of :func:`~tensornet.nn.truncate`.

New directions enter with one zero slice, so the function is unchanged and the optimizer's state is carried
as :func:`~tensornet.nn.truncate` carries it (the maps here are embeddings).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tensornet import _checks
from tensornet.shapes import useful_ranks

from ._cores import TTCoresModule
from ._ranks import Maps, RankReport, _check_optimizer, _groups, _install, _regroup, _report, _tt_layers

__all__ = ["grow"]


def grow(model: nn.Module, rank: int, *, optimizer: Any = None) -> RankReport:
    """Raise every bond rank of every TT layer to ``rank`` (capped at its useful maximum), function unchanged.

    Parameters
    ----------
    model : nn.Module
    rank : int
        The new rank of every bond below it (bonds already at or above it are kept).
    optimizer : torch.optim.Optimizer, optional
        As in :func:`truncate`: its state is carried over (zero for the new entries).

    Returns
    -------
    RankReport
        ``error`` 0 for every layer.

    Raises
    ------
    TypeError, ValueError
        As :func:`truncate` (a merged adapter included); ``rank`` not an int or < 1; ``rank`` growing
        nothing (every bond of every layer already at or above it, or at its useful maximum: a call that
        would change nothing is taken for a mistake). Layers some of whose bonds grow are not an error.

    Notes
    -----
    At a bond grown from ``r`` to ``r'``, core k gets ``r' - r`` new right slices, random (from torch's
    global generator, at the RMS of the core's entries), and core k+1 gets ``r' - r`` new left slices,
    zero. Every term through a new direction passes a zero slice, so ``W`` is unchanged; the zero slices'
    gradients are not zero (they see the random ones), so the new directions train (as LoRA's zero
    ``B``). Had both been zero, neither would ever get a gradient.

    Cost: ``O(new parameters)``.
    """
    fn = "grow"
    rank = _checks.check_count(fn, "rank", rank)
    layers = _tt_layers(fn, model)
    _check_optimizer(fn, optimizer, layers)
    targets = [_new_ranks(layer, rank) for _, layer in layers]
    if all(new == list(layer.ranks) for new, (_, layer) in zip(targets, layers)):
        raise ValueError(
            f"{fn}: no bond of any TT layer can grow to rank {rank}: each is at or above it, or at its useful "
            f"maximum; the ranks are {[layer.ranks for _, layer in layers]}; nothing to grow. Give a higher rank "
            "(truncate lowers ranks)"
        )
    before = sum(layer.nparams for _, layer in layers)
    reports, groups = [], _groups(layers)
    for (name, layer), new_ranks in zip(layers, targets):
        params, ranks = layer.nparams, layer.ranks
        cores, maps = _grown(layer, new_ranks)
        _install(layer, cores, maps, optimizer)
        reports.append(_report(name, layer, params, 0.0, f"ranks {ranks} -> {layer.ranks}"))
    _regroup(groups)
    return RankReport(reports, before, sum(layer.nparams for _, layer in layers), None)


def _new_ranks(layer: TTCoresModule, rank: int) -> list[int]:
    """Every bond rank raised to ``rank`` where below it, capped at the bond's useful maximum."""
    caps = useful_ranks([s[1] * s[2] for s in layer.core_shapes])
    return [1, *(max(old, min(rank, cap)) for old, cap in zip(layer.ranks[1:-1], caps)), 1]


def _grown(layer: TTCoresModule, new_ranks: list[int]) -> tuple[list[torch.Tensor], Maps]:
    cores, maps = [], []
    for k, core in enumerate(layer.cores):
        core = core.detach()
        r0, m, n, r1 = core.shape
        s0, s1 = new_ranks[k], new_ranks[k + 1]
        grown = core.new_zeros(s0, m, n, s1)
        grown[:r0, :, :, :r1] = core
        if s1 > r1:
            rms = float(core.double().square().mean().sqrt()) or 1 / math.sqrt(r0 * m * n)
            grown[:r0, :, :, r1:] = torch.randn(r0, m, n, s1 - r1, dtype=core.dtype, device=core.device) * rms
        cores.append(grown)
        # the embeddings of the old rank indices into the new ones
        maps.append(
            (
                torch.eye(s0, r0, dtype=torch.float64, device=core.device),
                torch.eye(r1, s1, dtype=torch.float64, device=core.device),
            )
        )
    return cores, maps
