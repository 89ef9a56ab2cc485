"""``tensorize(model, rule)``: swap a model's linear and embedding layers for TT layers by name pattern."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tensornet import _backend

from ._embedding import TTEmbedding
from ._hf import conv1d_class, dense_weight
from ._linear import TTMLinear
from ._materialize import materialize
from ._reads import direct_reader

__all__ = ["LayerReport", "Rule", "TensorizeReport", "tensorize"]

_LINEAR_OPTIONS = {"in_shape", "out_shape", "ncores", "save_weight", "bias"}
_LINEAR_SCRATCH = _LINEAR_OPTIONS | {"init", "clip_rank"}
_EMBEDDING_OPTIONS = {"voc_shape", "emb_shape", "ncores"}
_EMBEDDING_SCRATCH = _EMBEDDING_OPTIONS | {"init", "clip_rank"}


class Rule:
    r"""Which layers to replace and how.

    Parameters
    ----------
    pattern : str or re.Pattern
        A ``str`` is an fnmatch pattern over the module's dotted name (``"transformer.h.*.mlp.c_fc"``,
        ``"*.c_proj"``); a compiled ``re.Pattern`` must match the whole name (``re.compile(r"h\.\d+\.mlp\..*")``).
    rank, eps :
        From weights (default): TT-SVD with relative accuracy ``eps`` and/or the rank cap ``rank``.
        From scratch: ``rank`` is required and ``eps`` must be None.
    from_weights : bool
        True: compress the layer's trained weights (:meth:`TTMLinear.from_linear`,
        :meth:`TTEmbedding.from_embedding`). False: a freshly initialised TT layer of the same size.
    **options :
        Passed to the layer: ``in_shape``, ``out_shape``, ``ncores``, ``save_weight``, ``bias`` (linear);
        ``voc_shape``, ``emb_shape``, ``ncores`` (embedding); from scratch also ``init`` and ``clip_rank``.
        ``bias``: from weights, False drops the layer's bias (True keeps it, if it has one); from scratch,
        whether the new layer has one (default: as the layer it replaces).
    """

    __slots__ = ("eps", "from_weights", "options", "pattern", "rank")

    def __init__(
        self,
        pattern: str | re.Pattern[str],
        *,
        rank: int | tuple[int, ...] | None = None,
        eps: float | None = None,
        from_weights: bool = True,
        **options: Any,
    ) -> None:
        if not isinstance(pattern, (str, re.Pattern)):
            raise TypeError(
                f"Rule: pattern must be a str (fnmatch) or re.Pattern, got {type(pattern).__name__}"
            )
        if not isinstance(from_weights, bool):
            raise TypeError(f"Rule: from_weights must be a bool, got {from_weights!r}")
        if rank is None and eps is None:
            raise ValueError(f"Rule {pattern!r}: give rank (and/or eps when converting weights)")
        if not from_weights and (rank is None or eps is not None):
            raise ValueError(
                f"Rule {pattern!r}: from_weights=False needs rank and no eps (there is nothing to fit)"
            )
        unknown = set(options) - _LINEAR_SCRATCH - _EMBEDDING_SCRATCH
        if unknown:
            raise TypeError(
                f"Rule {pattern!r}: unknown options {sorted(unknown)}; "
                f"allowed: {sorted(_LINEAR_SCRATCH | _EMBEDDING_SCRATCH)}"
            )
        self.pattern, self.rank, self.eps, self.from_weights = pattern, rank, eps, from_weights
        self.options = dict(options)

    def matches(self, name: str) -> bool:
        """Whether the module name ``name`` matches the rule's pattern (a glob, or a regex matched in full)."""
        if isinstance(self.pattern, re.Pattern):
            return self.pattern.fullmatch(name) is not None
        return fnmatch.fnmatchcase(name, self.pattern)

    def __repr__(self) -> str:
        pattern = self.pattern.pattern if isinstance(self.pattern, re.Pattern) else self.pattern
        extra = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Rule({pattern!r}, rank={self.rank!r}, eps={self.eps!r}, from_weights={self.from_weights}{extra})"


@dataclass(frozen=True)
class LayerReport:
    """What happened to one layer. ``shape`` is the weight as ``(out, in)`` / ``(num_embeddings, dim)``."""

    name: str
    kind: str
    shape: tuple[int, int]
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    ranks: tuple[int, ...]
    params_before: int
    params_after: int
    error: float | None
    note: str = ""


@dataclass(frozen=True)
class TensorizeReport:
    """Per-layer records and the model's parameter counts (shared parameters counted once).

    ``skipped``: ``(name, why)`` of each layer a rule matched but that was left dense because its parent
    reads its weight tensor directly (see :func:`tensorize`).
    """

    layers: list[LayerReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """Model parameters after divided by before."""
        return self.model_params_after / self.model_params_before if self.model_params_before else math.nan

    @property
    def max_error(self) -> float | None:
        """The largest relative error of a layer converted from weights (None when none was)."""
        errors = [layer.error for layer in self.layers if layer.error is not None]
        return max(errors) if errors else None

    def __str__(self) -> str:
        header = (
            "layer",
            "type",
            "shape",
            "TT shape (rows x cols)",
            "ranks",
            "params",
            "TT params",
            "ratio",
            "rel. error",
        )
        rows = [header]
        for layer in self.layers:
            pairs = "".join(f"({m},{n})" for m, n in zip(layer.row_shape, layer.col_shape))
            rows.append(
                (
                    layer.name,
                    layer.kind,
                    f"{layer.shape[0]}x{layer.shape[1]}",
                    pairs,
                    "-".join(str(r) for r in layer.ranks),
                    f"{layer.params_before:,}",
                    f"{layer.params_after:,}",
                    f"{layer.params_before / layer.params_after:.1f}x",
                    "-" if layer.error is None else f"{layer.error:.3g}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        right = {5, 6, 7, 8}
        lines = []
        for i, row in enumerate(rows):
            cells = [
                cell.rjust(w) if j in right else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        before, after = self.model_params_before, self.model_params_after
        share = 100.0 * after / before if before else float("nan")
        lines.append(
            f"{len(self.layers)} layers replaced; model parameters {before:,} -> {after:,} ({share:.1f}% of before)"
        )
        lines += [f"note: {layer.name}: {layer.note}" for layer in self.layers if layer.note]
        lines += [f"skipped (left dense): {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython / notebooks
        printer.text(str(self))


def _rules(rule: Any) -> list[Rule]:
    if isinstance(rule, Rule):
        return [rule]
    if isinstance(rule, Mapping):
        out = []
        for pattern, options in rule.items():
            if not isinstance(options, Mapping):
                raise TypeError(
                    f"tensorize: rule mapping values must be dicts of Rule options, got {type(options).__name__} "
                    f"for {pattern!r}"
                )
            out.append(Rule(pattern, **options))
        return out
    if isinstance(rule, Sequence) and not isinstance(rule, str) and all(isinstance(r, Rule) for r in rule):
        if not rule:
            raise ValueError("tensorize: rule is an empty list; give at least one Rule")
        return list(rule)
    raise TypeError(
        f"tensorize: rule must be a Rule, a list of Rules or a dict {{pattern: options}}, got {type(rule).__name__}"
    )


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "Linear"
    if isinstance(module, nn.Embedding):
        return "Embedding"
    conv1d = conv1d_class()
    if conv1d is not None and isinstance(module, conv1d):
        return "Conv1D"
    return None


def _check_options(name: str, rule: Rule, kind: str) -> None:
    linear = kind != "Embedding"
    if rule.from_weights:
        allowed = _LINEAR_OPTIONS if linear else _EMBEDDING_OPTIONS
    else:
        allowed = _LINEAR_SCRATCH if linear else _EMBEDDING_SCRATCH
    extra = set(rule.options) - allowed
    if extra:
        how = "converted from weights" if rule.from_weights else "built from scratch"
        raise TypeError(
            f"tensorize: {rule!r} matched {name} ({kind}, {how}) but options {sorted(extra)} do not apply; "
            f"allowed: {sorted(allowed)}"
        )


def _build(name: str, module: Any, kind: str, rule: Rule) -> TTMLinear | TTEmbedding:
    _check_options(name, rule, kind)
    options = dict(rule.options)
    rank: Any = rule.rank  # not None when building from scratch (checked by Rule)
    weight = module.weight
    if kind == "Embedding":
        if rule.from_weights:
            return TTEmbedding.from_embedding(module, rank=rule.rank, eps=rule.eps, **options)
        return TTEmbedding(
            module.num_embeddings,
            module.embedding_dim,
            rank=rank,
            device=weight.device,
            dtype=weight.dtype,
            padding_idx=module.padding_idx,
            **options,
        )
    bias = options.pop("bias", module.bias is not None)
    if rule.from_weights:
        new = TTMLinear.from_linear(module, rank=rule.rank, eps=rule.eps, **options)
        if not bias:
            new.register_parameter("bias", None)
        return new
    out_features, in_features = dense_weight("tensorize", module)[0].shape  # (out, in), Conv1D transposed
    return TTMLinear(
        in_features, out_features, rank=rank, bias=bias, device=weight.device, dtype=weight.dtype, **options
    )


def _convert(
    model: nn.Module, rules: list[Rule]
) -> tuple[list[tuple[str, Any, TTMLinear | TTEmbedding, str]], list[tuple[str, str]]]:
    """``(name, old, new, kind)`` for every eligible layer a rule matches (the first rule wins).

    And ``(name, why)`` of the matched layers left dense because an ancestor reads their weight tensor
    directly (:func:`~tensornet.nn._reads.direct_reader`). Nothing is replaced yet, so an error leaves the
    model as it was.
    """
    found = [
        (name, module, kind) for name, module in model.named_modules() if name and (kind := _kind(module))
    ]
    readers = {name: direct_reader(model, name) for name, _, _ in found}
    eligible = [entry for entry in found if readers[entry[0]] is None]
    used: list[list[str]] = [[] for _ in rules]  # the layers each rule matched (converted or skipped)
    converted, skipped = [], []
    for name, module, kind in found:
        index = next((i for i, candidate in enumerate(rules) if candidate.matches(name)), None)
        if index is None:
            continue
        used[index].append(name)
        why = readers[name]
        if why is not None:
            skipped.append((name, f"{kind}, {why}; a TT layer there would fail in forward"))
            continue
        try:
            converted.append((name, module, _build(name, module, kind, rules[index]), kind))
        except (TypeError, ValueError) as error:
            raise type(error)(f"tensorize: layer {name} ({kind}): {error}") from error
    for rule, matched in zip(rules, used):
        if matched and all(readers[name] is not None for name in matched):
            raise ValueError(
                f"tensorize: {rule!r} matched only layers whose parents read their weight tensors directly "
                f"instead of calling them ({'; '.join(f'{n}: {readers[n]}' for n in matched)}); a TT layer "
                "cannot stand in for them, leave them dense"
            )
        if not matched:
            names = [name for name, _, _ in eligible]
            shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
            raise ValueError(
                f"tensorize: {rule!r} matched no Linear/Conv1D/Embedding layer "
                f"(or only ones an earlier rule took); eligible names: {shown or 'none'}"
            )
    return converted, skipped


def _layer_report(
    model: nn.Module, name: str, old: Any, new: TTMLinear | TTEmbedding, kind: str
) -> LayerReport:
    """The record of one replaced layer (``model`` already holds ``new``)."""
    shared = [n for n, p in model.named_parameters(remove_duplicate=False) if p is old.weight]
    rows, cols = new.weight.shape
    return LayerReport(
        name=name,
        kind=kind,
        shape=(old.num_embeddings, cols) if kind == "Embedding" else (rows, cols),
        row_shape=new.weight.row_shape,
        col_shape=new.weight.col_shape,
        ranks=new.ranks,
        params_before=sum(p.numel() for p in old.parameters()),
        params_after=sum(p.numel() for p in new.parameters()),
        error=new.conversion_error,
        note=f"its dense weight is still used by {', '.join(shared)} (tied), so it is not freed"
        if shared
        else "",
    )


def tensorize(
    model: nn.Module, rule: Rule | Sequence[Rule] | Mapping[str, Mapping[str, Any]]
) -> tuple[nn.Module, TensorizeReport]:
    """Replace, in place, the ``nn.Linear``, GPT-2 ``Conv1D`` and ``nn.Embedding`` layers a rule matches.

    Each matched layer becomes a :class:`TTMLinear` / :class:`TTEmbedding` with the layer's dtype, device
    and bias. Other module types are never touched, even if their name matches, nor are layers whose
    parent reads their ``.weight``/``.bias`` tensor itself instead of calling them (see Notes).

    Parameters
    ----------
    model : nn.Module
        Changed in place.
    rule : Rule, sequence of Rule, or mapping
        A :class:`Rule`, a list of Rules (the first that matches a layer wins) or a dict
        ``{pattern: {"rank": 64, "eps": 0.3, ...}}``.

    Returns
    -------
    tuple of (nn.Module, TensorizeReport)
        ``model`` itself (so that ``model, report = tensorize(build(), ...)`` reads as one step) and the
        report of every replaced layer.

    Raises
    ------
    TypeError
        A bad rule, or options that do not fit a matched layer.
    ValueError
        A rule that matches no eligible layer (the message lists them), or only layers whose parents read
        their weights; the layers' own errors (shapes, ranks) name the layer. Nothing is replaced when an
        error is raised.

    Warns
    -----
    UserWarning
        Naming the matched layers left dense because their parents read their weights.

    Notes
    -----
    A TT layer's ``.weight`` is a :class:`tensornet.TTM`, so it can stand in only where the model calls the
    layer. Layers whose parent (or another ancestor) reads ``self.<layer>.weight`` or ``.bias`` in its
    ``forward`` are left dense and listed in ``report.skipped``: torch's ``nn.MultiheadAttention`` (its
    ``out_proj``, so also in ``nn.TransformerEncoderLayer``, ``nn.TransformerDecoderLayer`` and
    ``nn.Transformer``) and ``nn.TransformerEncoderLayer``'s ``linear1``/``linear2`` (read by its inference
    fast path), and models written the same way. The reads are found in the ancestors' ``forward`` source;
    a read through another name (``getattr``, a local alias) is not seen.

    Tied weights (GPT-2's ``lm_head`` shares ``wte.weight``) stay dense where they are still used; the
    report notes it, and its model parameter counts show what was actually saved
    (:func:`tensornet.gpt2.tensorize` ties GPT-2's head to a TT embedding instead). The model comes back
    with :func:`materialize` on (its TTM layers of equal core shapes rebuild their weights together in
    training; ``materialize(model, enabled=False)`` turns that off).

    Examples
    --------
    >>> model, report = tensorize(model, [Rule("transformer.h.*.mlp.c_fc", rank=64,  # doctest: +SKIP
    ...                                        in_shape=(8, 8, 12, 1), out_shape=(8, 8, 8, 6))])
    >>> print(report)  # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"tensorize: model must be an nn.Module, got {type(model).__name__}")
    rules = _rules(rule)
    before = sum(p.numel() for p in model.parameters())
    converted, skipped = _convert(model, rules)
    if skipped:
        _backend.warn(
            "tensorize: left dense (their parents read their weight tensors directly): "
            + "; ".join(f"{name} ({why})" for name, why in skipped),
            UserWarning,
        )
    for name, _, new, _ in converted:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    layers = [_layer_report(model, name, old, new, kind) for name, old, new, kind in converted]
    after = sum(p.numel() for p in model.parameters())
    materialize(model)  # layers with equal core shapes rebuild their weights together in training
    report = TensorizeReport(
        layers=layers, model_params_before=before, model_params_after=after, skipped=skipped
    )
    return model, report
