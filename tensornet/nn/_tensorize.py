"""``tensorize(model, rule, budget)``: swap a model's linear and embedding layers for TT layers by name pattern."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tensornet import _backend

from . import _budget
from ._calibration import check_calibration
from ._embedding import TTEmbedding
from ._hf import dense_weight
from ._linear import TTMLinear
from ._materialize import materialize
from ._reads import direct_reader
from ._rules import Rule, check_options, kind_of, rules_of
from ._tensorize_report import LayerReport, TensorizeReport

__all__ = ["LayerReport", "TensorizeReport", "tensorize"]


def _build(
    name: str, module: Any, kind: str, rule: Rule, plan: _budget.Plan | None = None
) -> TTMLinear | TTEmbedding:
    check_options(name, rule, kind)
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
    if plan is not None:  # the budget's TTM, decomposed once while the proposals were compared
        dense, dense_bias = dense_weight(f"tensorize: layer {name}", module)
        new = TTMLinear.from_ttm(
            plan.ttm.to(device=dense.device, dtype=dense.dtype),
            None if dense_bias is None else dense_bias.detach(),
            save_weight=options.get("save_weight", False),
        )
        new.conversion_error = plan.error
    elif rule.from_weights:
        new = TTMLinear.from_linear(module, rank=rule.rank, eps=rule.eps, **options)
    else:
        out_features, in_features = dense_weight("tensorize", module)[0].shape  # (out, in), Conv1D transposed
        return TTMLinear(
            in_features,
            out_features,
            rank=rank,
            bias=bias,
            device=weight.device,
            dtype=weight.dtype,
            **options,
        )
    if not bias:
        new.register_parameter("bias", None)
    return new


def _match(model: nn.Module, rules: list[Rule]) -> tuple[list[_budget.Target], list[tuple[str, str]]]:
    """``(name, module, kind, rule)`` for every eligible layer a rule matches (the first rule wins).

    And ``(name, why)`` of the matched layers left dense because an ancestor reads their weight tensor
    directly (:func:`~tensornet.nn._reads.direct_reader`).
    """
    found = [
        (name, module, kind) for name, module in model.named_modules() if name and (kind := kind_of(module))
    ]
    readers = {name: direct_reader(model, name) for name, _, _ in found}
    eligible = [entry for entry in found if readers[entry[0]] is None]
    used: list[list[str]] = [[] for _ in rules]  # the layers each rule matched (converted or skipped)
    targets, skipped = [], []
    for name, module, kind in found:
        index = next((i for i, candidate in enumerate(rules) if candidate.matches(name)), None)
        if index is None:
            continue
        used[index].append(name)
        why = readers[name]
        if why is not None:
            skipped.append((name, f"{kind}, {why}; a TT layer there would fail in forward"))
            continue
        targets.append((name, module, kind, rules[index]))
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
    return targets, skipped


def _convert(
    model: nn.Module, rules: list[Rule], budget: float | None, calibration: Any = None
) -> tuple[
    list[tuple[str, Any, TTMLinear | TTEmbedding, str]], list[tuple[str, str]], dict[str, _budget.Plan]
]:
    """``(name, old, new, kind)`` per converted layer, the skipped layers, and the budget's plans by name.

    Nothing is replaced yet, so an error leaves the model as it was.
    """
    targets, skipped = _match(model, rules)
    if budget is None:
        for rule in rules:
            if rule.rank is None and rule.eps is None:
                raise ValueError(
                    f"tensorize: {rule!r} has neither rank nor eps; give one, or a budget "
                    "(tensorize(model, rules, budget=0.5)) to choose the ranks"
                )
        plans = {}
    else:
        plans = _budget.plan(targets, budget, model, calibration)
    converted = []
    for name, module, kind, rule in targets:
        try:
            converted.append((name, module, _build(name, module, kind, rule, plans.get(name)), kind))
        except (TypeError, ValueError) as error:
            raise type(error)(f"tensorize: layer {name} ({kind}): {error}") from error
    return converted, skipped, plans


def _norm(weight: torch.Tensor) -> float:
    """``||weight||_F`` in float64, divided by its largest entry first (no overflow at any finite scale)."""
    dense = weight.detach().to(device="cpu", dtype=torch.float64)
    peak = float(dense.abs().max()) if dense.numel() else 0.0
    return peak * float(torch.linalg.vector_norm(dense / peak)) if peak > 0 else 0.0


def _layer_report(
    model: nn.Module, name: str, old: Any, new: TTMLinear | TTEmbedding, kind: str, plan: _budget.Plan | None
) -> LayerReport:
    """The record of one replaced layer (``model`` already holds ``new``)."""
    shared = [n for n, p in model.named_parameters(remove_duplicate=False) if p is old.weight]
    rows, cols = new.weight.shape
    bias = getattr(new, "bias", None)
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
        error_bound=None if plan is None else plan.bound,
        norm=None if new.conversion_error is None else _norm(old.weight),
        bias_params=0 if bias is None else bias.numel(),
    )


def tensorize(
    model: nn.Module,
    rules: Rule | Sequence[Rule] | Mapping[str, Mapping[str, Any]],
    budget: float | None = None,
    *,
    calibration: Any = None,
) -> tuple[nn.Module, TensorizeReport]:
    """Replace, in place, the ``nn.Linear``, GPT-2 ``Conv1D`` and ``nn.Embedding`` layers a rule matches.

    Each matched layer becomes a :class:`TTMLinear` / :class:`TTEmbedding` with the layer's dtype, device
    and bias. Other module types are never touched, even if their name matches, nor are layers whose
    parent reads their ``.weight``/``.bias`` tensor itself instead of calling them (see Notes).

    Parameters
    ----------
    model : nn.Module
        Changed in place.
    rules : Rule, sequence of Rule, or mapping
        A :class:`Rule`, a list of Rules (the first that matches a layer wins) or a dict
        ``{pattern: {"rank": 64, "eps": 0.3, ...}}``.
    budget : float in (0, 1], optional
        Choose the ranks of all matched layers together so that their TT cores hold at most ``budget``
        times the matched layers' dense weights (biases, kept as they are, count on neither side), with
        the least total conversion error the allocation finds (see Notes). Matched layers must be linear
        layers converted from weights; the rules' shapes (``in_shape``, ``out_shape``, ``ncores``) are
        kept and a rule's ``rank`` caps the ranks.
    calibration : tensor, tuple, dict or list of them, optional
        With a budget only: a few batches of the model's inputs (a tensor: ``model(x)``; a tuple:
        ``model(*args)``; a dict: ``model(**kwargs)``; a list: one batch each). The model runs on them
        once (eval mode, no grad; its train/eval flags are restored) and the budget then minimises each
        layer's error on the inputs it receives, ``||(W - W~) X^T||``, instead of the weights' error
        (see Notes). Recommended: the weights' error alone can starve a layer whose output matters.

    Returns
    -------
    tuple of (nn.Module, TensorizeReport)
        ``model`` itself (so that ``model, report = tensorize(build(), ...)`` reads as one step) and the
        report of every replaced layer.

    Raises
    ------
    TypeError
        A bad rule, or options that do not fit a matched layer; a budget that is not a real number; a
        calibration argument of another form.
    ValueError
        A rule that matches no eligible layer (the message lists them), or only layers whose parents read
        their weights; the layers' own errors (shapes, ranks) name the layer. A rule with neither rank nor
        eps and no budget; a budget outside ``(0, 1]``, or too small for rank 1 at every bond (the message
        gives the smallest that fits), or with an embedding, a from-scratch rule or an eps among the
        matched layers. Calibration without a budget, an empty list of batches, batches that never reach
        a matched layer or give non-finite activations. Nothing is replaced when an error is raised.

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

    **The budget's allocation.** Each matched weight ``W_l`` is read once for its bond spectra: at bond k the
    singular values ``sigma_{l,k,i}`` of the k-th unfolding of its TTM tensor. With ``t_{l,k}`` the share of
    ``||W_l||_F^2`` beyond rank ``r_{l,k}`` at bond k, TT-SVD at those ranks has a relative error ``e_l``
    with ``max_k t_{l,k} <= e_l^2 <= sum_k t_{l,k}`` (Oseledets 2011, Theorem 2.2; the lower bound holds
    for every TT of those ranks), and the cores store ``P_l = sum_k r_{k-1} m_k n_k r_k`` numbers. The
    constraint is ``sum_l P_l <= floor(budget * sum_l M_l N_l)``. The objective, with calibration
    batches, is the layers' total squared output error on the inputs ``X_l`` each receives from them,
    ``sum_l ||(W_l - W~_l) X_l^T||_F^2 = sum_l tr(D_l G_l D_l^T)`` (``D_l = W_l - W~_l``, ``G_l = X_l^T
    X_l`` accumulated in float64; the activations are not kept); without, the weights' total squared
    error ``sum_l ||W_l - W~_l||_F^2``. The weights' error alone can be a poor guide: on a trained GPT-2
    (``benchmarks/results/budget.md``) it gave the MLP's ``c_proj`` layers, whose weights are the smallest but
    whose outputs on the model's own inputs are comparable to the other layers' in the first blocks, a rank-1
    bond, and the model trained worse than with uniform ranks; the output error ranks layers by what they
    contribute.

    Six greedy runs propose ranks (twelve with calibration). Each raises, one at a time, the bond whose step
    lowers an estimate of the objective most per added parameter among the steps that still fit, until none
    fits (or none lowers it: zero singular values), so every proposal uses the budget exactly or just under
    it. The estimate of layer l's term is ``w_l`` times an estimate of ``e_l^2``, with ``w_l`` its output
    energy on the calibration inputs ``tr(W_l G_l W_l^T)`` (or ``||W_l||_F^2``; with calibration, six runs use
    each): the discarded share of the output is taken to be that of the weights. The runs differ in the
    estimate of ``e_l^2`` (the upper bound ``sum_k t_{l,k}``, or ``1 - prod_k (1 - t_{l,k})``, which lies
    between the bounds and sees that a bond at a low rank discards what its neighbours keep) and in the start
    (rank 1 everywhere, half the largest uniform rank that fits, or that rank). Each proposal is converted by
    TT-SVD (each distinct choice for a layer once; the chosen TTM becomes the layer, nothing is decomposed
    twice) and its objective measured exactly; the least wins. Ties go to the earlier layer, then the earlier
    bond, then the earlier proposal (deterministic). This is greedy, not an exact optimum (a step's cost and
    gain depend on the neighbouring bonds: a knapsack with coupled costs). It is optimal when every step costs
    the same and gains do not interact (2-core layers of equal core sizes, weights' error). One proposal
    starts from the uniform ranks that fit and only adds to them, so the result has no larger objective than
    those uniform ranks when its greedy lowers the measured objective, as it does in practice. Core shapes
    come from the rules (``in_shape``, ``out_shape``, ``ncores``); the allocation does not choose them. The
    report gives, per layer, the ranks, parameters, measured error and TT-SVD upper bound
    (``LayerReport.error_bound``), ``TensorizeReport.weight_ratio`` and ``total_error``, and the objective
    used (``TensorizeReport.allocation``).

    Cost: without a budget, one truncated TT-SVD per layer converted from weights (``O(M N r)``); with
    a budget, also a singular-values-only SVD of each unfolding (``O(M N u)``, u its smaller side) for the
    spectra, ``O(S L d^2)`` per greedy run (S steps over L layers of d cores), up to six (twelve) truncated
    TT-SVDs per layer (one per distinct proposal, the conversion included) and, with calibration, the forward
    passes plus ``O(n N^2 + M N^2)`` per layer for its Gram matrix and the scores (n input vectors).

    Examples
    --------
    A small MLP here; on a Hugging Face GPT-2 the rules name modules such as ``"transformer.h.*.mlp.c_fc"``,
    and ``calibration`` takes batches of token ids.

    >>> import torch
    >>> from torch import nn
    >>> from tensornet.nn import Rule, tensorize
    >>> _ = torch.manual_seed(0)
    >>> mlp = lambda: nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 64))
    >>> model, report = tensorize(mlp(), [Rule("0", rank=8, in_shape=(4, 4, 4), out_shape=(4, 4, 6))])
    >>> type(model[0]).__name__, type(model[2]).__name__, report.layers[0].ranks
    ('TTMLinear', 'Linear', (1, 8, 8, 1))
    >>> model, report = tensorize(mlp(), [Rule("0"), Rule("2")], budget=0.3)  # ranks chosen for 30%
    >>> report.weight_ratio <= 0.3
    True
    >>> x = torch.randn(16, 64)
    >>> model, report = tensorize(mlp(), [Rule("0"), Rule("2")], budget=0.3, calibration=[x[:8], x[8:]])
    >>> report.allocation.startswith("ranks from the bond spectra")
    True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"tensorize: model must be an nn.Module, got {type(model).__name__}")
    rules = rules_of(rules)
    if budget is not None:
        budget = _budget.check_budget(budget)
    if calibration is not None:
        check_calibration(calibration, budget)
    before = sum(p.numel() for p in model.parameters())
    converted, skipped, plans = _convert(model, rules, budget, calibration)
    if skipped:
        _backend.warn(
            "tensorize: left dense (their parents read their weight tensors directly): "
            + "; ".join(f"{name} ({why})" for name, why in skipped),
            UserWarning,
        )
    for name, _, new, _ in converted:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    layers = [
        _layer_report(model, name, old, new, kind, plans.get(name)) for name, old, new, kind in converted
    ]
    after = sum(p.numel() for p in model.parameters())
    materialize(model)  # layers with equal core shapes rebuild their weights together in training
    report = TensorizeReport(
        layers=layers,
        model_params_before=before,
        model_params_after=after,
        skipped=skipped,
        budget=budget,
        allocation="" if budget is None else _budget.allocation(calibration is not None),
    )
    return model, report
