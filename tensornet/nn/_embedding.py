"""``TTEmbedding``: an embedding table stored as a TT-matrix, looked up row by row from the cores.

The table is never rebuilt (Hrinchuk et al. 2020, "Tensorized Embedding Layers").
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

import torch
from torch import nn

import tensornet as tn
from tensornet import _checks

from ._cores import LAYER_DTYPES, TTCoresModule, check_dtype, compress
from ._factor import resolve_shapes
from ._init import Init

__all__ = ["TTEmbedding"]

_NAMES = ("num_embeddings", "embedding_dim", "voc_shape", "emb_shape")


def _check_padding_idx(fn: str, padding_idx: Any, num_embeddings: int) -> int | None:
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
        raise TypeError(f"{fn}: padding_idx must be an int or None, got {type(padding_idx).__name__}")
    padding_idx = int(padding_idx)
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(
            f"{fn}: padding_idx must lie in [-{num_embeddings}, {num_embeddings}), got {padding_idx}"
        )
    return padding_idx % num_embeddings


class TTEmbedding(TTCoresModule):
    """``nn.Embedding(num_embeddings, embedding_dim)`` whose table is a TT-matrix.

    Layout: core k is an ``nn.Parameter`` of shape ``(r_{k-1}, m_k, n_k, r_k)``; the table is the TTM with
    ``row_shape = voc_shape = (m_1..m_d)`` and ``col_shape = emb_shape = (n_1..n_d)``, so token ``i`` is
    row ``i`` of ``W`` with the C-order multi-index ``(i_1..i_d)`` over ``voc_shape``. A vocabulary that
    does not factor well (GPT-2's 50,257 is 29 x 1,733) is padded: ``prod(voc_shape) >= num_embeddings``
    and rows past ``num_embeddings`` are never looked up (by default the smallest size whose factors are
    balanced, e.g. 50,310 = 30 x 39 x 43).

    Lookup: ``index -> (i_1..i_d) -> G_k[:, i_k, :, :]`` gathered per token, contracted left to right.
    Cost per token ``O(sum_k (n_1..n_k) r_{k-1} r_k)`` flops and ``O(max_k r_{k-1} n_k r_k)`` memory for the
    gathered slices; the ``(num_embeddings, embedding_dim)`` table is never built. For large batches the
    leading cores are first contracted over all their index prefixes (a small, batch-independent table,
    see :meth:`prefix_cores`), which saves the per-token copies of the big middle cores (the memory saved
    for backward is measured in ``benchmarks/results/layers.md``). ``self.lookup =
    "gather"`` turns that off.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    rank : int or tuple, clipped to the useful maximum with a :class:`RankClipWarning` (see ``TTMLinear``).
    voc_shape, emb_shape : tuple of int, optional (missing ones are chosen for ``ncores`` cores).
    device, dtype, init, clip_rank : as for :class:`TTMLinear` (``init="gpt2"``: entries std 0.02, GPT-2's
        ``wte`` initialisation; a float gives that std, e.g. 1.0 as ``nn.Embedding``).
    padding_idx : int, optional
        As ``nn.Embedding``: that index looks up zeros and contributes no gradient. A TT table has no row
        to keep at zero, so the lookup's output is masked at those positions (negative values count from
        the end).

    Raises
    ------
    TypeError, ValueError as ``TTMLinear``; lookups raise ``TypeError`` for non-integer indices and
    ``IndexError`` for indices outside ``[0, num_embeddings)``.
    """

    conversion_error: float | None
    _SHAPE_NAMES = ("voc_shape", "emb_shape")

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        rank: int | tuple[int, ...],
        voc_shape: tuple[int, ...] | None = None,
        emb_shape: tuple[int, ...] | None = None,
        ncores: int = 3,
        device: Any = None,
        dtype: Any = None,
        init: Init = "gpt2",
        clip_rank: bool = True,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        self.num_embeddings = _checks.check_count(fn, "num_embeddings", num_embeddings)
        self.embedding_dim = _checks.check_count(fn, "embedding_dim", embedding_dim)
        self.padding_idx: int | None = _check_padding_idx(fn, padding_idx, self.num_embeddings)
        ncores = _checks.check_count(fn, "ncores", ncores)
        voc_shape, emb_shape = resolve_shapes(
            fn, self.num_embeddings, self.embedding_dim, voc_shape, emb_shape, ncores, _NAMES, pad_rows=True
        )
        self.voc_shape: tuple[int, ...] = voc_shape
        self.emb_shape: tuple[int, ...] = emb_shape
        self._make_cores(
            fn, voc_shape, emb_shape, rank, clip_rank=clip_rank, init=init, device=device, dtype=dtype
        )
        self.lookup: Literal["auto", "gather"] = "auto"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the cores for ``self.init`` (fan_in = embedding_dim, fan_out = padded vocabulary)."""
        self._draw_cores(self.embedding_dim, math.prod(self.voc_shape))

    @property
    def weight(self) -> tn.TTM:
        """The (padded) table as a :class:`tensornet.TTM` of shape ``(prod(voc_shape), embedding_dim)``."""
        return tn.TTM(list(self.cores))

    @property
    def compression(self) -> float:
        """Dense table size (unpadded) divided by ``nparams``."""
        return self.num_embeddings * self.embedding_dim / self.nparams

    def extra_repr(self) -> str:
        padded = math.prod(self.voc_shape)
        pad = f" (padded to {padded:,})" if padded != self.num_embeddings else ""
        return (
            f"{self.num_embeddings}{pad}, {self.embedding_dim}, voc_shape={self.voc_shape}, "
            f"emb_shape={self.emb_shape}, ranks={self.ranks}, params={self.nparams:,} "
            f"(dense {self.num_embeddings * self.embedding_dim:,}, compression {self.compression:.1f}x)"
            + (f", padding_idx={self.padding_idx}" if getattr(self, "padding_idx", None) is not None else "")
        )

    def prefix_cores(self, tokens: int) -> int:
        """How many leading cores the lookup of ``tokens`` indices contracts into a prefix table first.

        1 means gathering core slices per token from the start.

        A table over the prefixes ``(i_1..i_k)`` costs ``M_k = m_1...m_k`` rows whatever the batch, while
        gathering per token costs ``tokens`` rows and keeps a copy of each gathered core slice for
        backward (``r_{k-1} n_k r_k`` numbers per token). Cores are merged while ``M_k <= tokens``, the
        table stays under 2^24 entries and at least the last core is left to the per-token step (so the
        full table is never built). ``lookup="gather"`` always returns 1.
        """
        if self.lookup == "gather":
            return 1
        merged, rows, width = 1, self.voc_shape[0], self.emb_shape[0]
        while merged < len(self.voc_shape) - 1:
            rows_next = rows * self.voc_shape[merged]
            width_next = width * self.emb_shape[merged]
            if rows_next > tokens or rows_next * width_next * int(self.cores[merged].shape[-1]) > 2**24:
                break
            merged, rows, width = merged + 1, rows_next, width_next
        return merged

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """The rows of the table at the integer indices ``input`` (any shape): ``(*input.shape, dim)``."""
        self._check_indices(input)
        if self.packed_cores.dtype not in LAYER_DTYPES:  # made so after construction, e.g. by .to()
            check_dtype(type(self).__name__, self.packed_cores.dtype, "the cores' dtype")
        table = self.dense_table(input.device, self.cores[0].dtype)
        if table is not None:
            return self._mask_padding(input, nn.functional.embedding(input, table))
        flat = input.reshape(-1).long()
        digits = []
        rest = flat
        for m in reversed(self.voc_shape):  # C order: the last mode varies fastest
            digits.append(rest % m)
            rest = rest // m
        digits.reverse()
        rows = self._lookup(digits, int(flat.shape[0]))
        return self._mask_padding(input, rows.reshape(*input.shape, self.embedding_dim))

    def _check_indices(self, input: Any) -> None:
        """Raise unless ``input`` holds int64/int32 indices in ``[0, num_embeddings)``.

        An out-of-range index would otherwise map silently to a padding row (or wrap around). On the CPU
        the check is on the host; elsewhere (and compiled) it is a device-side assert, as ``nn.Embedding``
        does, without a host sync.
        """
        fn = type(self).__name__
        if not isinstance(input, torch.Tensor) or input.dtype not in (torch.int64, torch.int32):
            what = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
            raise TypeError(f"{fn}: indices must be an int64 or int32 tensor, got {what}")
        if input.device.type == "cpu" and not torch.compiler.is_compiling():
            if input.numel() > 0:
                low, high = int(input.min()), int(input.max())
                if low < 0 or high >= self.num_embeddings:
                    raise IndexError(
                        f"{fn}: indices must lie in [0, {self.num_embeddings}), got values from {low} to {high}"
                    )
        else:
            inside = ((input >= 0) & (input < self.num_embeddings)).all()
            torch._assert_async(inside, f"{fn}: an index is outside [0, {self.num_embeddings})")

    def _lookup(self, digits: list[torch.Tensor], tokens: int) -> torch.Tensor:
        """The rows ``(tokens, dim)`` of the multi-indices ``digits`` (one index tensor per mode), from the cores.

        The first :meth:`prefix_cores` cores are contracted into a table of every prefix ``(i_1..i_k)``
        (``(M_k, n_1..n_k, r_k)``, batch-independent); the remaining cores contribute one gathered slice
        per token.
        """
        cores = list(self.cores)
        merged = self.prefix_cores(tokens)
        table = cores[0][0]  # (m_1, n_1, r_1)
        prefix = digits[0]
        cols = self.emb_shape[0]
        for k in range(1, merged):
            rows, m, n = int(table.shape[0]), self.voc_shape[k], self.emb_shape[k]
            table = torch.einsum("PNr,rmns->PmNns", table, cores[k])
            cols *= n
            table = table.reshape(rows * m, cols, int(cores[k].shape[-1]))
            prefix = prefix * m + digits[k]
        result = table.index_select(0, prefix)  # (B, n_1..n_k, r_k)
        for k in range(merged, len(cores)):
            core, n = cores[k], self.emb_shape[k]
            piece = core.permute(1, 0, 2, 3).index_select(0, digits[k])  # (B, r_{k-1}, n_k, r_k)
            result = torch.einsum("bar,brns->bans", result, piece)  # (B, n_1..n_{k-1}, n_k, r_k)
            cols *= n
            result = result.reshape(tokens, cols, int(core.shape[-1]))
        return result

    def _mask_padding(self, input: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Zeros (and no gradient) where ``input == padding_idx``."""
        padding_idx = getattr(self, "padding_idx", None)  # absent on modules pickled by older versions
        if padding_idx is None:
            return out
        return out.masked_fill((input == padding_idx).unsqueeze(-1), 0.0)

    def dense_table(self, device: Any, dtype: Any) -> torch.Tensor | None:
        """The cached padded table in ``dtype``, or None.

        Given when :meth:`cache_dense_weight` is on and may be used here; for layers tied to this one, such as
        an LM head.
        """
        return self._cached_dense(device, dtype)

    @classmethod
    def from_ttm(
        cls, weight: tn.TTM, num_embeddings: int | None = None, *, padding_idx: int | None = None
    ) -> TTEmbedding:
        """An embedding whose (padded) table is a copy of ``weight``.

        Parameters
        ----------
        weight : TTM
            The table ``(prod(voc_shape), embedding_dim)``; its dtype and device are kept.
        num_embeddings : int, optional
            The rows in use (default: all); rows past it are never looked up.
        padding_idx : int, optional
            As ``nn.Embedding``.

        Returns
        -------
        TTEmbedding

        Raises
        ------
        TypeError
            ``weight`` not a TTM.
        ValueError
            ``num_embeddings`` larger than the TTM's rows.
        """
        fn = f"{cls.__name__}.from_ttm"
        if not isinstance(weight, tn.TTM):
            raise TypeError(f"{fn}: weight must be a tensornet.TTM, got {type(weight).__name__}")
        if weight.backend != "torch":
            weight = weight.to("torch")
        check_dtype(fn, weight.dtype, "the TTM's dtype")
        rows, cols = weight.shape
        num_embeddings = (
            rows if num_embeddings is None else _checks.check_count(fn, "num_embeddings", num_embeddings)
        )
        if num_embeddings > rows:
            raise ValueError(f"{fn}: num_embeddings = {num_embeddings} exceeds the TTM's {rows} rows")
        layer = cls(
            num_embeddings,
            cols,
            rank=weight.ranks,
            voc_shape=weight.row_shape,
            emb_shape=weight.col_shape,
            device="meta",
            dtype=weight.dtype,
            clip_rank=False,
            padding_idx=padding_idx,
        )
        return layer._copy_cores(weight)

    @classmethod
    def from_embedding(
        cls,
        embedding: nn.Embedding,
        *,
        rank: int | tuple[int, ...] | None = None,
        eps: float | None = None,
        voc_shape: tuple[int, ...] | None = None,
        emb_shape: tuple[int, ...] | None = None,
        ncores: int = 3,
    ) -> TTEmbedding:
        """Compress a trained ``nn.Embedding`` by TT-SVD of its table, zero-padded to ``prod(voc_shape)`` rows.

        Parameters
        ----------
        embedding : nn.Embedding
            ``padding_idx`` is carried over (its row is zeroed before the decomposition: it is never read).
        rank, eps
            As :meth:`TTMLinear.from_linear` (a rank spec cap and/or a relative accuracy; at least one).
        voc_shape, emb_shape, ncores
            As in the constructor.

        Returns
        -------
        TTEmbedding
            :attr:`conversion_error` is the measured relative Frobenius error over the real rows.

        Raises
        ------
        TypeError
            Not an ``nn.Embedding``, or of a dtype the layers do not hold (complex).
        ValueError
            ``max_norm`` or sparse gradients (not supported), neither ``rank`` nor ``eps``, bad shapes or
            ranks.

        Cost: ``O(M N r)`` for the SVDs of the padded ``(M, N)`` table.
        """
        fn = f"{cls.__name__}.from_embedding"
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"{fn}: expected an nn.Embedding, got {type(embedding).__name__}")
        if embedding.max_norm is not None:
            raise ValueError(f"{fn}: the embedding has max_norm={embedding.max_norm}; not supported")
        if embedding.sparse:
            raise ValueError(f"{fn}: sparse embeddings are not supported")
        if rank is None and eps is None:
            raise ValueError(f"{fn}: give rank, eps or both (with neither the TTM would be exact and larger)")
        weight = embedding.weight
        check_dtype(fn, weight.dtype, "the embedding's dtype")
        rows, cols = (int(n) for n in weight.shape)
        ncores = _checks.check_count(fn, "ncores", ncores)
        voc_shape, emb_shape = resolve_shapes(
            fn, rows, cols, voc_shape, emb_shape, ncores, _NAMES, pad_rows=True
        )
        bonds = None if rank is None else _checks.parse_ranks(fn, "rank", rank, len(voc_shape), owner="layer")
        dense = weight.detach().to(device="cpu", dtype=torch.float64)
        if embedding.padding_idx is not None:  # never read: zero, so it costs no rank
            dense = dense.clone()
            dense[embedding.padding_idx] = 0.0
        ttm, error = compress(dense, voc_shape, emb_shape, rank=bonds, eps=eps, rows=rows)
        layer = cls.from_ttm(
            ttm.to(device=weight.device, dtype=weight.dtype), rows, padding_idx=embedding.padding_idx
        )
        layer.conversion_error = error
        return layer

    def to_embedding(self) -> nn.Embedding:
        """The dense ``nn.Embedding`` with the rebuilt table.

        Real rows only, same dtype and device; the ``padding_idx`` row is zero, as the TT lookup reads it.
        """
        with torch.no_grad():
            table = tn.full(self.weight)[: self.num_embeddings]
            embedding = nn.Embedding(
                self.num_embeddings,
                self.embedding_dim,
                padding_idx=self.padding_idx,
                device=table.device,
                dtype=table.dtype,
            )
            embedding.weight.copy_(table)
            if self.padding_idx is not None:
                embedding.weight[self.padding_idx] = 0.0
        return embedding
