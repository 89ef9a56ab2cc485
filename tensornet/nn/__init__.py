"""PyTorch layers with tensor-train weights: :class:`TTMLinear`, :class:`TTEmbedding`, :func:`tensorize`.

TT adapters for fine-tuning a frozen model (:func:`adapt`, :func:`merge`, :func:`unmerge`,
:func:`save_adapter`), and rank changes in training (:func:`truncate`, :func:`grow`).

The LM head tied to a TT embedding, :class:`TiedTTHead`, runs :class:`TTMLinear`'s forward on its cores.

This is the only part of tensornet that imports torch. Layout (as in :class:`tensornet.TTM`): core k has
shape ``(r_{k-1}, m_k, n_k, r_k)``; a layer weight is stored like ``nn.Linear.weight``, ``(out, in)``.
"""

from ._adapter import TTAdapter, adapt, adapter_state_dict, adapters, merge, unmerge
from ._adapter_files import load_adapter, save_adapter
from ._embedding import TTEmbedding
from ._factor import RankClipWarning
from ._grow import grow
from ._head import TiedTTHead
from ._hf import linear_weight
from ._linear import TTMLinear, dense_weights, tt_parameters
from ._materialize import materialize, release_weights
from ._ranks import RankReport, truncate
from ._rules import Rule
from ._tensorize import LayerReport, TensorizeReport, tensorize

__all__ = [
    "LayerReport",
    "RankClipWarning",
    "RankReport",
    "Rule",
    "TTAdapter",
    "TTEmbedding",
    "TTMLinear",
    "TensorizeReport",
    "TiedTTHead",
    "adapt",
    "adapter_state_dict",
    "adapters",
    "dense_weights",
    "grow",
    "linear_weight",
    "load_adapter",
    "materialize",
    "merge",
    "release_weights",
    "save_adapter",
    "tensorize",
    "truncate",
    "tt_parameters",
    "unmerge",
]
