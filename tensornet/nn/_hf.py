"""transformers' GPT-2 ``Conv1D``, recognised without importing transformers."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

__all__ = ["conv1d_class", "dense_weight", "linear_weight"]


def conv1d_class() -> Any:
    """Transformers' GPT-2 ``Conv1D`` if transformers is already imported (never imports it), else None."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module is not None else None


def linear_weight(module: Any, *, where: str = "linear_weight") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``(weight, bias)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D``, the weight as ``(out, in)``.

    GPT-2's ``Conv1D`` computes ``x @ W + b`` and stores ``W`` as ``(in, out)``; it is returned transposed, as
    a view, so both layer kinds read alike (``nn.Linear.weight``'s layout). ``where`` names the caller in errors.
    Cost: O(1), no copy.

    Raises
    ------
    TypeError
        ``module`` is neither an ``nn.Linear`` nor a ``Conv1D``.
    ValueError
        A ``Conv1D`` whose weight shape disagrees with its ``nx``/``nf``.
    """
    return dense_weight(where, module)


def dense_weight(fn: str, module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of an ``nn.Linear`` or a GPT-2 ``Conv1D``, the weight as ``(out, in)``.

    ``Conv1D`` stores its weight ``(in, out)`` (GPT-2 computes ``x @ W + b``): it is transposed here, on
    purpose, as a view.

    Raises
    ------
    TypeError
        Neither an ``nn.Linear`` nor a ``Conv1D``.
    ValueError
        A ``Conv1D`` whose weight shape disagrees with its ``nx``/``nf``.
    """
    if isinstance(module, nn.Linear):
        return module.weight, module.bias
    conv1d = conv1d_class()
    if conv1d is not None and isinstance(module, conv1d):
        weight = module.weight  # (nx, nf) = (in, out)
        if tuple(weight.shape) != (module.nx, module.nf):
            raise ValueError(
                f"{fn}: Conv1D has nx={module.nx}, nf={module.nf} but weight shape {tuple(weight.shape)}; "
                f"expected (nx, nf)"
            )
        return weight.T, module.bias
    raise TypeError(f"{fn}: expected an nn.Linear or transformers' Conv1D, got {type(module).__name__}")
