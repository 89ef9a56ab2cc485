"""The TT adapter's training product: ``x (W + s delta.W)^T + b`` with the core gradients taken from ``dW``.

:class:`tensornet.nn.TTAdapter` folds its update into the weight for the call (one product of the base
layer's size instead of two). Written with plain differentiable torch operations (an ``einsum`` chain
rebuilding ``delta.W``, a scaling, a sum), autograd walked the fold back through every one of them: in
GPT-2 fine-tuning on 2 CPU cores those kernels, more than the ``dW`` product itself, made the TT step
1.25x LoRA's (``benchmarks/results/finetune.md``). :class:`_FoldedProduct` does the same mathematics
as one autograd node:

* forward: the halves ``L``, ``R`` of the update's train (small), then ``W_f = W + s L R`` as one
  batched GEMM with ``W`` as its addend, in ``W``'s own layout
  (:func:`tensornet._linear.binding.add_rebuilt`), then the base layer's own product on ``W_f``;
* backward: ``dx = g W_f`` and ``dW = g^T x`` (the two products of a dense layer's backward), then the
  packed cores' gradient from ``dW`` by the halves' VJP (``O(out * in * r)``,
  :func:`~tensornet._linear.binding.rebuild_layer_grads`), the scaling applied to it (``P`` entries).

What remains over LoRA is ``dW`` (``batch * out * in``, which LoRA's thin factors avoid) and the
``O(out * in * r)`` passes of the fold and its VJP; measured in ``benchmarks/results/finetune.md``.

Autocast: the input and bias arrive cast to the autocast dtype (as ``nn.Linear``'s are); the update is
added to the weight in the weight's dtype and the sum is cast for the product, as autocast casts
``nn.Linear``'s weight; the cores' gradient is formed in their dtype. Double backward
(``create_graph=True``) recomputes the fold with plain operations and lets autograd differentiate it.
``torch.func`` transforms and forward-mode AD take that plain fold (:func:`plain_fold`) directly.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from tensornet._linear import binding

__all__ = ["folded_product", "plain_fold"]


def _folded(
    weight: torch.Tensor, packed: torch.Tensor, halves: Any, spec: tuple[Any, float, bool, Any]
) -> Any:
    """``W + s * delta.W`` in the weight's stored layout (``Conv1D`` stores ``(in, out)``), cast for the product."""
    shapes, scaling, conv1d, compute = spec
    folded = binding.add_rebuilt(weight, packed, halves, shapes, scaling, transposed=conv1d)
    return folded.to(compute)


def _product(x: torch.Tensor, folded: torch.Tensor, bias: torch.Tensor | None, conv1d: bool) -> torch.Tensor:
    """The base layer's own product on the folded weight (the same kernel: step 0 equals the base exactly)."""
    if not conv1d:
        return nn.functional.linear(x, folded, bias)
    flat = x.reshape(-1, x.shape[-1])  # transformers' Conv1D.forward
    y = torch.mm(flat, folded) if bias is None else torch.addmm(bias, flat, folded)
    return y.view(*x.shape[:-1], folded.shape[1])


def plain_fold(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    packed: torch.Tensor,
    spec: tuple[Any, float, bool, Any],
) -> torch.Tensor:
    """The fold as plain differentiable torch operations (``torch.func``, forward AD, double backward)."""
    halves = binding.layer_halves(packed, spec[0])
    return _product(x, _folded(weight, packed, halves, spec), bias, spec[2])


def _no_autocast(device_type: str) -> Any:
    """A context with autocast off where it is on: the kernels run in the dtypes chosen here."""
    if binding.autocast_dtype(device_type) is not None:
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class _FoldedProduct(torch.autograd.Function):
    """``y = x W_f^T + b``, ``W_f = W + s * delta.W``; one node, core gradients from ``dW = g^T x``.

    Arguments: ``spec = (core shapes, s, conv1d, compute dtype)``, ``x`` and ``bias`` in the compute
    dtype, the base weight as stored, the update's packed cores. Saves ``x``, ``W_f`` in the compute
    dtype, the packed cores and the halves of the rebuild (``O(sqrt(out * in) r)``), as the plain fold
    saved ``x`` and ``W_f``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        spec: tuple[Any, float, bool, Any],
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        packed: torch.Tensor,
    ) -> torch.Tensor:
        with _no_autocast(x.device.type):
            halves = binding.layer_halves(packed, spec[0])
            folded = _folded(weight, packed, halves, spec)
            y = _product(x, folded, bias, spec[2])
        ctx.spec, ctx.has_bias = spec, bias is not None
        # W_f kept for dx, as a dense layer keeps its weight: rebuilding it in backward from the halves
        # instead made the GPT-2 step of the benchmark ~4% slower (a second pass over every (out, in) sum)
        ctx.save_for_backward(x, weight, packed, folded, *(halves or ()))
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor) -> Any:  # type: ignore[override]
        x, weight, packed, folded, *halves = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a graph autograd can differentiate again
            return (None, *_differentiable_grads(ctx, grad_y, x, weight, packed))
        with _no_autocast(x.device.type):
            return (None, *_grads(ctx, grad_y, x, weight, packed, folded, halves))


def _grads(
    ctx: Any,
    grad_y: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    packed: torch.Tensor,
    folded: torch.Tensor,
    halves: list[torch.Tensor],
) -> tuple[Any, Any, Any, Any]:
    """``(dx, dW as stored, dbias, d packed)``: two GEMMs of the base layer's size and the halves' VJP."""
    shapes, scaling, conv1d, _ = ctx.spec
    _, need_x, need_w, need_b, need_cores = ctx.needs_input_grad
    g2 = grad_y.reshape(-1, grad_y.shape[-1])  # (B, out)
    grad_x = grad_w = grad_b = grad_packed = None
    if need_x:
        grad_x = (g2 @ (folded.mT if conv1d else folded)).view(x.shape)
    if need_w or need_cores:
        dense = g2.mT @ x.reshape(-1, x.shape[-1])  # dW (out, in): the product LoRA's thin factors avoid
        if need_w:
            grad_w = (dense.mT if conv1d else dense).to(weight.dtype)
        if need_cores:
            # linear in dW: the scaling is applied to the packed gradient (P entries), not to dW
            grad_packed = binding.rebuild_layer_grads(packed, shapes, dense.to(packed.dtype), halves or None)
            grad_packed = grad_packed * scaling
    if need_b and ctx.has_bias:
        grad_b = g2.sum(0)
    return grad_x, grad_w, grad_b, grad_packed


def _differentiable_grads(
    ctx: Any, grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, packed: torch.Tensor
) -> tuple[Any, Any, Any, Any]:
    """The gradients as a graph (double backward): the fold recomputed with plain operations."""
    _, need_x, need_w, need_b, need_cores = ctx.needs_input_grad
    wanted = [(t, n) for t, n in ((x, need_x), (weight, need_w), (packed, need_cores)) if n]
    with torch.enable_grad():
        y = plain_fold(x, weight, None, packed, ctx.spec)
        grads = iter(torch.autograd.grad(y, [t for t, _ in wanted], grad_y, create_graph=True))
    grad_x = next(grads) if need_x else None
    grad_w = next(grads) if need_w else None
    grad_packed = next(grads) if need_cores else None
    grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0) if need_b and ctx.has_bias else None
    return grad_x, grad_w, grad_b, grad_packed


def folded_product(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    packed: torch.Tensor,
    shapes: Any,
    scaling: float,
    conv1d: bool,
) -> torch.Tensor:
    """``x (W + s * delta.W)^T + b`` as the base layer computes it (``W`` as stored; ``Conv1D``: ``(in, out)``).

    Under autocast ``x`` and ``bias`` are cast to the autocast dtype and the folded weight is cast
    for the product (as autocast does for ``nn.Linear``). Cost: the base layer's product plus
    ``O(out * in * r)`` for the update; in backward the base layer's two products plus ``O(out * in * r)``.
    """
    device_type = x.device.type
    compute = binding.compute_dtype(weight.dtype, device_type)
    if binding.autocast_dtype(device_type) is not None:
        x = x.to(binding.compute_dtype(x.dtype, device_type))
        bias = None if bias is None else bias.to(binding.compute_dtype(bias.dtype, device_type))
    spec = (shapes, float(scaling), conv1d, compute)
    if not torch.compiler.is_compiling() and (
        torch._C._are_functorch_transforms_active() or _forward_ad_active()
    ):
        return plain_fold(x, weight, bias, packed, spec)
    return _FoldedProduct.apply(spec, x, weight, bias, packed)


def _forward_ad_active() -> bool:
    """Whether a forward-mode AD level is open (``torch.autograd.forward_ad.dual_level``)."""
    from torch.autograd import forward_ad

    return bool(forward_ad._current_level >= 0)
