"""``TiedTTHead``: an output layer tied to a :class:`TTEmbedding` (GPT-2's LM head shares the token table)."""

from __future__ import annotations

import torch
from torch import nn

import tensornet as tn
from tensornet._linear import autograd as _binding

from ._cache import linear_compute_dtype
from ._embedding import TTEmbedding

__all__ = ["TiedTTHead"]


class TiedTTHead(nn.Module):
    """``logits = x @ E.T`` with ``E`` the ``(num_embeddings, embedding_dim)`` table of a :class:`TTEmbedding`.

    The head holds no parameters: it reads the embedding's cores, so the two stay tied through training and
    ``state_dict`` stores the cores once. The forward is :class:`TTMLinear`'s: the TTM product of
    :func:`tensornet.linear` on the embedding's packed cores (path chosen per shape), or, under
    :func:`tensornet.nn.dense_weights`, ``F.linear`` on the embedding's cached dense table. Rows of a padded
    vocabulary are dropped from the logits.

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
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"TiedTTHead: input must be a torch.Tensor, got {type(x).__name__}")
        vocab, packed = embedding.num_embeddings, embedding.packed_cores
        if (
            x.is_floating_point()
        ):  # the embedding's cached dense table (tensornet.nn.dense_weights), else None
            compute = linear_compute_dtype(x, [packed])
            table = None if compute is None else embedding.dense_table(x.device, compute)
            if table is not None:
                return nn.functional.linear(x.to(compute), table[:vocab])
        if x.ndim >= 1 and x.shape[-1] == embedding.embedding_dim and x.device == packed.device:
            return _binding.linear_torch(x, (packed,), packed=embedding.core_shapes)[..., :vocab]
        return tn.linear(x, embedding.weight)[..., :vocab]  # its checks name what is wrong with x

    def extra_repr(self) -> str:
        embedding = self._embedding[0]
        return f"tied to the TT embedding ({embedding.num_embeddings} x {embedding.embedding_dim})"
