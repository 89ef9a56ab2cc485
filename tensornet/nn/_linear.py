"""``TTMLinear``: a drop-in ``torch.nn.Linear`` whose weight is a TT-matrix."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

import tensornet as tn
from tensornet import _checks

from ._cores import TTCoresModule, check_dtype, compress
from ._factor import resolve_shapes
from ._hf import dense_weight
from ._init import Init

__all__ = ["TTMLinear", "dense_weights", "tt_parameters"]

_NAMES = ("out_features", "in_features", "out_shape", "in_shape")


class TTMLinear(TTCoresModule):
    """``y = x @ W.T + b`` with ``W`` of shape ``(out_features, in_features)`` stored as a TT-matrix.

    Layout (as everywhere in tensornet): core k has shape ``(r_{k-1}, m_k, n_k, r_k)`` with
    ``r_0 = r_d = 1`` (``layer.cores``: views of the one parameter ``layer.packed_cores``); ``W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]``
    where the row multi-index runs over ``out_shape = (m_1..m_d)`` and the column multi-index over
    ``in_shape = (n_1..n_d)`` (C order). ``W`` is stored like ``nn.Linear.weight``: ``(out, in)``.

    Parameters
    ----------
    in_features, out_features : int
    rank : int or tuple
        One rank for every bond, ``d - 1`` bond ranks, or ``d + 1`` ranks with the boundary 1s. Ranks above
        their useful maximum ``min(prod_{j<=k} m_j n_j, prod_{j>k} m_j n_j)`` are clipped with a
        :class:`RankClipWarning` unless ``clip_rank=False`` (the paper's GPT-2 r=64 layers keep rank 64
        next to a (1, 6) core, which only adds parameters).
    in_shape, out_shape : tuple of int, optional
        Factorisations of the features, one factor per core, 1s allowed (e.g. the paper's c_fc: in
        ``(8, 8, 12, 1)``, out ``(8, 8, 8, 6)``). A missing one is factorised by
        :func:`tensornet.shapes.factorize` into as many cores as the given one, or ``ncores`` (default 3).
    bias : bool
    device, dtype : as for ``nn.Linear``.
    init : "gpt2" (default), "glorot", "kaiming" or a float std
        Target entry std of the rebuilt W: 0.02 (GPT-2, the paper's recipe: core k ~ N(0, 1/r_{k-1}),
        last core scaled, left-to-right QR sweep), ``sqrt(2 / (in + out))``, ``sqrt(2 / in)``, or the float
        (t3f's rule: every core scaled by ``std^(1/d) * prod(r)^(-1/(2d))``). A single draw is rescaled so
        the rebuilt W has entry RMS exactly that std. The bias starts at zero.
    save_weight : bool
        Speed for memory in training (default False; a checked attribute, settable later). By default
        the backward saves only the input and the cores and rebuilds W; with True, when the forward
        rebuilds W and the backward works from the dense W (the plans for many tokens), the forward
        keeps W (if the input needs a gradient) and the two halves of its product (if the cores do),
        so the backward skips one rebuild, for ``M * N`` more saved entries per call (plus the halves),
        as tensorly-torch's reconstructed layers keep (timings: ``benchmarks/results/layers.md``). Under
        ``torch.compile`` the default saves at most the input and the cores too; with True the compiler
        may keep W and chooses what else to keep.

    The forward is :func:`tensornet.linear` (the contraction path is chosen per shape); inputs may have any
    leading dimensions. Under ``torch.autocast`` the input, cores and bias are cast to the autocast dtype,
    as ``nn.Linear`` does. Cost per token: that of the chosen path, at most ``O(M N)`` plus rebuilding W.

    Raises
    ------
    TypeError, ValueError
        Naming the argument: non-int features, shapes whose product differs from the features, shapes of
        different lengths, rank < 1 or with the wrong number of entries, an unknown init or a std beyond
        the dtype's range, a dtype other than float16, bfloat16, float32 and float64 (complex layers are
        not supported yet; a layer cast to complex later is refused at its forward).
    """

    conversion_error: float | None
    """Relative Frobenius error ``||W - W_tt|| / ||W||`` of :meth:`from_linear` (None when built from scratch)."""
    _SHAPE_NAMES = ("out_shape", "in_shape")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int | tuple[int, ...],
        in_shape: tuple[int, ...] | None = None,
        out_shape: tuple[int, ...] | None = None,
        ncores: int = 3,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
        init: Init = "gpt2",
        clip_rank: bool = True,
        save_weight: bool = False,
    ) -> None:
        super().__init__()
        fn = type(self).__name__
        self.save_weight = save_weight
        self.in_features = _checks.check_count(fn, "in_features", in_features)
        self.out_features = _checks.check_count(fn, "out_features", out_features)
        ncores = _checks.check_count(fn, "ncores", ncores)
        out_shape, in_shape = resolve_shapes(
            fn, self.out_features, self.in_features, out_shape, in_shape, ncores, _NAMES
        )
        self.in_shape: tuple[int, ...] = in_shape
        self.out_shape: tuple[int, ...] = out_shape
        self._make_cores(
            fn, out_shape, in_shape, rank, clip_rank=clip_rank, init=init, device=device, dtype=dtype
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the cores for ``self.init`` and zero the bias (from torch's global generator)."""
        self._draw_cores(self.in_features, self.out_features)
        if self.bias is not None and not self.bias.is_meta:
            with torch.no_grad():
                self.bias.zero_()

    # --- structure ------------------------------------------------------------------------------
    @property
    def weight(self) -> tn.TTM:
        """The weight as a :class:`tensornet.TTM` of shape ``(out_features, in_features)`` (differentiable)."""
        return tn.TTM(list(self.cores))

    @property
    def compression(self) -> float:
        """Dense weight size divided by ``nparams``."""
        return self.in_features * self.out_features / self.nparams

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, in_shape={self.in_shape}, "
            f"out_shape={self.out_shape}, ranks={self.ranks}, params={self.nparams:,} "
            f"(dense {self.in_features * self.out_features:,}, compression {self.compression:.1f}x), "
            f"bias={self.bias is not None}" + (", save_weight=True" if self.save_weight else "")
        )

    @property
    def save_weight(self) -> bool:
        """Keep the rebuilt W (and its halves) for backward instead of rebuilding (see the class notes)."""
        # getattr: layers pickled before the option existed have no attribute
        return bool(getattr(self, "_save_weight", False))

    @save_weight.setter
    def save_weight(self, value: bool) -> None:
        self._save_weight = _checks.check_flag(type(self).__name__, "save_weight", value)

    # --- forward ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + bias`` for ``x`` ``(..., in_features)``, on the planner's path: ``(..., out_features)``."""
        return self._product(x, self.bias, save_weight=self.save_weight)

    # --- conversion -------------------------------------------------------------------------------
    @classmethod
    def from_ttm(
        cls, weight: tn.TTM, bias: torch.Tensor | None = None, *, save_weight: bool = False
    ) -> TTMLinear:
        """A layer whose weight is (a copy of) the TTM ``weight`` and bias ``bias``.

        Parameters
        ----------
        weight : TTM
            Torch or numpy cores ``(out, in)``; the layer takes their dtype and device (numpy cores
            become CPU tensors). Ranks are kept as they are (not clipped).
        bias : torch.Tensor of shape ``(out_features,)``, optional
        save_weight : bool
            As in the constructor.

        Returns
        -------
        TTMLinear

        Raises
        ------
        TypeError
            ``weight`` not a TTM, or of a dtype the layers do not hold.
        ValueError
            A bias of another shape.
        """
        fn = f"{cls.__name__}.from_ttm"
        if not isinstance(weight, tn.TTM):
            raise TypeError(f"{fn}: weight must be a tensornet.TTM, got {type(weight).__name__}")
        if weight.backend != "torch":
            weight = weight.to("torch")
        check_dtype(fn, weight.dtype, "the TTM's dtype")
        out_features, in_features = weight.shape
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (out_features,)):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"{fn}: bias must be a tensor of shape ({out_features},), got {shape}")
        layer = cls(
            in_features,
            out_features,
            rank=weight.ranks,
            in_shape=weight.col_shape,
            out_shape=weight.row_shape,
            bias=bias is not None,
            device="meta",
            dtype=weight.dtype,
            clip_rank=False,
            save_weight=save_weight,
        )
        layer = layer._copy_cores(weight)
        if bias is not None:
            with torch.no_grad():
                layer.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(
        cls,
        linear: nn.Module,
        *,
        rank: int | tuple[int, ...] | None = None,
        eps: float | None = None,
        in_shape: tuple[int, ...] | None = None,
        out_shape: tuple[int, ...] | None = None,
        ncores: int = 3,
        save_weight: bool = False,
    ) -> TTMLinear:
        """Compress a trained ``nn.Linear`` (or transformers' GPT-2 ``Conv1D``) by TT-SVD.

        Parameters
        ----------
        linear : nn.Linear or Conv1D
            ``Conv1D`` stores its weight ``(in, out)``; it is transposed here on purpose.
        rank : int or tuple of int, optional
            A rank spec capping the ranks (an int, d - 1 bond ranks or d + 1 ranks with the boundary 1s).
        eps : float, optional
            Relative Frobenius accuracy. At least one of ``rank`` and ``eps``; if both are given and the
            cap wins, :func:`tensornet.ttm_svd` warns with the error bound.
        in_shape, out_shape, ncores
            As in the constructor.
        save_weight : bool
            As in the constructor.

        Returns
        -------
        TTMLinear
            With the source's dtype, device and bias; :attr:`conversion_error` holds the measured
            relative error.

        Raises
        ------
        TypeError
            Not a linear layer; bad argument types; a weight of a dtype the layers do not hold (complex).
        ValueError
            Neither ``rank`` nor ``eps``; shapes that do not factor the features; bad ranks.

        Notes
        -----
        :func:`tensornet.ttm_svd` runs in float64 on the CPU.

        Cost: ``O(M N r)`` for the SVDs plus ``O(M N)`` memory for the float64 copy.
        """
        fn = f"{cls.__name__}.from_linear"
        _checks.check_flag(fn, "save_weight", save_weight)
        weight, bias = dense_weight(fn, linear)
        check_dtype(fn, weight.dtype, "the layer's dtype")
        out_features, in_features = (int(n) for n in weight.shape)
        if rank is None and eps is None:
            raise ValueError(f"{fn}: give rank, eps or both (with neither the TTM would be exact and larger)")
        ncores = _checks.check_count(fn, "ncores", ncores)
        out_shape, in_shape = resolve_shapes(
            fn, out_features, in_features, out_shape, in_shape, ncores, _NAMES
        )
        bonds = None if rank is None else _checks.parse_ranks(fn, "rank", rank, len(in_shape), owner="layer")
        dense = weight.detach().to(device="cpu", dtype=torch.float64)
        ttm, error = compress(dense, out_shape, in_shape, rank=bonds, eps=eps)
        layer = cls.from_ttm(
            ttm.to(device=weight.device, dtype=weight.dtype),
            None if bias is None else bias.detach(),
            save_weight=save_weight,
        )
        layer.conversion_error = error
        return layer

    def to_linear(self) -> nn.Linear:
        """The dense ``nn.Linear`` with the rebuilt weight (same dtype, device and bias)."""
        with torch.no_grad():
            weight = tn.full(self.weight)
            first = self.packed_cores
            linear = nn.Linear(
                self.in_features,
                self.out_features,
                bias=self.bias is not None,
                device=first.device,
                dtype=first.dtype,
            )
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


@contextlib.contextmanager
def dense_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every TT layer in ``model`` reuses its rebuilt dense weight (table).

    For inference and decoding, for every :class:`TTMLinear` and :class:`TTEmbedding`: a forward pass that needs no gradient of the cores rebuilds each ``W``
    once and then costs what ``nn.Linear`` (``nn.Embedding``) costs (see
    :meth:`TTMLinear.cache_dense_weight`). The memory of the dense matrices is held until the block
    exits; layers that had caching on before keep it.

    >>> import torch
    >>> from tensornet.nn import Rule, dense_weights, tensorize
    >>> rule = Rule("0", rank=4, in_shape=(4, 4, 4), out_shape=(4, 4, 6))
    >>> model, _ = tensorize(torch.nn.Sequential(torch.nn.Linear(64, 96)), [rule])
    >>> x = torch.randn(2, 64)
    >>> with torch.no_grad(), dense_weights(model):  # e.g. around model.generate(...) when decoding
    ...     y = model(x)
    >>> torch.allclose(y, model(x), atol=1e-5)
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dense_weights: expected an nn.Module, got {type(model).__name__}")
    switched = [
        m
        for m in model.modules()
        if isinstance(m, TTCoresModule) and getattr(m, "_dense_cache", None) is None
    ]
    for layer in switched:
        layer.cache_dense_weight(True)
    try:
        yield model
    finally:
        for layer in switched:
            layer.cache_dense_weight(False)


def tt_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The TT cores of every :class:`TTMLinear` and :class:`TTEmbedding` in ``model``, e.g. for an optimizer group.

    Each layer's ``packed_cores`` (a parameter) is returned once. With Adam every entry moves by about
    ``lr`` per step, and a change of one core moves the product ``W`` by that change times the other
    cores, so at a dense model's ``lr`` a TT weight may learn more slowly; the cores' learning rate
    factor is a hyperparameter (``tensornet.gpt2``'s ``--tt-lr-scale``; runs in
    ``benchmarks/results/gpt2_compare_cpu.md``):

    >>> import torch, tensornet
    >>> model = torch.nn.Sequential(tensornet.nn.TTMLinear(16, 32, rank=2), torch.nn.Linear(32, 4))
    >>> lr = 1e-3
    >>> cores = tensornet.nn.tt_parameters(model)
    >>> ids = {id(p) for p in cores}
    >>> rest = [p for p in model.parameters() if id(p) not in ids]
    >>> opt = torch.optim.AdamW([{"params": rest}, {"params": cores, "lr": 5 * lr}], lr=lr)
    >>> len(cores), len(rest)
    (1, 3)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"tt_parameters: expected an nn.Module, got {type(model).__name__}")
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if isinstance(module, TTCoresModule):
            found[id(module.packed_cores)] = module.packed_cores
    return list(found.values())
