"""GPT-2 with TTM layers (a preset over :func:`tensornet.nn.tensorize`), the low-rank baseline, and their record."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import torch
from torch import nn

from tensornet.nn import LayerReport, Rule, TensorizeReport, TiedTTHead, linear_weight
from tensornet.nn import tensorize as nn_tensorize

from ._shapes import LAYER_GROUPS, Pairs, check_useful, count, layer_shapes


class LowRankLinear(nn.Module):
    """``y = x @ (B @ A).T + b`` with ``A`` ``(rank, in)`` and ``B`` ``(out, rank)``: the paper's low-rank baseline.

    From scratch ``A`` and ``B`` are N(0, s^2), ``s = sqrt(0.02 / sqrt(rank))``: the product has GPT-2's std
    0.02. Cost per token: ``O(rank (in + out))``.
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
        """Truncated SVD of an ``nn.Linear``'s or GPT-2 ``Conv1D``'s weight; ``conversion_error``: relative Frobenius."""
        w, source_bias = linear_weight(linear, where="LowRankLinear.from_linear")
        has_bias = bias and source_bias is not None
        new = cls(w.shape[1], w.shape[0], rank=rank, bias=has_bias, device=w.device, dtype=w.dtype)
        u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
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


def nparams(model: nn.Module) -> int:
    """The model's parameters, each counted once (GPT-2's LM head shares the token embedding's)."""
    return sum(p.numel() for p in model.parameters())


def _targets(model: nn.Module, layers: Sequence[str]) -> list[tuple[str, str, nn.Module]]:
    """``(name, key, module)`` of every layer of the groups ``layers``, in block order."""
    if not layers or any(group not in LAYER_GROUPS for group in layers):
        raise ValueError(
            f"tensorize: layers must be a non-empty subset of {tuple(LAYER_GROUPS)}, got {tuple(layers)!r}"
        )
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    if blocks is None:
        raise TypeError(
            f"tensorize: expected a GPT2LMHeadModel (with .transformer.h), got {type(model).__name__}"
        )
    return [
        (f"transformer.h.{b}.{key}", key, block.get_submodule(key))
        for b, block in enumerate(blocks)
        for group in layers
        for key in LAYER_GROUPS[group]
    ]


@dataclass(frozen=True)
class TensorizeConfig:
    """What :func:`tensorize` or :func:`lowrank` built in a GPT-2: ``model.config.tensornet`` in ``config.json``.

    :func:`load_model` reads it back (:meth:`from_json`); :meth:`apply` builds the layers in a dense model.

    Attributes
    ----------
    method : "ttm" or "lowrank"
    layers : the layer groups replaced in every block (``"mlp"``, ``"attn"``)
    bias : whether the replaced layers have biases
    rank : the rank asked for (TTM: None when ``eps`` chose the ranks; low-rank: the inner size)
    shapes : TTM: the core pairs per layer key, ``(out_k, in_k)`` (``"wte"``: ``(vocabulary_k, width_k)``)
    ranks : TTM: the TT ranks ``(1, r_1, ..., 1)`` of every replaced layer, by module name
    embeddings : TTM: the token embedding is a ``TTEmbedding`` and the LM head a ``TiedTTHead`` on it
    """

    VERSION: ClassVar[int] = 2  # 1 (before): pairs were (in_k, out_k) and the record had no version
    method: Literal["ttm", "lowrank"]
    layers: tuple[str, ...]
    bias: bool
    rank: int | None
    shapes: Mapping[str, Pairs] = field(default_factory=dict)
    ranks: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    embeddings: bool = False

    def to_json(self) -> dict[str, Any]:
        """The record written to a model folder's ``config.json`` (read back by :meth:`from_json`)."""
        record: dict[str, Any] = {"version": self.VERSION, "method": self.method, "layers": list(self.layers)}
        record |= {"bias": self.bias, "rank": self.rank}
        if self.method == "ttm":
            record["shapes"] = {key: [list(p) for p in pairs] for key, pairs in self.shapes.items()}
            record["ranks"] = {name: list(ranks) for name, ranks in self.ranks.items()}
            record["embeddings"] = self.embeddings
        return record

    @classmethod
    def of(cls, model: nn.Module) -> TensorizeConfig | None:
        """The record ``model.config.tensornet`` of a tensorized model (None for a dense one)."""
        record = getattr(getattr(model, "config", None), "tensornet", None)
        return None if record is None else cls.from_json(record, "model.config.tensornet")

    @classmethod
    def from_json(
        cls, record: Any, where: str = "the record", fn: str = "TensorizeConfig.from_json"
    ) -> TensorizeConfig:
        """The record :meth:`to_json` wrote; ValueError naming ``fn`` and ``where`` if malformed (or checked by :meth:`apply`)."""
        if isinstance(record, dict) and record.get("version") != cls.VERSION:
            raise ValueError(
                f"{fn}: {where!r} records a tensorization of format version {record.get('version')!r} (an older "
                "tensornet, which wrote core pairs as (in, out)): tensorize or compress the model again"
            )
        try:
            shapes = {key: tuple((m, n) for m, n in pairs) for key, pairs in record.get("shapes", {}).items()}
            ranks = {name: tuple(value) for name, value in record.get("ranks", {}).items()}
            layers, embeddings = tuple(record["layers"]), record.get("embeddings", False)
            if record["method"] not in ("ttm", "lowrank") or not set(layers) <= set(LAYER_GROUPS):
                raise ValueError(f"method {record['method']!r}, layers {layers!r}")
            return cls(record["method"], layers, record["bias"], record["rank"], shapes, ranks, embeddings)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            why = f"{type(err).__name__}: {err}"
            raise ValueError(f"{fn}: the tensornet record in {where!r} is malformed ({why:.200})") from None

    def apply(self, model: nn.Module) -> nn.Module:
        """Build these layers from scratch in the dense GPT-2 ``model`` of the size they were made for; return it."""
        if self.method == "lowrank":
            return lowrank(model, rank=cast(int, self.rank), layers=self.layers, bias=self.bias)[0]
        names = [(name, key) for name, key, _ in _targets(model, self.layers)]
        rules = []
        for name, key in names + [("transformer.wte", "wte")] * self.embeddings:
            rows, cols = zip(*self.shapes[key])
            sizes: dict[str, Any] = {"out_shape": rows, "in_shape": cols, "bias": self.bias}
            if key == "wte":
                sizes = {"voc_shape": rows, "emb_shape": cols}
            rules.append(Rule(name, rank=self.ranks[name], **sizes, from_weights=False, clip_rank=False))
        _tensorize_tied(model, rules, embeddings=self.embeddings)
        _record(model, self)
        return model


def _record(model: Any, config: TensorizeConfig) -> None:
    """``config`` into ``model.config.tensornet`` (saved in config.json); a model without a config keeps none."""
    if getattr(model, "config", None) is not None:
        model.config.tensornet = config.to_json()


def _tensorize_tied(model: Any, rules: list[Rule], *, embeddings: bool) -> TensorizeReport:
    """``tensornet.nn.tensorize``; a ``TTEmbedding`` gets the LM head as a ``TiedTTHead`` on its cores."""
    if not embeddings:
        return nn_tensorize(model, rules)[1]
    head = model.lm_head
    model.lm_head = nn.Identity()  # untied while the embedding is converted: nothing else holds its table
    try:
        _, report = nn_tensorize(model, rules)
    except BaseException:
        model.lm_head = head
        raise
    model.lm_head = TiedTTHead(model.transformer.wte)
    return report


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
    clip_rank: bool | None = None,
    embedding_rank: int | None = None,
) -> tuple[nn.Module, TensorizeReport]:
    """Replace GPT-2's linear layers by ``tensornet.nn.TTMLinear`` in place; return ``(model, report)``.

    ``layers``: ``"mlp"`` (c_fc, c_proj: the paper), ``"attn"`` (c_attn, c_proj). ``shapes``: ``"paper"`` (the
    paper's core shapes for GPT-2 small/medium MLPs, :func:`paper_shapes`; attention falls back to balanced),
    ``"balanced"`` (``ncores`` near-equal factors per side) or ``{"mlp.c_fc": ((out_1, in_1), ...), ...}``
    (pairs ``(out_k, in_k)``, as ``nn.Linear.weight`` is ``(out, in)``). ``from_weights=True`` converts the
    existing weights with ``ttm_svd`` (``rank`` the cap and/or ``eps`` the relative accuracy; the report gives
    each layer's error); otherwise the cores are initialised with ``init``. ``bias=False`` drops the biases (the
    paper's r = 16/32/64 runs). ``embeddings=True`` also makes the token embedding a ``TTEmbedding`` (rank
    ``embedding_rank``, default ``rank``; pairs ``shapes["wte"]`` or ``ncores`` balanced cores, the vocabulary
    padded to a size that factors well) and the LM head a ``TiedTTHead`` on its cores, so it stays tied as in
    GPT-2. What was built is recorded in ``model.config.tensornet`` (:class:`TensorizeConfig`).

    Bond ranks above their useful maximum are clipped (``RankClipWarning``) unless ``clip_rank=False``, the
    default for ``shapes="paper"`` (its published parameter counts use the uniform rank throughout). Raises
    ValueError for a rank below 1 or (from scratch) above every bond's useful maximum, shapes that do not
    multiply to the layer's sizes, unknown layer groups; nothing is replaced when an error is raised.
    """
    rank = count("tensorize", "rank", rank, optional=True)
    if rank is None and eps is None:  # (eps without from_weights: tensornet.nn's Rule says so)
        raise ValueError("tensorize: give rank (or eps with from_weights=True)")
    convert: dict[str, Any] = {"rank": rank, "eps": eps, "from_weights": from_weights}
    scratch: dict[str, Any] = {} if from_weights else {"init": init}
    clip = {} if from_weights else {"clip_rank": shapes != "paper" if clip_rank is None else clip_rank}
    resolved: dict[str, Pairs] = {}
    rules = []
    for name, key, module in _targets(model, layers):
        if key in resolved:  # every block has the same sizes: one rule per layer key
            continue
        out, inp = linear_weight(module, where="tensorize")[0].shape
        # "paper" ties the shapes to the rank; with eps alone the rank-64 shapes
        resolved[key] = layer_shapes(key, (out, inp), rank=rank or 64, shapes=shapes, ncores=ncores)
        if rank is not None and not from_weights:  # converting, rank is a cap: ttm_svd stops where useful
            check_useful(rank, resolved[key], name)
        rows, cols = zip(*resolved[key])
        options = {"out_shape": rows, "in_shape": cols, "bias": bias, **convert, **scratch, **clip}
        rules.append(Rule(f"transformer.h.*.{key}", **options))
    if embeddings:
        pairs = shapes.get("wte") if isinstance(shapes, Mapping) else None
        sizes = {"ncores": ncores} if pairs is None else dict(zip(("voc_shape", "emb_shape"), zip(*pairs)))
        emb_rank = count("tensorize", "embedding_rank", embedding_rank, optional=True) or rank
        # the embedding's ranks are always clipped
        rules.append(Rule("transformer.wte", **{**convert, "rank": emb_rank}, **sizes, **scratch))
    report = _tensorize_tied(model, rules, embeddings=embeddings)
    if embeddings:
        wte: Any = model.get_submodule("transformer.wte")
        resolved["wte"] = tuple(zip(wte.voc_shape, wte.emb_shape))
    ranks = {layer.name: tuple(layer.ranks) for layer in report.layers}
    _record(model, TensorizeConfig("ttm", tuple(layers), bias, rank, resolved, ranks, embeddings))
    return model, report


def lowrank(
    model: nn.Module,
    *,
    rank: int,
    layers: Sequence[str] = ("mlp",),
    bias: bool = True,
    from_weights: bool = False,
) -> tuple[nn.Module, TensorizeReport]:
    """The paper's low-rank baseline: each selected layer becomes a :class:`LowRankLinear` of inner size ``rank``.

    From the weights' truncated SVD when ``from_weights``. The report describes ``W = B @ A`` as the two-core
    TTM it is: pairs ``(out, 1), (1, in)``, ranks ``(1, rank, 1)``. Raises ValueError for a rank above
    ``min(in, out)``; nothing is replaced then.
    """
    rank = count("lowrank", "rank", rank)
    before, built = nparams(model), []
    for name, _, old in _targets(model, layers):
        weight = linear_weight(old, where="lowrank")[0]
        out_features, in_features = weight.shape
        if rank > min(in_features, out_features):
            raise ValueError(
                f"lowrank: rank {rank} is larger than useful for {name} ({in_features} -> {out_features}): a "
                f"factorisation with inner size above min(in, out) = {min(in_features, out_features)} fits no better"
            )
        if from_weights:
            new = LowRankLinear.from_linear(old, rank=rank, bias=bias)
        else:
            new = LowRankLinear(
                in_features, out_features, rank=rank, bias=bias, device=weight.device, dtype=weight.dtype
            )
        built.append((name, old, new))
    reports = []
    for name, old, new in built:
        model.set_submodule(name, new)
        m, n = new.out_features, new.in_features  # the weight (out, in), two cores (m, 1) and (1, n)
        sizes = ((m, n), (m, 1), (1, n), (1, rank, 1))
        reports.append(
            LayerReport(name, type(old).__name__, *sizes, nparams(old), nparams(new), new.conversion_error)
        )
    _record(model, TensorizeConfig("lowrank", tuple(layers), bias, rank))
    return model, TensorizeReport(reports, before, nparams(model))


def lowrank_rank_for(params: int, in_features: int, out_features: int, *, bias: bool) -> int:
    """The inner size whose low-rank layer has about ``params`` parameters (at least 1)."""
    return max(1, round((params - (out_features if bias else 0)) / (in_features + out_features)))
