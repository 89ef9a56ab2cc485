"""PyTorch layers with tensor-train weights: :class:`TTMLinear`, :class:`TTEmbedding`, :func:`tensorize`.

The LM head tied to a TT embedding, :class:`TiedTTHead`, runs :class:`TTMLinear`'s forward on its cores.

This is the only part of tensornet that imports torch. Layout (as in :class:`tensornet.TTM`): core k has
shape ``(r_{k-1}, m_k, n_k, r_k)``; a layer weight is stored like ``nn.Linear.weight``, ``(out, in)``.
"""

from ._embedding import TTEmbedding
from ._factor import RankClipWarning
from ._head import TiedTTHead
from ._hf import linear_weight
from ._linear import TTMLinear, dense_weights, tt_parameters
from ._materialize import materialize, release_weights
from ._tensorize import LayerReport, Rule, TensorizeReport, tensorize

__all__ = [
    "LayerReport",
    "RankClipWarning",
    "Rule",
    "TTEmbedding",
    "TTMLinear",
    "TensorizeReport",
    "TiedTTHead",
    "dense_weights",
    "linear_weight",
    "materialize",
    "release_weights",
    "tensorize",
    "tt_parameters",
]
