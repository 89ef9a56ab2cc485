"""Calibration inputs for ``tensorize(..., budget=..., calibration=...)``: each layer's input Gram matrix.

With the inputs ``X_l`` ``(n, N)`` a matched layer receives when the model runs on the caller's batches,
the layer's output error is ``||(W_l - W~_l) X_l^T||_F^2 = tr(D_l G_l D_l^T)`` with ``D_l = W_l - W~_l`` and
``G_l = X_l^T X_l``, so the ``N x N`` Gram matrix is all the budget needs to keep (not the activations).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["Gram", "check_calibration", "record_grams"]


@dataclass(frozen=True, eq=False)
class Gram:
    """``G = scale^2 * matrix``: one layer's input Gram matrix, kept divided by its largest input entry.

    ``matrix``: float64 CPU ``(N, N)``; ``scale``: the largest ``|x|`` seen (0: only zero inputs);
    ``rows``: the number of input vectors summed.
    """

    matrix: torch.Tensor
    scale: float
    rows: int

    def energy(self, weight: torch.Tensor) -> float:
        """``tr(A G A^T) / scale^2`` for ``A`` ``(M, N)`` float64: the output energy of ``A`` on the inputs."""
        return float(torch.sum((weight @ self.matrix) * weight))


class _Accumulator:
    """A running ``sum_b X_b^T X_b`` kept as ``scale^2 * matrix`` (no overflow or underflow at any finite scale)."""

    def __init__(self, name: str, columns: int) -> None:
        self.name = name
        self.matrix = torch.zeros(columns, columns, dtype=torch.float64)
        self.scale = 0.0
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).to(device="cpu", dtype=torch.float64)
        peak = float(flat.abs().max()) if flat.numel() else 0.0
        if not math.isfinite(peak):
            raise ValueError(
                f"tensorize: the calibration inputs gave non-finite activations at the input of layer "
                f"{self.name}; give inputs on which the model's forward pass is finite"
            )
        self.rows += int(flat.shape[0])
        if peak == 0.0:
            return
        if peak > self.scale:  # rescale what is summed so far to the new peak (ratios <= 1: no overflow)
            self.matrix.mul_((self.scale / peak) ** 2)
            self.scale = peak
        scaled = flat / self.scale
        self.matrix.add_(scaled.T @ scaled)


def check_calibration(calibration: Any, budget: Any = 1.0) -> list[Any]:
    """The calibration argument as a list of batches, or a TypeError/ValueError saying what it must be."""
    if budget is None:
        raise ValueError(
            "tensorize: calibration is used only to choose the ranks under a budget; give budget= too "
            "(tensorize(model, rules, budget=0.3, calibration=batches)) or drop calibration"
        )
    single = (torch.Tensor, tuple, Mapping)
    batches = [calibration] if isinstance(calibration, single) else calibration
    if not isinstance(batches, Sequence) or isinstance(batches, (str, bytes)):
        raise TypeError(
            "tensorize: calibration must be the model's input for one batch (a tensor: model(x); a tuple: "
            "model(*args); a dict: model(**kwargs)) or a list of such batches, got "
            f"{type(calibration).__name__}"
        )
    if not batches:
        raise ValueError("tensorize: calibration is an empty list; give at least one batch of inputs")
    for index, batch in enumerate(batches):
        if not isinstance(batch, single):
            raise TypeError(
                f"tensorize: calibration batch {index} is a {type(batch).__name__}; each batch must be a "
                "tensor (model(x)), a tuple (model(*args)) or a dict (model(**kwargs))"
            )
    return list(batches)


def record_grams(model: nn.Module, targets: Sequence[tuple[str, Any]], calibration: Any) -> dict[str, Gram]:
    """Run ``model`` on the calibration batches (eval mode, no grad) and return each target's input Gram.

    ``targets``: ``(name, module)`` of the matched Linear/Conv1D layers. The model's train/eval flags are
    restored and the hooks removed afterwards, also when the forward pass raises.

    Raises
    ------
    TypeError, ValueError
        A calibration argument of another form; an empty list; non-finite activations; a target layer the
        batches never reach (the message names it).

    Cost: the forward passes, plus ``O(n N^2)`` per layer for its Gram matrix (n input vectors of size N).
    """
    batches = check_calibration(calibration)
    accumulators = {name: _Accumulator(name, _columns(module)) for name, module in targets}
    flags = [(module, module.training) for module in model.modules()]
    handles = [
        module.register_forward_pre_hook(lambda _, args, acc=accumulators[name]: acc.add(args[0]))
        for name, module in targets
    ]
    try:
        model.eval()
        with torch.no_grad():
            for batch in batches:
                if isinstance(batch, torch.Tensor):
                    model(batch)
                elif isinstance(batch, tuple):
                    model(*batch)
                else:
                    model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in flags:
            module.training = training
    missing = [name for name, acc in accumulators.items() if acc.rows == 0]
    if missing:
        raise ValueError(
            f"tensorize: the calibration batches never reached layer(s) {', '.join(missing)}; give inputs "
            "whose forward pass calls every layer the rules match (or match fewer layers)"
        )
    return {name: Gram(acc.matrix, acc.scale, acc.rows) for name, acc in accumulators.items()}


def _columns(module: Any) -> int:
    """The input size of a Linear (``in_features``) or transformers' Conv1D (``weight`` is ``(in, out)``)."""
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    return int(module.weight.shape[0])
