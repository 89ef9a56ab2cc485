"""``TiedTTHead``: an output layer tied to a :class:`TTEmbedding` (GPT-2's LM head shares the token table)."""

from __future__ import annotations

import torch
from torch import nn

from ._embedding import TTEmbedding

__all__ = ["TiedTTHead"]


class TiedTTHead(nn.Module):
    """``logits = x @ E.T`` with ``E`` the ``(num_embeddings, embedding_dim)`` table of a :class:`TTEmbedding`.

    The head holds no parameters: it reads the embedding's cores, so the two stay tied through training and
    ``state_dict`` stores the cores once. Its forward is :class:`TTMLinear`'s, run on the embedding's cores
    (the TTM product, or under :func:`tensornet.nn.dense_weights` ``F.linear`` on the embedding's cached
    dense table); the rows of a padded vocabulary are dropped from the logits.

    Cost per token: that of ``tensornet.linear`` on ``E`` (at most ``O(V_padded * embedding_dim)``).
    """

    def __init__(self, embedding: TTEmbedding) -> None:
        super().__init__()
        if not isinstance(embedding, TTEmbedding):
            raise TypeError(f"TiedTTHead: expected a TTEmbedding, got {type(embedding).__name__}")
        self._embedding: tuple[TTEmbedding] = (embedding,)  # a tuple: not registered twice as a submodule

    @property
    def embedding(self) -> TTEmbedding:
        """The embedding whose table the head multiplies by."""
        return self._embedding[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., num_embeddings)`` of ``x`` ``(..., embedding_dim)``."""
        embedding = self._embedding[0]
        return embedding._product(x, owner=type(self).__name__)[..., : embedding.num_embeddings]

    def extra_repr(self) -> str:
        embedding = self._embedding[0]
        return f"tied to the TT embedding ({embedding.num_embeddings} x {embedding.embedding_dim})"
