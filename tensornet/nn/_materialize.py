"""Training with the dense weights of all TT layers rebuilt at once: :func:`materialize`.

In a training step at many tokens every :class:`TTMLinear` rebuilds its W, and its backward rebuilds W
again and turns dW into core gradients: tens of small kernels per layer, which on a GPU cost more than the
big GEMM. Layers with equal core shapes (all of GPT-2's ``c_fc``, all its ``c_proj``) can share that work:
their packed cores are stacked and W is rebuilt for the whole group by batched GEMMs, once per step; every
layer then runs ``F.linear`` on its W as ``nn.Linear`` does, and autograd turns the group's dW into core
gradients in one batched pass. The extra work per step is a handful of kernels per group instead of tens
per layer, and the backward has no Python in it.

Memory: each group holds its rebuilt W from the first layer call of a step until the backward has used
it (bf16 under bf16 autocast): at most the dense model's weight bytes, plus the halves of each product,
where the per-layer path saves only the input and the cores.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tensornet import _checks
from tensornet._linear import kernels as K
from tensornet._linear import plan as P
from tensornet._linear.autograd import autocast_dtype, compute_dtype

from ._linear import TTMLinear

__all__ = ["materialize"]


class PassCounter:
    """Counts forward passes of the model :func:`materialize` was applied to (a forward pre-hook).

    The rebuilt weights are reused within one pass only, so two passes never share an autograd graph.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, module: nn.Module, args: Any) -> None:
        # compiled, the groups are not used (the per-layer path runs): counting there would only make dynamo
        # guard on the count and recompile every pass. Inside a backward the pass is activation checkpointing
        # recomputing one already counted.
        if not torch.compiler.is_compiling() and torch._C._current_graph_task_id() == -1:
            self.count += 1


class WeightGroup:
    """TT layers with equal core shapes whose dense weights are rebuilt together.

    ``weight(index, x)`` gives layer ``index``'s W for the input ``x``: from the group's batched rebuild
    (made at the first call after the cores changed or a backward used the previous one), or None where the
    per-layer path is the better one (no gradient needed, under ``torch.compile`` or a ``torch.func``
    transform, the layers' cores on different devices or dtypes, or token counts where the plan's factorised
    path costs less than the group's share of a rebuild:
    :meth:`~tensornet._linear.plan.LinearPlan.rebuilds_in_group`).
    """

    def __init__(self, layers: Sequence[TTMLinear], passes: PassCounter) -> None:
        self.layers = list(layers)
        self.passes = passes
        self.core_shapes: K.CoreShapes = layers[0].core_shapes
        self._stamps: Any = None  # ((pass, compute dtype), (data_ptr, version) per layer, the building layer)
        self._weights: tuple[Any, ...] = ()
        self._served: set[int] = set()  # the layers given the matrices in this pass

    def __getstate__(self) -> dict[str, Any]:  # a copy or pickle carries the grouping, not the matrices
        return {**self.__dict__, "_stamps": None, "_weights": (), "_served": set()}

    def release(self) -> None:
        """Drop the rebuilt matrices (done automatically once a backward pass has used them)."""
        self._stamps, self._weights, self._served = None, (), set()

    def weight(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        layer = self.layers[index]
        packed = layer.packed_cores
        if (
            torch.compiler.is_compiling()
            or not torch.is_grad_enabled()
            or not packed.requires_grad
            or torch._C._are_functorch_transforms_active()  # torch.func: the per-layer Function supports it
        ):
            return None
        compute = compute_dtype(packed.dtype, x.device.type)
        tokens = x.numel() // max(layer.in_features, 1)
        plan = P.lookup(self.core_shapes, tokens, compute, packed.device, "torch")
        if not plan.rebuilds_in_group(len(self.layers)):
            return None  # decoding-sized calls of large layers: the factorised per-layer path
        # valid while this pass, the compute dtype and this layer's cores (storage, in-place version) are
        # those of the rebuild: any layer whose cores changed notices it when called
        stamps = self._stamps
        valid = (
            stamps is not None
            and stamps[0] == (self.passes.count, compute)
            and stamps[1][index] == (packed.data_ptr(), packed._version)
        )
        if torch._C._current_graph_task_id() != -1:
            # a forward inside a backward: activation checkpointing recomputing this layer. The recomputation
            # must save what the forward saved: the per-layer path where the forward took it (a reentrant
            # checkpoint's forward runs without gradients), the group's matrices where the forward took them,
            # and where the forward built them here, a second build (serving this recomputation only)
            if not valid or index not in self._served:
                return None
            if stamps[2] == index:
                params = [m.packed_cores for m in self.layers]
                return _GroupRebuild.apply(self.core_shapes, compute, _no_group, *params)[index]
            return self._weights[index]
        if not valid:
            params = [m.packed_cores for m in self.layers]
            if any(p.device != packed.device or p.dtype != packed.dtype for p in params):
                return None
            self._weights = _GroupRebuild.apply(self.core_shapes, compute, weakref.ref(self), *params)
            self._stamps = ((self.passes.count, compute), [(p.data_ptr(), p._version) for p in params], index)
            self._served = set()
        self._served.add(index)
        return self._weights[index]


def _no_group() -> None:
    """The group reference of a rebuild that owns no group's matrices (it releases nothing)."""
    return None


class _GroupRebuild(torch.autograd.Function):
    """The dense W of every layer of a group from their packed cores: ``(W_0, ..., W_{G-1})``.

    Forward: one stack of the packed cores, then :func:`tensornet._linear.kernels.rebuild` with the layers
    as a leading batch dimension (batched GEMMs). Backward: the layers' dW stacked, the batched core
    gradients (:func:`~tensornet._linear.kernels.rebuild_grads`, reusing the halves), one gradient per
    layer; then the group's matrices are released. Saves the stacked cores and the halves (small).
    """

    @staticmethod
    def forward(ctx: Any, shapes: K.CoreShapes, compute: Any, group: Any, *params: Any) -> Any:
        stacked = torch.stack(params)  # (G, P)
        if stacked.dtype != compute:
            stacked = stacked.to(compute)
        recipe = K.rebuild_recipe(shapes, (len(params),))
        weights, parts = K.rebuild(K.unpack(stacked, shapes), recipe, K.torch_ops(), parts=True)
        ctx.shapes, ctx.group, ctx.dtype = shapes, group, params[0].dtype
        # an unused layer's W gets None (not zeros) in backward: its cores get no gradient
        ctx.set_materialize_grads(False)
        ctx.autocast = autocast_dtype(params[0].device.type)
        ctx.save_for_backward(stacked, *(parts or ()), *params)
        ctx.count = len(params)
        return weights.unbind(0)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # type: ignore[override]
        saved = ctx.saved_tensors
        stacked, parts, params = saved[0], saved[1 : len(saved) - ctx.count], saved[len(saved) - ctx.count :]
        # layers of the group not used in this step get no gradient, as on their own
        unused = [g is None for g in grads]
        if all(unused):
            return (None,) * (3 + ctx.count)
        if any(unused):
            used = next(g for g in grads if g is not None)
            grads = tuple(torch.zeros_like(used) if g is None else g for g in grads)
        if torch.is_grad_enabled():  # create_graph=True: the gradients will be differentiated
            graphed = _differentiable_grads(ctx, params, stacked.dtype, grads)
            return (None, None, None, *(None if u else g for g, u in zip(graphed, unused)))
        with _forward_autocast(ctx.autocast, stacked.device.type):
            grad_w = torch.stack(grads)  # (G, M, N)
            recipe = K.rebuild_recipe(ctx.shapes, (ctx.count,))
            core_grads = K.rebuild_grads(
                K.unpack(stacked, ctx.shapes), grad_w, recipe, K.torch_ops(), parts or None
            )
            flat = torch.cat([g.reshape(ctx.count, -1) for g in core_grads], dim=1)  # (G, P)
        if flat.dtype != ctx.dtype:
            flat = flat.to(ctx.dtype)
        group = ctx.group()
        if group is not None:  # every layer's W has been used: free them
            group.release()
        return (None, None, None, *(None if u else g for g, u in zip(flat.unbind(0), unused)))


def _differentiable_grads(ctx: Any, params: Any, dtype: Any, grads: Any) -> tuple[Any, ...]:
    """The group's core gradients as a graph autograd can differentiate (``create_graph=True``)."""
    with torch.enable_grad():
        again = torch.stack(params).to(dtype)
        recipe = K.rebuild_recipe(ctx.shapes, (ctx.count,))
        weights = K.rebuild(K.unpack(again, ctx.shapes), recipe, K.torch_ops())
        return tuple(torch.autograd.grad(weights.unbind(0), params, grads, create_graph=True))


def _forward_autocast(dtype: Any, device_type: str) -> Any:
    """A context restoring the forward's autocast state (``dtype`` None: autocast was off)."""
    if dtype is not None:
        return torch.autocast(device_type, dtype=dtype)
    if autocast_dtype(device_type) is not None:
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _detach(model: nn.Module) -> list[TTMLinear]:
    """Undo :func:`materialize` on ``model``; its TTM layers, each once."""
    layers = list({id(m): m for m in model.modules() if isinstance(m, TTMLinear)}.values())
    for layer in layers:
        layer.__dict__.pop("_weight_group", None)
    handle = model.__dict__.pop("_tensornet_materialize", None)
    if handle is not None:
        handle.remove()
    return layers


def materialize(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Rebuild the dense weights of ``model``'s :class:`TTMLinear` layers group-wise in training.

    Parameters
    ----------
    model : nn.Module
    enabled : bool
        False undoes it.

    Returns
    -------
    nn.Module
        ``model`` itself.

    Raises
    ------
    TypeError
        ``model`` not a module, ``enabled`` not a bool.

    Notes
    -----
    Layers with equal core shapes, dtype and device form a group (found now; call again after adding
    layers). While training (gradients on, at token counts where the group's batched rebuild, its launches
    shared by the group, costs no more than the layer's own path) the first layer call of a step rebuilds W
    for the whole group in one batched pass, and every layer runs ``F.linear`` on its W; autograd forms all
    the groups' core gradients in one batched pass too. Small batches of large layers, ``torch.no_grad()``,
    ``torch.compile`` and ``torch.func`` transforms keep the per-layer path. Results equal the per-layer
    path's (the same products, batched). Models from :func:`tensornet.nn.tensorize` and
    ``tensornet.gpt2.tensorize`` have it on.

    Memory: a group holds its rebuilt W from the first layer call of a step until the backward has used
    it: at most the dense model's weight bytes (half under bf16 autocast), where the per-layer path saves
    only each layer's input and cores. A forward pass under gradients that is never followed by a backward
    keeps them until the next step (``tensornet.nn.release_weights(model)`` frees them).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"materialize: expected an nn.Module, got {type(model).__name__}")
    _checks.check_flag("materialize", "enabled", enabled)
    layers = _detach(model)
    if not enabled:
        return model
    passes = PassCounter()
    model.__dict__["_tensornet_materialize"] = model.register_forward_pre_hook(passes)
    groups: dict[Any, list[TTMLinear]] = {}
    for layer in layers:
        packed = layer.packed_cores
        groups.setdefault((layer.core_shapes, packed.dtype, packed.device), []).append(layer)
    for members in groups.values():
        group = WeightGroup(members, passes)
        for index, layer in enumerate(members):
            layer.__dict__["_weight_group"] = (group, index)
    return model


def release_weights(model: nn.Module) -> None:
    """Free the dense weights :func:`materialize`'s groups hold.

    E.g. after a forward pass under gradients that will not be followed by a backward.
    """
    for module in model.modules():
        entry = module.__dict__.get("_weight_group")
        if entry is not None:
            entry[0].release()
