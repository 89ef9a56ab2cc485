"""Where a TT layer's product takes its weight from: one :class:`WeightSource` per layer state.

A layer's ``x @ W.T + bias`` runs on the cached dense matrix (:meth:`TTCoresModule.cache_dense_weight`),
on the W its :func:`tensornet.nn.materialize` group rebuilt, or on the cores (the factorised product). Which
of these a layer may use changes only when its state does (the cache switched on or off, the layer put into
or taken out of a group), so the chain of sources is chosen then (:func:`choose_source`) and each call asks
it once. A source that cannot serve a call (a gradient of the cores needed, another compute dtype, a group
that does not rebuild at this token count) passes it to the next; the last, :class:`Factored`, serves all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from tensornet._linear import binding

from ._cache import linear_compute_dtype

__all__ = ["CachedDense", "Factored", "GroupWeights", "WeightSource", "choose_source"]


class WeightSource(Protocol):
    def product(
        self, layer: Any, x: torch.Tensor, bias: torch.Tensor | None, save_weight: bool, names: Any
    ) -> torch.Tensor:
        """``x @ W.T + bias`` for ``layer``'s W (``x`` and ``bias`` checked against the layer already)."""
        ...


@dataclass(frozen=True)
class Factored:
    """The TTM product of the cores by the planned kernels (:func:`tensornet._linear.binding.layer_product`)."""

    def product(
        self, layer: Any, x: torch.Tensor, bias: torch.Tensor | None, save_weight: bool, names: Any
    ) -> torch.Tensor:
        return binding.layer_product(
            x, layer.packed_cores, bias, shapes=layer.core_shapes, save_weight=save_weight, names=names
        )


@dataclass(frozen=True)
class CachedDense:
    """``F.linear`` on the dense W the layer's cache holds, where no gradient of the cores is needed."""

    fallback: WeightSource

    def product(
        self, layer: Any, x: torch.Tensor, bias: torch.Tensor | None, save_weight: bool, names: Any
    ) -> torch.Tensor:
        if x.is_floating_point():
            compute = linear_compute_dtype(x, [layer.packed_cores])
            dense = None if compute is None else layer._cached_dense(x.device, compute)
            if dense is not None:
                if bias is not None and bias.dtype != dense.dtype:
                    bias = bias.to(dense.dtype)
                return nn.functional.linear(x.to(dense.dtype), dense, bias)
        return self.fallback.product(layer, x, bias, save_weight, names)


def _same_compute(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether ``x``, the cores and the bias meet in one dtype (equal, or so cast by autocast)."""
    if x.dtype == packed.dtype and (bias is None or bias.dtype == packed.dtype):
        return True
    compute = linear_compute_dtype(x, [packed])
    return compute is not None and (bias is None or linear_compute_dtype(bias, [packed]) == compute)


@dataclass(frozen=True)
class GroupWeights:
    """``F.linear`` on the W the layer's :func:`tensornet.nn.materialize` group rebuilt for this pass."""

    fallback: WeightSource

    def product(
        self, layer: Any, x: torch.Tensor, bias: torch.Tensor | None, save_weight: bool, names: Any
    ) -> torch.Tensor:
        group = layer.__dict__.get("_weight_group")
        # a shallow copy (nn.DataParallel's replicas) shares the __dict__, hence the group, but not the
        # parameters: the group's W are the original's, so the copy takes the per-layer path. Operands of
        # other dtypes take it too, for its error (F.linear's would name mat1 and mat2).
        if (
            group is not None
            and group[0].layers[group[1]] is layer
            and _same_compute(x, layer.packed_cores, bias)
        ):
            dense = group[0].weight(group[1], x)
            if dense is not None:
                return nn.functional.linear(x, dense, bias)
        return self.fallback.product(layer, x, bias, save_weight, names)


FACTORED = Factored()


def choose_source(layer: nn.Module) -> WeightSource:
    """The sources ``layer`` may use in its present state, most specific first (ends with the factorised one).

    Called whenever the state changes: the dense cache switched on or off, the layer grouped or ungrouped.
    """
    source: WeightSource = FACTORED
    if "_weight_group" in layer.__dict__:
        source = GroupWeights(source)
    if getattr(layer, "_dense_cache", None) is not None:
        source = CachedDense(source)
    return source
