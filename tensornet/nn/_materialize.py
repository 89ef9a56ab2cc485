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
from tensornet._linear import binding

from ._linear import TTMLinear

__all__ = ["materialize"]


# forward passes of every materialized model, counted together: a layer shared by two models (or called
# outside its model) sees the passes of all of them
_PASSES = [0]


def passes() -> int:
    """The number of forward passes of materialized models so far (all models together)."""
    return _PASSES[0]


class PassCounter:
    """Counts forward passes of the models :func:`materialize` was applied to (a forward pre-hook).

    A group rebuilds its weights at its first call in a pass. Reusing them across passes would be correct
    too (a rebuild can be backpropagated any number of times, and in-place changes of the cores are seen
    by their version counters), but a pass bounds how long they are held and which writes through
    ``.data`` (that bypass the version counters) can go unseen. The count is one for all models (a
    stateless hook: copies and pickles of a model carry nothing of it).
    """

    def __call__(self, module: nn.Module, args: Any) -> None:
        # compiled, the groups are not used (the per-layer path runs): counting there would only make dynamo
        # guard on the count and recompile every pass. Inside a backward the pass is activation checkpointing
        # recomputing one already counted.
        if not torch.compiler.is_compiling() and torch._C._current_graph_task_id() == -1:
            _PASSES[0] += 1


class WeightGroup:
    """TT layers with equal core shapes whose dense weights are rebuilt together.

    ``weight(index, x)`` gives layer ``index``'s W for the input ``x``: from the group's batched rebuild
    (made at the first call after the cores changed or a backward used the previous one), or None where the
    per-layer path is the better one (no gradient needed, under ``torch.compile`` or a ``torch.func``
    transform, the layers' cores on different devices or dtypes, or token counts where the plan's factorised
    path costs less than the group's share of a rebuild:
    :func:`~tensornet._linear.binding.rebuilds_in_group`).
    """

    def __init__(self, layers: Sequence[TTMLinear]) -> None:
        self.layers = list(layers)
        self.core_shapes: binding.CoreShapes = layers[0].core_shapes
        self._stamps: Any = None  # ((pass, compute dtype), (data_ptr, version) per layer, the building layer)
        self._weights: tuple[Any, ...] = ()
        self._served: set[int] = set()  # the layers given the matrices in this pass
        self._build = 0  # which rebuild ``_weights`` came from (a backward releases only its own)
        for index, layer in enumerate(self.layers):
            layer.__dict__["_weight_group"] = (self, index)
            layer._choose_weight_source()

    def __getstate__(self) -> dict[str, Any]:  # a copy or pickle carries the grouping, not the matrices
        return {**self.__dict__, "_stamps": None, "_weights": (), "_served": set()}

    def release(self, build: int | None = None) -> None:
        """Drop the rebuilt matrices (done automatically once a backward pass has used them).

        ``build``: only if they are those of that rebuild (a later one may have replaced them).
        """
        if build is None or build == getattr(self, "_build", 0):
            self._stamps, self._weights, self._served = None, (), set()

    def remove(self, layer: TTMLinear) -> None:
        """Take ``layer`` out of the group (the others keep theirs, renumbered)."""
        self.layers = [m for m in self.layers if m is not layer]
        self.release()
        for index, member in enumerate(self.layers):
            member.__dict__["_weight_group"] = (self, index)
        if layer.__dict__.get("_weight_group", (None,))[0] is self:
            del layer.__dict__["_weight_group"]
            layer._choose_weight_source()  # not left with a source that names this group

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
        compute = binding.compute_dtype(packed.dtype, x.device.type)
        tokens = x.numel() // max(layer.in_features, 1)
        if not binding.rebuilds_in_group(self.core_shapes, tokens, compute, packed.device, len(self.layers)):
            return None  # decoding-sized calls of large layers: the factorised per-layer path
        # valid while this pass, the compute dtype and this layer's cores (storage, in-place version) are
        # those of the rebuild: any layer whose cores changed notices it when called
        stamps = self._stamps
        valid = (
            stamps is not None
            and stamps[0] == (_PASSES[0], compute)
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
                return _GroupRebuild.apply(self.core_shapes, compute, None, *params)[index]
            return self._weights[index]
        if not valid:
            params = [m.packed_cores for m in self.layers]
            if any(p.device != packed.device or p.dtype != packed.dtype for p in params):
                return None
            # getattr: a group pickled by an older tensornet has no count
            self._build = getattr(self, "_build", 0) + 1
            owner = (weakref.ref(self), self._build)
            self._weights = _GroupRebuild.apply(self.core_shapes, compute, owner, *params)
            self._stamps = ((_PASSES[0], compute), [(p.data_ptr(), p._version) for p in params], index)
            self._served = set()
        self._served.add(index)
        return self._weights[index]


class _GroupRebuild(torch.autograd.Function):
    """The dense W of every layer of a group from their packed cores: ``(W_0, ..., W_{G-1})``.

    Forward: one stack of the packed cores, then :func:`tensornet._linear.binding.rebuild_stacked` with the
    layers as a leading batch dimension (batched GEMMs). Backward: the layers' dW stacked, the batched core
    gradients (:func:`~tensornet._linear.binding.rebuild_stacked_grads`, reusing the halves), one gradient per
    layer; then the group's matrices are released. Keeps the stacked cores and the halves (small).

    The matrices stand in for the layers' parameters, which any number of graphs may use, each
    backpropagated on its own (a layer called twice, or in two models, and each loss's ``backward()``),
    so this node must serve any number of backward passes: what it keeps is held on ``ctx`` (not
    ``save_for_backward``, which the first backward frees) until the node itself is freed with the last
    graph that uses it. Its gradients are those at the forward's values (the stacked copy); only the
    double-backward pass reads the parameters again, and it refuses ones changed in place since.
    """

    @staticmethod
    def forward(ctx: Any, shapes: binding.CoreShapes, compute: Any, group: Any, *params: Any) -> Any:
        stacked = torch.stack(params)  # (G, P)
        if stacked.dtype != compute:
            stacked = stacked.to(compute)
        weights, parts = binding.rebuild_stacked(stacked, shapes, parts=True)
        ctx.shapes, ctx.group, ctx.dtype = shapes, group, params[0].dtype
        # an unused layer's W gets None (not zeros) in backward: its cores get no gradient
        ctx.set_materialize_grads(False)
        ctx.autocast = binding.autocast_dtype(params[0].device.type)
        # made here, never handed out: nothing can change them in place
        ctx.kept = (stacked, tuple(parts or ()), params, tuple(p._version for p in params))
        ctx.count = len(params)
        return weights.unbind(0)

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:  # type: ignore[override]
        stacked, parts, params, versions = ctx.kept
        # layers of the group not used in this step get no gradient, as on their own
        unused = [g is None for g in grads]
        if all(unused):
            return (None,) * (3 + ctx.count)
        if any(unused):
            used = next(g for g in grads if g is not None)
            grads = tuple(torch.zeros_like(used) if g is None else g for g in grads)
        if torch.is_grad_enabled():  # create_graph=True: the gradients will be differentiated
            graphed = _differentiable_grads(ctx, params, versions, stacked.dtype, grads)
            return (None, None, None, *(None if u else g for g, u in zip(graphed, unused)))
        with _forward_autocast(ctx.autocast, stacked.device.type):
            grad_w = torch.stack(grads)  # (G, M, N)
            flat = binding.rebuild_stacked_grads(stacked, ctx.shapes, grad_w, parts or None)  # (G, P)
        if flat.dtype != ctx.dtype:
            flat = flat.to(ctx.dtype)
        group = None if ctx.group is None else ctx.group[0]()
        if group is not None:  # every layer's W has been used: free them (if still this rebuild's)
            group.release(ctx.group[1])
        return (None, None, None, *(None if u else g for g, u in zip(flat.unbind(0), unused)))


def _differentiable_grads(ctx: Any, params: Any, versions: Any, dtype: Any, grads: Any) -> tuple[Any, ...]:
    """The group's core gradients as a graph autograd can differentiate (``create_graph=True``).

    They are formed from the parameters themselves, so parameters changed in place since the forward
    (an optimizer step) are refused, as autograd refuses tensors it saved.
    """
    for k, (param, version) in enumerate(zip(params, versions)):
        if param._version != version:
            raise RuntimeError(
                f"materialize: the packed cores of layer {k} of a group were modified in place (an optimizer "
                f"step?) after the forward pass that this double backward (create_graph=True) goes through; "
                f"run the forward again after changing the parameters"
            )
    with torch.enable_grad():
        weights = binding.rebuild_stacked(torch.stack(params).to(dtype), ctx.shapes)
        return tuple(torch.autograd.grad(weights.unbind(0), params, grads, create_graph=True))


def _forward_autocast(dtype: Any, device_type: str) -> Any:
    """A context restoring the forward's autocast state (``dtype`` None: autocast was off)."""
    if dtype is not None:
        return torch.autocast(device_type, dtype=dtype)
    if binding.autocast_dtype(device_type) is not None:
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _detach(model: nn.Module) -> list[TTMLinear]:
    """Undo :func:`materialize` on ``model`` and its submodules; its TTM layers, each once.

    A layer is taken out of its group wherever that group came from (another model sharing the layer
    keeps its other layers grouped).
    """
    layers = list({id(m): m for m in model.modules() if isinstance(m, TTMLinear)}.values())
    for layer in layers:
        entry = layer.__dict__.pop("_weight_group", None)
        if entry is not None:
            entry[0].remove(layer)
            layer._choose_weight_source()
    for module in model.modules():
        handle = module.__dict__.pop("_tensornet_materialize", None)
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

    Every call pattern ``nn.Linear`` accepts works, with the per-layer path's values and gradients: a layer
    called several times in a step, outside its model or in two materialized models, each loss
    backpropagated on its own, ``retain_graph``, gradients of some parameters only, double backward. A
    rebuilt W stands in for the parameters, so its batched rebuild can be backpropagated any number of
    times. A layer belongs to one group, that of the latest ``materialize`` of a model holding it (other
    models sharing it use it too; their other layers keep their groups); materializing a model replaces
    the materialization of its submodules. A shallow copy of a layer (``nn.DataParallel``'s replicas)
    takes the per-layer path. The rebuilt W is reused until the next forward pass of any materialized
    model, a backward through it, or an in-place change of a layer's cores (their version counters):
    writes through ``.data`` bypass those counters, so make them between passes or call
    :func:`release_weights` (optimizers write in place and are seen).

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
    model.__dict__["_tensornet_materialize"] = model.register_forward_pre_hook(PassCounter())
    regroup(layers)
    return model


def regroup(layers: Sequence[TTMLinear]) -> None:
    """Put ``layers`` into new groups, one per core shapes, dtype and device; their previous groups are dropped.

    Each member then points at its new group and uses it.
    """
    groups: dict[Any, list[TTMLinear]] = {}
    for layer in layers:
        packed = layer.packed_cores
        groups.setdefault((layer.core_shapes, packed.dtype, packed.device), []).append(layer)
    for members in groups.values():
        WeightGroup(members)


def release_weights(model: nn.Module) -> None:
    """Free the dense weights :func:`materialize`'s groups hold.

    E.g. after a forward pass under gradients that will not be followed by a backward.
    """
    for module in model.modules():
        entry = module.__dict__.get("_weight_group")
        if entry is not None:
            entry[0].release()
