"""TT adapters: :func:`adapt` adds a trainable TT-matrix update to a frozen model's linear layers.

Parameter-efficient fine-tuning in the manner of LoRA (Hu et al., 2021, arXiv 2106.09685), with the
low-rank product ``B A`` replaced by a TT-matrix, as in LoRETTA (Yang et al., NAACL 2024,
arXiv 2402.11417) and TT-LoRA. :func:`merge` folds each update into its base weight and :func:`unmerge`
takes it out again. Saving and loading the adapters alone: :func:`save_adapter`, :func:`load_adapter`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tensornet import _checks

from ._adapter_product import folded_product
from ._adapter_targets import (
    ShapePair,
    _check_shape_keys,
    _check_untied,
    _is_linear,
    _matches,
    _shape_for,
)
from ._hf import dense_weight
from ._linear import TTMLinear

__all__ = ["TTAdapter", "adapt", "adapter_state_dict", "adapters", "merge", "unmerge"]


class TTAdapter(nn.Module):
    """A frozen linear layer plus a trainable TT-matrix update: ``y = base(x) + scaling * delta(dropout(x))``.

    ``base`` is the original ``nn.Linear`` (or transformers' GPT-2 ``Conv1D``), unchanged; ``delta`` is a
    bias-free :class:`TTMLinear` of the same ``(out, in)`` size. While :attr:`merged`, ``base``'s weight
    holds ``W + scaling * delta.W`` and the forward is ``base(x)`` alone (the base layer's cost).
    Built by :func:`adapt`.

    Cost per call: rebuilding ``delta.W`` (``O(out * in * r)``) and the base layer's product on the
    folded weight; with dropout, the base layer's product plus that of ``delta`` (:func:`tensornet.linear`);
    merged, the base layer's alone. In training the update's cores need the dense gradient of the weight,
    one more ``(out, in)``-sized product per step than LoRA's thin factors, then ``O(out * in * r)`` to
    reach the cores.
    """

    def __init__(self, base: nn.Module, delta: TTMLinear, scaling: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.delta = delta
        self.scaling = float(scaling)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # while merged: delta's packed cores and the scaling as merged (a copy: survives deepcopy/pickle)
        self._merged: tuple[torch.Tensor, float] | None = None

    @property
    def merged(self) -> bool:
        """Whether the update is folded into ``base``'s weight (:func:`merge`)."""
        return self._merged is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scaling * delta(dropout(x))`` (``base(x)`` while merged).

        Without dropout the update is folded into the weight for the call: ``W + scaling * delta.W`` is
        rebuilt and applied as the base layer applies its weight (``F.linear``, or ``Conv1D``'s
        ``addmm``), one product instead of two, in one autograd node whose backward takes the cores'
        gradients from ``dW = g^T x`` by the TT kernels (:mod:`._adapter_product`). The backward holds the
        ``(out, in)`` sum, as a dense layer holds its weight.
        """
        if self._merged is not None:
            return self.base(x)
        if not isinstance(self.dropout, nn.Identity):
            return self.base(x) + self.scaling * self.delta(self.dropout(x))
        delta = self.delta
        bias: torch.Tensor | None = getattr(self.base, "bias", None)
        conv1d = not isinstance(self.base, nn.Linear)  # Conv1D stores (in, out)
        return folded_product(
            x, _weight(self), bias, delta.packed_cores, delta.core_shapes, self.scaling, conv1d
        )

    def delta_weight(self) -> torch.Tensor:
        """``scaling * delta.W`` as a dense ``(out, in)`` tensor in the base weight's dtype (no gradient)."""
        weight, _ = dense_weight("TTAdapter", self.base)
        with torch.no_grad():
            return (self.scaling * self.delta.to_linear().weight).to(weight.dtype)

    def extra_repr(self) -> str:
        return f"scaling={self.scaling:g}, merged={self.merged}"


def _zero_last_core(delta: TTMLinear) -> None:
    """Cores 1..d-1 left-orthonormal (random, from torch's global generator), the last core zero."""
    with torch.no_grad():
        cores = delta.cores
        for core in cores[:-1]:
            r0, m, n, r1 = core.shape
            draw = torch.randn(r0 * m * n, r1, dtype=torch.float64)
            q, _ = torch.linalg.qr(draw)  # r1 <= r0 m n: the layer's ranks are clipped to that
            core.copy_(q.reshape(core.shape).to(core.dtype))
        cores[-1].zero_()


def adapt(
    model: nn.Module,
    targets: str | Sequence[str] | re.Pattern[str],
    *,
    rank: int | tuple[int, ...],
    shapes: ShapePair | Mapping[str, ShapePair] | None = None,
    ncores: int = 3,
    alpha: float = 8.0,
    dropout: float = 0.0,
) -> nn.Module:
    r"""Freeze ``model`` and add a trainable TT-matrix update to each targeted linear layer, in place.

    Parameters
    ----------
    model : nn.Module
        Any model whose targeted layers are ``nn.Linear`` or transformers' GPT-2 ``Conv1D``.
    targets : str, re.Pattern or list of str
        As PEFT's ``target_modules``: a string is a regular expression the whole dotted module name must
        match (``r".*\.attn\.c_attn"``); a list names modules by their last name components (``"c_attn"``
        matches ``transformer.h.0.attn.c_attn``).
    rank : int or tuple of int
        The update's TT ranks (one for every bond, or per bond); ranks above their useful maximum are
        clipped with a :class:`RankClipWarning`.
    shapes : (out_shape, in_shape), or a dict of them by module name, optional
        The factorisations of the update's TT-matrix; default: :func:`tensornet.shapes.factorize` into
        ``ncores`` factors. A dict's keys are full module names of targets (others left to the default);
        a key that names no target is an error.
    ncores : int
        Cores of a factorised update (default 3).
    alpha : float
        The update is scaled by ``alpha / max(rank)``, as LoRA scales by ``alpha / r`` (PEFT's default
        ``alpha = 8``).
    dropout : float
        Dropout on the update's input (LoRA's ``lora_dropout``), in ``[0, 1)``.

    Returns
    -------
    nn.Module
        ``model`` itself: every parameter frozen (``requires_grad=False``) but the updates' cores; each
        targeted layer replaced by a :class:`TTAdapter` holding it as ``.base``.

    Raises
    ------
    TypeError
        ``model`` not a module; bad ``targets``/``shapes`` types; a targeted module that is not a linear
        layer (nothing is changed then).
    ValueError
        ``targets`` matching no module, or an already adapted one, or a layer whose weight is shared
        with another module (tied weights: untie them first); ``rank < 1``; shapes that do not factor
        the layer's size, or a ``shapes`` key naming no target; ``alpha`` not finite and positive;
        ``dropout`` outside ``[0, 1)``. Nothing is changed then.

    Notes
    -----
    At step 0 the adapted model computes exactly what the base model computes: the update
    ``delta W = (alpha / r) G_1 G_2 ... G_d`` has its LAST core ``G_d`` zero and the others random
    (left-orthonormal: ``||delta W||_F = (alpha / r) ||G_d||_F``). A TT with every core zero could never
    train (each core's gradient is a product of the others); with one zero core the gradient reaches
    ``G_d`` (as LoRA's zero ``B`` gets its gradient through the random ``A``), and the other cores'
    gradients follow once it is nonzero. The update is a :class:`TTMLinear`, so :func:`truncate` and
    :func:`grow` treat it as any TT layer; the adapter's forward folds it into the weight
    (:class:`TTAdapter`) and runs under autocast, ``torch.compile`` and DDP. Reference: LoRETTA, Yang et
    al., NAACL 2024.

    Cost: ``O(sum of the updates' parameters)`` to build.
    """
    fn = "adapt"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: expected an nn.Module, got {type(model).__name__}")
    matches = _matches(fn, targets)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < float(alpha) < float("inf"):
        raise ValueError(f"{fn}: alpha must be a finite number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= float(dropout) < 1:
        raise ValueError(f"{fn}: dropout must be a number in [0, 1), got {dropout!r}")
    ncores = _checks.check_count(fn, "ncores", ncores)
    if _checks.is_int(rank):
        top = _checks.check_count(fn, "rank", rank)
    elif isinstance(rank, Sequence):  # the layers check the count of entries; here only their values
        top = max(_checks.parse_ranks(fn, "rank", rank, len(rank) + 1, owner="update"))
    else:
        raise TypeError(f"{fn}: rank must be an int or a tuple of ints, got {type(rank).__name__} {rank!r}")
    chosen = _targeted(fn, model, matches, targets)
    _check_shape_keys(fn, shapes, chosen)
    built = []
    for name, module in chosen:  # all built before any is swapped in: an error changes nothing
        weight, _ = dense_weight(fn, module)
        out_shape, in_shape = _shape_for(fn, shapes, name)
        try:
            delta = TTMLinear(
                int(weight.shape[1]),
                int(weight.shape[0]),
                rank=rank,
                in_shape=in_shape,
                out_shape=out_shape,
                ncores=ncores,
                bias=False,
                device=weight.device,
                dtype=weight.dtype,
            )
        except (TypeError, ValueError) as error:  # the layer's message, under the name the user called
            text = str(error).removeprefix("TTMLinear: ")
            raise type(error)(f"{fn}: {name}: {text}") from None
        _zero_last_core(delta)
        built.append((name, TTAdapter(module, delta, float(alpha) / top, float(dropout))))
    for param in model.parameters():
        param.requires_grad_(False)
    for _, adapter in adapters(model):
        adapter.delta.requires_grad_(True)
    for name, adapter in built:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, adapter)
    return model


def _targeted(fn: str, model: nn.Module, matches: Any, targets: Any) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs ``targets`` selects; errors for none, non-linear or adapted ones."""
    inside = {id(a.base) for _, a in adapters(model)} | {id(a.delta) for _, a in adapters(model)}
    chosen = []
    for name, module in model.named_modules():
        if not name or not matches(name) or id(module) in inside:
            continue
        if isinstance(module, TTAdapter):
            raise ValueError(
                f"{fn}: {name} is already adapted; unmerge and build a new model to adapt it again"
            )
        if not _is_linear(module):
            raise TypeError(
                f"{fn}: targets {targets!r} matches {name}, a {type(module).__name__}; only nn.Linear and "
                "transformers' Conv1D layers can be adapted: name the linear layers inside it"
            )
        chosen.append((name, module))
    if chosen:
        _check_untied(fn, model, chosen)
    if not chosen:
        names = [n for n, m in model.named_modules() if _is_linear(m)][:8]
        raise ValueError(
            f"{fn}: targets {targets!r} matches no module of the model; its linear layers include {names}"
        )
    return chosen


def adapters(model: nn.Module) -> Iterator[tuple[str, TTAdapter]]:
    """The ``(name, adapter)`` pairs of every :class:`TTAdapter` in ``model``.

    Raises
    ------
    TypeError
        ``model`` not a module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"adapters: expected an nn.Module, got {type(model).__name__}")
    for name, module in model.named_modules():
        if isinstance(module, TTAdapter):
            yield name, module


def _found(fn: str, model: nn.Module) -> list[tuple[str, TTAdapter]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: expected an nn.Module, got {type(model).__name__}")
    found = list(adapters(model))
    if not found:
        raise ValueError(
            f"{fn}: the model has no TT adapters; add them with tensornet.nn.adapt(model, targets, ...)"
        )
    return found


def _weight(adapter: TTAdapter) -> torch.Tensor:
    """The base weight as stored: ``(out, in)`` for ``nn.Linear``, ``(in, out)`` for ``Conv1D``."""
    weight = adapter.base.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"TTAdapter: the base layer's weight is a {type(weight).__name__}, not a tensor")
    return weight


def _stored(adapter: TTAdapter) -> torch.Tensor:
    """``scaling * delta.W`` in the base weight's stored layout and dtype."""
    delta = adapter.delta_weight()
    return delta if isinstance(adapter.base, nn.Linear) else delta.T


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter's update into its base weight: the forward then costs the base model's.

    Adapters already merged are left as they are.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    TypeError
        ``model`` not a module.
    ValueError
        The model has no adapters.

    Notes
    -----
    ``W <- W + scaling * delta.W`` in the base weight's dtype. :func:`unmerge` subtracts the same update,
    which recovers ``W`` up to rounding (one rounding of the weight's dtype per entry). While merged the
    update gets no gradient: merge for inference, unmerge to train again.

    Cost: rebuilding each update, ``O(out * in)`` per adapter.
    """
    for _, adapter in _found("merge", model):
        if adapter.merged:
            continue
        with torch.no_grad():
            _weight(adapter).add_(_stored(adapter))
        adapter._merged = (adapter.delta.packed_cores.detach().clone(), adapter.scaling)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Take every merged adapter's update out of its base weight again (the inverse of :func:`merge`).

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    TypeError
        ``model`` not a module.
    ValueError
        The model has no adapters.
    RuntimeError
        An adapter's cores or scaling changed since :func:`merge` (an optimizer step, a write to the
        cores): subtracting the new update would not give the base weight back. Nothing is changed then.

    Notes
    -----
    :func:`merge` keeps a copy of each update's cores and scaling (the adapter's parameters again, in
    memory, not in ``state_dict``), compared here value by value: a ``copy.deepcopy`` or pickled copy of
    a merged model unmerges as the original does.

    Cost: rebuilding each update, ``O(out * in)`` per adapter.
    """
    found = [(name, a) for name, a in _found("unmerge", model) if a.merged]
    for name, adapter in found:
        if not _unchanged(adapter):
            raise RuntimeError(
                f"unmerge: the update of {name} changed after merge (its cores were written); the base "
                "weight cannot be recovered from it. Merge only for inference and unmerge before training"
            )
    for _, adapter in found:
        with torch.no_grad():
            _weight(adapter).sub_(_stored(adapter))
        adapter._merged = None
    return model


def _unchanged(adapter: TTAdapter) -> bool:
    """Whether the adapter's update is the one :func:`merge` folded in (same core shapes, values, scaling)."""
    if adapter._merged is None:
        return True
    cores, scaling = adapter._merged
    packed = adapter.delta.packed_cores.detach()
    # the copy is no buffer, so model.to(...) after merge leaves it where it was: compare it moved
    same = cores.shape == packed.shape and torch.equal(cores.to(packed), packed)
    return same and scaling == adapter.scaling


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' entries of ``model.state_dict()``: each update's packed cores and core shapes.

    ``model.load_state_dict(sd, strict=False)`` loads it back into a model adapted on the same layers
    with the same ranks and shapes AND the same ``alpha``: the dict holds no scaling (``alpha / max(rank)``,
    kept on each :class:`TTAdapter`), so a model adapted with another ``alpha`` computes a differently
    scaled update from the same cores, without error. :func:`save_adapter` stores the scaling, and
    :func:`load_adapter` sets it and rebuilds updates of other (truncated, grown) ranks.

    Raises
    ------
    TypeError
        ``model`` not a module.
    ValueError
        The model has no adapters.
    """
    state = {}
    for name, adapter in _found("adapter_state_dict", model):
        for key, value in adapter.delta.state_dict().items():
            state[f"{name}.delta.{key}"] = value.detach()
    return state
