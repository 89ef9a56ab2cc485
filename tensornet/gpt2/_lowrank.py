"""The low-rank (truncated SVD) baseline the paper compares TTM layers against."""

from __future__ import annotations

import math

import torch
from torch import nn

from tensornet.nn import linear_weight


class LowRankLinear(nn.Module):
    """``y = x @ (B @ A).T + b`` with ``A`` ``(rank, in)`` and ``B`` ``(out, rank)``.

    The weight is stored ``(out, in)`` like ``nn.Linear``. From scratch, ``A`` and ``B`` are N(0, s^2) with
    ``s = sqrt(0.02 / sqrt(rank))`` so the product's entries have GPT-2's std 0.02. Cost per token:
    ``O(rank (in + out))``.
    """

    def __init__(
        self, in_features: int, out_features: int, *, rank: int, bias: bool = True, device=None, dtype=None
    ):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LowRankLinear: rank must be >= 1, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        std = math.sqrt(0.02 / math.sqrt(rank))
        self.a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))  # (r, in)
        self.b = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=dtype))  # (out, r)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        if self.a.device.type != "meta":
            nn.init.normal_(self.a, std=std)
            nn.init.normal_(self.b, std=std)
        self.conversion_error: float | None = None

    @classmethod
    def from_linear(cls, linear: nn.Module, *, rank: int, bias: bool = True) -> LowRankLinear:
        """Truncated SVD of the weight ``(out, in)`` of an ``nn.Linear`` or GPT-2 ``Conv1D``.

        The ``Conv1D`` weight is transposed on purpose. ``conversion_error`` = relative Frobenius error;
        ``bias=False`` drops the bias.
        """
        w, source_bias = linear_weight(linear, where="LowRankLinear.from_linear")
        w = w.detach()
        has_bias = bias and source_bias is not None
        new = cls(w.shape[1], w.shape[0], rank=rank, bias=has_bias, device=w.device, dtype=w.dtype)
        u, s, vh = torch.linalg.svd(w.double(), full_matrices=False)
        root = s[:rank].sqrt()
        with torch.no_grad():
            new.b.copy_(u[:, :rank] * root)  # (out, r)
            new.a.copy_(root[:, None] * vh[:rank])  # (r, in)
            if new.bias is not None and source_bias is not None:
                new.bias.copy_(source_bias.detach())
        norm = torch.linalg.vector_norm(s)
        new.conversion_error = float(torch.linalg.vector_norm(s[rank:]) / norm) if norm > 0 else 0.0
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(x @ a.T) @ b.T + bias`` for ``x`` ``(..., in_features)``: ``(..., out_features)``."""
        return nn.functional.linear(nn.functional.linear(x, self.a), self.b, self.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight ``B @ A`` (built on demand)."""
        return self.b @ self.a

    def extra_repr(self) -> str:
        """The sizes, as ``nn.Linear`` shows them, and the rank."""
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{sizes}, rank={self.rank}, bias={self.bias is not None}"
