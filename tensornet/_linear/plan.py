"""Planning ``linear``: which strategy computes ``x (B, N) @ W.T`` and its VJP, per shape, in one cache.

Each strategy (:mod:`.strategies`) prices itself with the cost model; the cheapest forward and the
cheapest backward are chosen independently. Plans are cached by (core shapes, dtype, backend, device,
token bucket); the bucket rounds the number of rows up to a power of two, so generation with a growing
length does not re-plan every token. With :func:`autotune` on, the candidates are instead timed once per
bucket on the real arrays and the fastest is kept (like cuDNN's benchmark mode).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .._backend import Array
from .._einsum import CacheInfo, PlanCache
from . import kernels as K
from .cost import Candidate, Machine
from .strategies import BACKWARD, FORWARD, STRATEGIES

__all__ = ["CacheInfo", "LinearPlan", "autotune", "cache_clear", "cache_info", "plan_linear", "token_bucket"]

_PLANS = PlanCache()
_SETTINGS = {"autotune": os.environ.get("TENSORNET_AUTOTUNE", "0").lower() in ("1", "true", "yes", "on")}


@dataclass(frozen=True)
class LinearPlan:
    """How ``linear`` contracts ``x (B, N)`` with a TTM for one shape bucket, and why.

    ``forward`` / ``backward`` are the chosen candidates; ``forward_candidates`` /
    ``backward_candidates`` all that were compared. ``route`` is what the kernels are called with.
    ``repr`` prints the comparison.
    """

    core_shapes: K.CoreShapes
    tokens: int
    dtype: str
    device: str
    machine: Machine
    forward: Candidate
    backward: Candidate
    forward_candidates: tuple[Candidate, ...]
    backward_candidates: tuple[Candidate, ...]
    autotuned: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        """The weight's ``(out, in)`` shape."""
        return (math.prod(s[1] for s in self.core_shapes), math.prod(s[2] for s in self.core_shapes))

    @property
    def route(self) -> tuple[str, Any, str, Any]:
        """``(forward strategy, its path, backward strategy, its path)``."""
        return (self.forward.strategy, self.forward.path, self.backward.strategy, self.backward.path)

    def rebuilds_in_group(self, count: int) -> bool:
        """Whether ``count`` layers of these cores should rebuild W together in training at this bucket.

        A group (:func:`tensornet.nn.materialize`) runs the rebuild forward and the dense backward of every
        layer as batched kernels: the same work per layer, but each launch of the rebuild and of the core
        gradients is shared by the ``count`` layers (the three GEMMs with x stay per layer). Yes when that
        costs no more than this plan's own forward + backward (always where the plan rebuilds W anyway).
        """
        if self.forward.strategy == "rebuild":
            return True
        rebuild = next(c for c in self.forward_candidates if c.strategy == "rebuild")
        dense = next(c for c in self.backward_candidates if c.strategy == "dense")
        shared = (len(rebuild.steps) + len(dense.steps) - 3) * self.machine.launch * (1 - 1 / max(count, 1))
        return rebuild.seconds + dense.seconds - shared <= self.forward.seconds + self.backward.seconds

    def _why(self, chosen: Candidate, others: Sequence[Candidate]) -> str:
        rivals = [c for c in others if c is not chosen]
        basis = "measured" if self.autotuned else "modelled"
        parts = [
            f"{c.strategy} {c.seconds / chosen.seconds:.2f}x slower"
            + (f" despite {chosen.flops / max(c.flops, 1):.2f}x the FLOPs" if c.flops < chosen.flops else "")
            for c in rivals
        ]
        return f"{chosen.strategy} wins ({basis}): " + ", ".join(parts)

    def __repr__(self) -> str:
        rows, cols = self.shape
        lines = [
            f"LinearPlan: x ({self.tokens}, {cols}) @ W.T, W ({rows}, {cols}) from cores "
            f"{list(self.core_shapes)}",
            f"  {self.dtype} on {self.device}; tokens bucketed to {self.tokens}; "
            f"{'autotuned' if self.autotuned else 'cost model'} ({self.machine.name} roofline)",
            "forward candidates:",
            *(c.row() for c in self.forward_candidates),
            f"  -> {self._why(self.forward, self.forward_candidates)}",
            "backward candidates:",
            *(c.row() for c in self.backward_candidates),
            f"  -> {self._why(self.backward, self.backward_candidates)}",
            f"chosen forward steps ({self.forward.strategy}"
            + (f", path {list(self.forward.path)}" if self.forward.path else "")
            + "):",
            *(f"    {s.what}" for s in self.forward.steps),
        ]
        return "\n".join(lines)


def token_bucket(tokens: int) -> int:
    """``tokens`` rounded up to a power of two (at least 1): plans are made once per bucket."""
    return 1 << max(tokens - 1, 0).bit_length()


def _describe_dtype(dtype: Any) -> tuple[str, int]:
    text = str(dtype).replace("torch.", "")
    item = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}.get(text, 4)
    return text, item


def _shapes_of(cores: Sequence[Array]) -> K.CoreShapes:
    out = []
    for c in cores:
        shape = tuple(int(s) for s in (c if isinstance(c, tuple) else c.shape))
        if len(shape) != 4:
            raise ValueError(f"plan_linear: TTM cores are 4-D (r, m, n, r'), got a core of shape {shape}")
        out.append(shape)
    return tuple(out)  # type: ignore[return-value]


def _make(shapes: K.CoreShapes, bucket: int, dtype_text: str, item: int, device_text: str) -> LinearPlan:
    machine = Machine.for_device(device_text, item)
    forward = [s.forward_cost(machine, item, shapes, bucket) for s in STRATEGIES]
    backward = [s.backward_cost(machine, item, shapes, bucket) for s in STRATEGIES]
    return LinearPlan(
        shapes,
        bucket,
        dtype_text,
        device_text,
        machine,
        min(forward, key=lambda c: c.seconds),
        min(backward, key=lambda c: c.seconds),
        tuple(forward),
        tuple(backward),
    )


def lookup(shapes: K.CoreShapes, tokens: int, dtype: Any, device: Any, backend: str) -> LinearPlan:
    """The cached plan (made on a miss) for cores of ``shapes`` and ``tokens`` rows."""
    dtype_text, item = _describe_dtype(dtype)
    bucket = token_bucket(tokens)
    device_text = str(device)
    key = (shapes, dtype_text, backend, device_text, bucket)
    plan: LinearPlan = _PLANS.get(key, lambda: _make(shapes, bucket, dtype_text, item, device_text))
    return plan


def plan_linear(
    x_shape: Sequence[int],
    cores: Sequence[Array],
    *,
    dtype: Any = None,
    device: Any = "cpu",
    backend: str = "",
) -> LinearPlan:
    """The cached plan for ``linear`` on ``x`` of ``x_shape`` (``(..., N)``) and TTM ``cores``.

    ``cores`` are arrays or their shapes ``(r, m, n, r')``; ``dtype`` defaults to the cores'. The rows
    of ``x`` are bucketed (:func:`token_bucket`). Cost: one cost-model evaluation per new bucket.
    """
    shapes = _shapes_of(cores)
    if dtype is None:
        dtype = "float32" if isinstance(cores[0], tuple) else cores[0].dtype
    tokens = math.prod(int(s) for s in x_shape[:-1]) if len(x_shape) > 1 else 1
    return lookup(shapes, tokens, dtype, device, backend)


def planned(x2d: Array, cores: Sequence[Array], backend: str, *, dtype: Any = None) -> LinearPlan:
    """The plan for these arrays; with autotuning on, a plan not yet tuned is timed on them first."""
    shapes: Any = tuple(tuple(c.shape) for c in cores)
    plan = lookup(shapes, int(x2d.shape[0]), dtype or x2d.dtype, K.device_of(x2d), backend)
    if _SETTINGS["autotune"] and not plan.autotuned and int(x2d.shape[0]) > 0:
        plan = tune(plan, x2d, cores, backend)
    return plan


def autotune(enabled: bool | None = None) -> bool:
    """Turn timing-based choice of the ``linear`` path on or off; returns the previous setting.

    ``autotune()`` only reports it. Off by default; the environment variable
    ``TENSORNET_AUTOTUNE=1`` turns it on at import. Tuned plans are cached like model-based ones.
    """
    previous = _SETTINGS["autotune"]
    if enabled is not None:
        _SETTINGS["autotune"] = bool(enabled)
    return previous


def cache_info() -> CacheInfo:
    """Hit/miss counts of the plan cache (a miss is one planner invocation)."""
    return _PLANS.info()


def cache_clear() -> None:
    """Forget every plan and reset the counters (plans are rebuilt on next use)."""
    _PLANS.clear()


def _timed(fn: Any, sync: Any, repeat: int = 3) -> float:
    fn()
    sync()
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def tune(plan: LinearPlan, x2d: Array, cores: Sequence[Array], backend: str) -> LinearPlan:
    """``plan`` with its candidates timed on these arrays and the fastest chosen (cached as well)."""

    def sync() -> None:
        return None

    if backend == "torch":
        import torch

        x2d, cores = x2d.detach(), [c.detach() for c in cores]
        if x2d.device.type == "cuda":
            sync = torch.cuda.synchronize  # type: ignore[assignment]
    ops = K.array_ops(x2d, *cores)
    grad_y = FORWARD["rebuild"].forward(x2d, cores, ops)
    forward = [
        _timed(lambda c=c: FORWARD[c.strategy].forward(x2d, cores, ops, c.path), sync)
        for c in plan.forward_candidates
    ]
    backward = [
        _timed(lambda c=c: BACKWARD[c.strategy].backward(x2d, cores, grad_y, ops, c.path), sync)
        for c in plan.backward_candidates
    ]
    forward_c = tuple(replace(c, measured=t) for c, t in zip(plan.forward_candidates, forward))
    backward_c = tuple(replace(c, measured=t) for c, t in zip(plan.backward_candidates, backward))
    tuned = replace(
        plan,
        forward=min(forward_c, key=lambda c: c.seconds),
        backward=min(backward_c, key=lambda c: c.seconds),
        forward_candidates=forward_c,
        backward_candidates=backward_c,
        autotuned=True,
    )
    key = (plan.core_shapes, plan.dtype, backend, plan.device, plan.tokens)
    _PLANS.plans[key] = tuned
    return tuned
