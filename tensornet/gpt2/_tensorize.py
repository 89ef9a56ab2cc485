"""Turn a Hugging Face ``GPT2LMHeadModel`` into a TTM model (or a low-rank baseline), and record how.

GPT-2's linear layers are ``transformers.pytorch_utils.Conv1D``, which stores its weight as ``(in, out)`` and
computes ``x @ W + b``; tensornet layers store ``(out, in)`` like ``torch.nn.Linear``. Every conversion below
transposes on purpose and checks the shapes on both sides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

import tensornet
import tensornet as tn

from ._lowrank import LowRankLinear

# Module names inside each ``GPT2Block``, per layer group.
LAYER_GROUPS: dict[str, tuple[str, ...]] = {
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
    "attn": ("attn.c_attn", "attn.c_proj"),
}

Pairs = tuple[tuple[int, int], ...]  # ((in_1, out_1), ..., (in_d, out_d))

# The paper's core shapes (REFERENCE.md) for c_fc, as (in_k, out_k) pairs, keyed by (width, mlp width).
# GPT-2 small has one shape per rank range; c_proj uses the mirrored pairs (out_k, in_k).
_PAPER_SMALL_5: Pairs = ((4, 4), (4, 4), (4, 4), (4, 4), (3, 12))
_PAPER_SMALL_4: Pairs = ((8, 8), (8, 8), (12, 8), (1, 6))
_PAPER_SMALL_3: Pairs = ((16, 16), (16, 16), (3, 12))
_PAPER_MEDIUM_3: Pairs = ((16, 16), (16, 16), (4, 16))


def paper_pairs(in_features: int, out_features: int, rank: int) -> Pairs | None:
    """The paper's c_fc/c_proj core shapes for this layer and rank, or None when the paper has none.

    GPT-2 small (768 <-> 3072): rank <= 16 -> 5 cores, 16 < rank <= 64 -> 4 cores, rank > 64 -> 3 cores
    (the paper used r = 16, 32/64, 80). GPT-2 medium (1024 <-> 4096): 3 cores at every rank (paper: r = 72).
    """
    for width, hidden, table in (
        (768, 3072, ((16, _PAPER_SMALL_5), (64, _PAPER_SMALL_4), (math.inf, _PAPER_SMALL_3))),
        (1024, 4096, ((math.inf, _PAPER_MEDIUM_3),)),
    ):
        pairs = next(p for bound, p in table if rank <= bound)
        if (in_features, out_features) == (width, hidden):
            return pairs
        if (in_features, out_features) == (hidden, width):
            return tuple((o, i) for i, o in pairs)
    return None


def balanced_pairs(in_features: int, out_features: int, ncores: int) -> Pairs:
    """``tn.shapes.factorize`` of both sides into ``ncores`` factors, paired in ascending order."""
    return tuple(zip(tn.shapes.factorize(in_features, ncores), tn.shapes.factorize(out_features, ncores)))


def _check_pairs(pairs, in_features: int, out_features: int, where: str) -> Pairs:
    try:
        pairs = tuple((int(i), int(o)) for i, o in pairs)
    except (TypeError, ValueError):
        raise TypeError(
            f"tensorize: shapes for {where} must be a sequence of (in_k, out_k) pairs, got {pairs!r}"
        ) from None
    if not pairs or any(i < 1 or o < 1 for i, o in pairs):
        raise ValueError(f"tensorize: shapes for {where} must be non-empty positive pairs, got {pairs!r}")
    prod_in, prod_out = math.prod(i for i, _ in pairs), math.prod(o for _, o in pairs)
    if (prod_in, prod_out) != (in_features, out_features):
        raise ValueError(
            f"tensorize: shapes for {where} multiply to in={prod_in}, out={prod_out}, but the layer is "
            f"{in_features} -> {out_features}; choose factors whose products are the layer's widths"
        )
    return pairs


@dataclass
class LayerReport:
    """One replaced layer: name, shapes, ranks, parameters before/after, relative error when converted."""

    name: str
    in_features: int
    out_features: int
    pairs: Pairs
    ranks: tuple[int, ...]
    params_before: int
    params_after: int
    error: float | None = None


@dataclass
class TensorizeReport:
    """What ``tensorize``/``lowrank`` did to a model; ``str()`` gives a table."""

    method: str
    params_before: int
    params_after: int
    layers: list[LayerReport] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.params_after / self.params_before

    @property
    def max_error(self) -> float | None:
        errors = [layer.error for layer in self.layers if layer.error is not None]
        return max(errors) if errors else None

    def __str__(self) -> str:
        lines = [
            f"{'layer':<28} {'in->out':>11} {'shape (in,out)':<34} {'ranks':<18} {'params':>9} {'rel.err':>8}"
        ]
        for lay in self.layers:
            shape = "".join(f"({i},{o})" for i, o in lay.pairs)
            ranks = ",".join(map(str, lay.ranks))
            err = "" if lay.error is None else f"{lay.error:.4f}"
            lines.append(
                f"{lay.name:<28} {lay.in_features:>5}->{lay.out_features:<5} {shape:<34} {ranks:<18} "
                f"{lay.params_after:>9,} {err:>8}"
            )
        lines.append(
            f"{self.method}: {self.params_before:,} -> {self.params_after:,} parameters ({100 * self.ratio:.1f}%)"
        )
        return "\n".join(lines)


def count_params(model: nn.Module) -> int:
    """Parameters counted once each (GPT-2's tied LM head shares the token embedding)."""
    return sum(p.numel() for p in model.parameters())


def _conv_dims(module: nn.Module, name: str) -> tuple[int, int]:
    """(in_features, out_features) of a GPT-2 Conv1D ((in, out) weight) or an nn.Linear ((out, in) weight)."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        in_features, out_features = module.weight.shape  # Conv1D: (in, out)
        if out_features != module.nf:
            raise ValueError(
                f"tensorize: {name} is a Conv1D with nf={module.nf} but weight {tuple(module.weight.shape)}"
            )
        return in_features, out_features
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    raise TypeError(f"tensorize: {name} is a {type(module).__name__}, expected GPT-2's Conv1D or nn.Linear")


def _as_linear(module: Any, name: str) -> nn.Linear:
    """The layer as an ``nn.Linear`` with weight ``(out, in)`` (GPT-2's Conv1D weight is transposed here)."""
    in_features, out_features = _conv_dims(module, name)
    if isinstance(module, nn.Linear):
        return module
    linear = nn.Linear(
        in_features,
        out_features,
        bias=module.bias is not None,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    with torch.no_grad():
        weight = module.weight.detach().T  # (in, out) -> (out, in)
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(
                f"tensorize: {name} weight transposes to {tuple(weight.shape)}, not {(out_features, in_features)}"
            )
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias.detach())
    return linear


def _targets(model: nn.Module, layers: Sequence[str]) -> list[tuple[str, nn.Module, str]]:
    """(full name, parent module, attribute) of every layer to replace, in block order."""
    unknown = [g for g in layers if g not in LAYER_GROUPS]
    if unknown or not layers:
        raise ValueError(
            f"tensorize: layers must be a non-empty subset of {tuple(LAYER_GROUPS)}, got {tuple(layers)!r}"
        )
    transformer = getattr(model, "transformer", None)
    blocks = getattr(transformer, "h", None)
    if blocks is None:
        raise TypeError(
            f"tensorize: expected a GPT2LMHeadModel/GPT2Model-like model with .transformer.h, got {type(model).__name__}"
        )
    out = []
    for b, block in enumerate(blocks):
        for group in layers:
            for suffix in LAYER_GROUPS[group]:
                parent_name, attr = suffix.split(".")
                out.append((f"transformer.h.{b}.{suffix}", getattr(block, parent_name), attr))
    return out


def resolve_shapes(
    in_features: int, out_features: int, suffix: str, *, rank: int, shapes, ncores: int
) -> Pairs:
    """The (in_k, out_k) core pairs for one layer, from "paper", "balanced" or an explicit mapping."""
    where = f"{suffix} ({in_features} -> {out_features})"
    if isinstance(shapes, Mapping):
        if suffix not in shapes:
            raise ValueError(
                f"tensorize: shapes has no entry for {suffix!r}; keys must be among {sorted(shapes)}"
            )
        return _check_pairs(shapes[suffix], in_features, out_features, where)
    if shapes == "paper":
        pairs = paper_pairs(in_features, out_features, rank)
        if pairs is not None:
            return pairs
        if suffix.startswith("mlp."):
            raise ValueError(
                f"tensorize: the paper gives shapes only for GPT-2 small (768 <-> 3072) and medium (1024 <-> 4096) "
                f"MLPs, not {where}; use shapes='balanced' or give them explicitly"
            )
        return balanced_pairs(in_features, out_features, ncores)  # attention: the paper has no shapes
    if shapes == "balanced":
        return balanced_pairs(in_features, out_features, ncores)
    raise ValueError(f"tensorize: shapes must be 'paper', 'balanced' or a mapping, got {shapes!r}")


def _check_rank_type(rank) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"tensorize: rank must be an int, got {type(rank).__name__} {rank!r}")
    if rank < 1:
        raise ValueError(f"tensorize: rank must be >= 1, got {rank}")
    return rank


def _check_ttm_rank(rank: int, pairs: Pairs, name: str) -> None:
    """A rank above every bond's useful maximum ``min(prod_{j<=k} m_j n_j, prod_{j>k} m_j n_j)`` is an error."""
    useful = tn.shapes.max_ranks([i * o for i, o in pairs]) or (1,)
    if rank > max(useful):
        shape = "".join(f"({i},{o})" for i, o in pairs)
        raise ValueError(
            f"tensorize: rank {rank} is larger than useful for {name} with core shapes {shape}: no bond can use "
            f"more than {max(useful)} (useful maxima {useful}); lower --rank or use more/larger cores"
        )


def _check_lowrank_rank(rank: int, in_features: int, out_features: int, name: str) -> None:
    _check_rank_type(rank)
    if rank > min(in_features, out_features):
        raise ValueError(
            f"lowrank: rank {rank} is larger than useful for {name} ({in_features} -> {out_features}): a "
            f"factorisation with inner size above min(in, out) = {min(in_features, out_features)} fits no better"
        )


def tensorize(
    model: nn.Module,
    *,
    rank: int | None,
    shapes: Literal["paper", "balanced"] | Mapping[str, Sequence[tuple[int, int]]] = "paper",
    layers: Sequence[str] = ("mlp",),
    bias: bool = True,
    init: Literal["gpt2", "glorot", "kaiming"] | float = "gpt2",
    from_weights: bool = False,
    embeddings: bool = False,
    ncores: int = 3,
    eps: float | None = None,
    layer_ranks: Mapping[str, Sequence[int]] | None = None,
    clip_rank: bool | None = None,
    embedding_rank: int | None = None,
) -> tuple[nn.Module, TensorizeReport]:
    """Replace GPT-2's linear layers by ``tensornet.nn.TTMLinear`` in place; return ``(model, report)``.

    ``layers``: ``"mlp"`` (c_fc, c_proj: the paper), ``"attn"`` (c_attn, c_proj). ``shapes``: ``"paper"`` (the
    paper's core shapes for GPT-2 small/medium MLPs, see ``paper_pairs``; attention falls back to balanced),
    ``"balanced"`` (``ncores`` near-equal factors per side) or ``{"mlp.c_fc": ((in_1, out_1), ...), ...}``.
    ``from_weights=True`` converts the existing weights with ``ttm_svd`` at ``rank`` (report: relative error per
    layer); otherwise the TT cores are initialised with ``init``. ``bias=False`` drops the biases (the paper's
    r = 16/32/64 runs). ``embeddings=True`` also makes the token embedding a ``tensornet.nn.TTEmbedding``
    (TT rank ``embedding_rank``, default ``rank``; ``ncores`` balanced cores, the vocabulary padded to a size
    that factors well) and the LM head a ``TiedTTHead`` computing logits from the same cores, so the head
    stays tied as in GPT-2. The settings are recorded in ``model.config.tensornet`` so ``load_model`` can rebuild it.

    Bond ranks above their useful maximum are clipped by ``TTMLinear`` (with a ``RankClipWarning``) unless
    ``clip_rank=False``; the default keeps them for ``shapes="paper"``, whose published parameter counts use the
    uniform rank even where the last core (e.g. (1, 6)) cannot use it.

    Raises ValueError for a rank below 1 or (from scratch) above every bond's useful maximum, shapes that do not multiply to the layer's
    widths, unknown layer groups.
    """
    from tensornet.nn import TTMLinear

    if eps is not None and not from_weights:
        raise ValueError("tensorize: eps selects ranks from existing weights; it needs from_weights=True")
    if rank is None and eps is None and layer_ranks is None:
        raise ValueError("tensorize: give rank (or eps with from_weights=True)")
    if rank is not None:
        _check_rank_type(rank)
    if clip_rank is None:
        clip_rank = shapes != "paper"
    before = count_params(model)
    report = TensorizeReport("ttm", before, before)
    resolved: dict[str, Pairs] = {}
    for name, parent, attr in _targets(model, layers):
        old = getattr(parent, attr)
        in_features, out_features = _conv_dims(old, name)
        suffix = ".".join(name.split(".")[-2:])
        shape_rank = rank if rank is not None else 64  # "paper" ties the shape choice to a rank
        pairs = resolve_shapes(
            in_features, out_features, suffix, rank=shape_rank, shapes=shapes, ncores=ncores
        )
        resolved[suffix] = pairs
        if (
            rank is not None and not from_weights
        ):  # converting, rank is a cap: ttm_svd stops at the useful size
            _check_ttm_rank(rank, pairs, name)
        in_shape, out_shape = tuple(i for i, _ in pairs), tuple(o for _, o in pairs)
        layer_rank: Any = tuple(layer_ranks[name][1:-1]) if layer_ranks is not None else rank
        error = None
        if from_weights:
            new = TTMLinear.from_linear(
                _as_linear(old, name), rank=layer_rank, eps=eps, in_shape=in_shape, out_shape=out_shape
            )
            error = new.conversion_error
            if not bias and new.bias is not None:
                new.register_parameter("bias", None)
        else:
            new = TTMLinear(
                in_features,
                out_features,
                rank=layer_rank,
                in_shape=in_shape,
                out_shape=out_shape,
                bias=bias,
                clip_rank=clip_rank,
                device=old.weight.device,
                dtype=old.weight.dtype,
                init=init,
            )
        w = new.weight
        if w.shape != (out_features, in_features):
            raise RuntimeError(
                f"tensorize: {name} became a TTM of shape {w.shape}, not {(out_features, in_features)}"
            )
        setattr(parent, attr, new)
        report.layers.append(
            LayerReport(
                name,
                in_features,
                out_features,
                pairs,
                tuple(w.ranks),
                sum(p.numel() for p in old.parameters()),
                sum(p.numel() for p in new.parameters()),
                error,
            )
        )
    if embeddings:
        emb_rank = embedding_rank if embedding_rank is not None else rank
        pairs = _tensorize_embedding(
            model,
            rank=emb_rank,
            eps=eps,
            from_weights=from_weights,
            init=init,
            ncores=ncores,
            shapes=shapes.get("wte") if isinstance(shapes, Mapping) else None,
            ranks=None if layer_ranks is None else layer_ranks.get("transformer.wte"),
            report=report,
        )
        resolved["wte"] = pairs
    report.params_after = count_params(model)
    settings: dict[str, Any] = {
        "method": "ttm",
        "rank": rank,
        "shapes": {k: [list(p) for p in v] for k, v in resolved.items()},
        "layers": list(layers),
        "bias": bias,
        "init": init,
        "clip_rank": clip_rank,
    }
    settings["embeddings"] = bool(embeddings)
    if embeddings or rank is None or eps is not None or len({lay.ranks for lay in report.layers}) > 1:
        settings["layer_ranks"] = {lay.name: list(lay.ranks) for lay in report.layers}
    _record(model, settings)
    tensornet.nn.materialize(model)  # all c_fc (all c_proj) rebuild their weights together in training
    return model, report


def lowrank(
    model: nn.Module,
    *,
    rank: int,
    layers: Sequence[str] = ("mlp",),
    bias: bool = True,
    from_weights: bool = False,
) -> tuple[nn.Module, TensorizeReport]:
    """The paper's low-rank baseline: each selected layer becomes ``W = B @ A`` with inner size ``rank``
    (truncated SVD of the existing weights when ``from_weights``, else initialised so W entries have std 0.02)."""
    before = count_params(model)
    report = TensorizeReport("lowrank", before, before)
    for name, parent, attr in _targets(model, layers):
        old = getattr(parent, attr)
        in_features, out_features = _conv_dims(old, name)
        _check_lowrank_rank(rank, in_features, out_features, name)
        if from_weights:
            new = LowRankLinear.from_linear(_as_linear(old, name), rank=rank, bias=bias)
        else:
            new = LowRankLinear(
                in_features,
                out_features,
                rank=rank,
                bias=bias,
                device=old.weight.device,
                dtype=old.weight.dtype,
            )
        setattr(parent, attr, new)
        report.layers.append(
            LayerReport(
                name,
                in_features,
                out_features,
                ((in_features, out_features),),
                (1, rank, 1),
                sum(p.numel() for p in old.parameters()),
                sum(p.numel() for p in new.parameters()),
                new.conversion_error,
            )
        )
    report.params_after = count_params(model)
    _record(model, {"method": "lowrank", "rank": rank, "layers": list(layers), "bias": bias})
    return model, report


def lowrank_rank_for(params: int, in_features: int, out_features: int, *, bias: bool) -> int:
    """The inner size whose low-rank layer has about ``params`` parameters (at least 1)."""
    return max(1, round((params - (out_features if bias else 0)) / (in_features + out_features)))


def _record(model: nn.Module, settings: dict) -> None:
    config = getattr(model, "config", None)
    if config is not None:
        config.tensornet = settings


class TiedTTHead(nn.Module):
    """GPT-2's LM head tied to a ``TTEmbedding``: ``logits = x @ E.T`` with ``E`` the embedding's TT table
    ``(padded vocabulary, width)``, padded rows dropped. It holds no parameters of its own (the cores are the
    embedding's), so ``state_dict`` stores them once. Cost per token: that of ``tn.linear`` on ``E``."""

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        self._embedding: tuple[Any] = (embedding,)  # a tuple: not registered twice as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from tensornet._linear.autograd import linear_torch
        from tensornet.nn._common import linear_compute_dtype

        embedding = self._embedding[0]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"TiedTTHead: input must be a torch.Tensor, got {type(x).__name__}")
        if x.is_floating_point():
            # the embedding's cached dense table, under tensornet.nn.dense_weights (None otherwise)
            compute = linear_compute_dtype(x, [embedding.packed_cores])
            table = None if compute is None else embedding.dense_table(x.device, compute)
            if table is not None:
                return nn.functional.linear(x.to(compute), table[: embedding.num_embeddings])
        # the TTM layer product of TTMLinear: (..., width) -> (..., padded vocabulary)
        logits = linear_torch(x, (embedding.packed_cores,), packed=embedding.core_shapes)
        return logits[..., : embedding.num_embeddings]

    def extra_repr(self) -> str:
        return f"tied to the TT embedding ({self._embedding[0].num_embeddings} x {self._embedding[0].embedding_dim})"


def _tensorize_embedding(model, *, rank, eps, from_weights, init, ncores, shapes, ranks, report) -> tuple:
    """Replace ``transformer.wte`` by a TTEmbedding and ``lm_head`` by a TiedTTHead; return its core pairs."""
    from tensornet.nn import TTEmbedding

    old = model.transformer.wte
    if not isinstance(old, nn.Embedding):
        raise TypeError(f"tensorize: transformer.wte is a {type(old).__name__}, expected nn.Embedding")
    vocab, width = old.num_embeddings, old.embedding_dim
    voc_shape = tuple(v for v, _ in shapes) if shapes else None
    emb_shape = tuple(e for _, e in shapes) if shapes else None
    if ranks is not None:
        new = TTEmbedding(
            vocab,
            width,
            rank=tuple(ranks[1:-1]),
            voc_shape=voc_shape,
            emb_shape=emb_shape,
            device=old.weight.device,
            dtype=old.weight.dtype,
            init=init,
            clip_rank=False,
        )
    elif from_weights:
        new = TTEmbedding.from_embedding(
            old, rank=rank, eps=eps, voc_shape=voc_shape, emb_shape=emb_shape, ncores=ncores
        )
    else:
        _check_rank_type(rank)
        new = TTEmbedding(
            vocab,
            width,
            rank=rank,
            voc_shape=voc_shape,
            emb_shape=emb_shape,
            ncores=ncores,
            device=old.weight.device,
            dtype=old.weight.dtype,
            init=init,
        )
    before = old.weight.numel()
    model.transformer.wte = new
    model.lm_head = TiedTTHead(new)
    pairs = tuple(zip(new.voc_shape, new.emb_shape))
    report.layers.append(
        LayerReport(
            "transformer.wte",
            width,
            vocab,
            pairs,
            tuple(new.ranks),
            before,
            sum(p.numel() for p in new.parameters()),
            new.conversion_error,
        )
    )
    return pairs


def rebuild(model: nn.Module, settings: Mapping) -> nn.Module:
    """Apply recorded ``config.tensornet`` settings to a freshly built dense model (no weights converted)."""
    method = settings.get("method")
    if method == "ttm":
        rank = settings.get("rank")
        tensorize(
            model,
            rank=None if rank is None else int(rank),
            shapes={k: [tuple(p) for p in v] for k, v in settings["shapes"].items()},
            layers=tuple(settings["layers"]),
            bias=bool(settings["bias"]),
            init=settings.get("init", "gpt2"),
            layer_ranks=settings.get("layer_ranks"),
            clip_rank=bool(settings.get("clip_rank", True)),
            embeddings=bool(settings.get("embeddings", False)),
        )
    elif method == "lowrank":
        lowrank(
            model, rank=int(settings["rank"]), layers=tuple(settings["layers"]), bias=bool(settings["bias"])
        )
    else:
        raise ValueError(f"config.tensornet has an unknown method {method!r}; expected 'ttm' or 'lowrank'")
    return model
