"""PyTorch layers with tensor-train weights: :class:`TTMLinear`, :class:`TTEmbedding`, :func:`tensorize`.

This is the only part of tensornet that imports torch. Layout (as in :class:`tensornet.TTM`): core k has
shape ``(r_{k-1}, m_k, n_k, r_k)``; a layer weight is stored like ``nn.Linear.weight``, ``(out, in)``.
"""

from ._common import RankClipWarning
from ._linear import TTMLinear

__all__ = ["RankClipWarning", "TTMLinear"]
