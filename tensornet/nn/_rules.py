"""The rules of :func:`tensornet.nn.tensorize`: which layers to convert and with which options."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ._hf import conv1d_class

__all__ = ["Rule", "check_options", "kind_of", "rules_of"]

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
        From scratch: ``rank`` is required and ``eps`` must be None. Under ``tensorize(..., budget=b)``
        neither is needed (``Rule("*.c_fc")``): the budget chooses the ranks, a given ``rank`` caps them
        (an int, or one rank per bond) and ``eps`` is refused. Without a budget, give one of them.
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


def rules_of(rule: Any) -> list[Rule]:
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
        f"tensorize: rules must be a Rule, a list of Rules or a dict {{pattern: options}}, got {type(rule).__name__}"
    )


def kind_of(module: nn.Module) -> str | None:
    if isinstance(module, nn.Linear):
        return "Linear"
    if isinstance(module, nn.Embedding):
        return "Embedding"
    conv1d = conv1d_class()
    if conv1d is not None and isinstance(module, conv1d):
        return "Conv1D"
    return None


def check_options(name: str, rule: Rule, kind: str) -> None:
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
