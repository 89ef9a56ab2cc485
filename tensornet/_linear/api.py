"""``tensornet.linear`` and the kernel entries shared by the autograd Function and ``tensornet.adjoint``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Any

from .. import _backend as B
from .. import _checks
from .._backend import Array
from . import kernels as K
from . import plan as P
from .strategies import BACKWARD, FORWARD

__all__ = ["linear", "linear_backward", "linear_forward"]


def linear_forward(
    x2d: Array, cores: Sequence[Array], strategy: str, path: Any = None, *, ops: Any = None
) -> Any:
    """``x2d @ W.T`` for a ``(B, N)`` array by ``strategy`` ('rebuild', 'sweep' or 'einsum' with ``path``)."""
    if strategy not in FORWARD:
        raise ValueError(f"linear: unknown forward strategy {strategy!r}; use one of {sorted(FORWARD)}")
    return FORWARD[strategy].forward(x2d, cores, ops or K.array_ops(x2d, *cores), path)


def linear_backward(
    x2d: Array,
    cores: Sequence[Array],
    grad_y: Array,
    strategy: str,
    *,
    need_x: bool = True,
    need_cores: bool = True,
    path: Any = None,
    ops: Any = None,
) -> tuple[Any, list[Any] | None]:
    """``(grad_x, grad_cores)`` of ``y = x2d @ W.T`` for the cotangent ``grad_y`` (B, M).

    By ``strategy`` ('dense', 'sweep' or 'einsum'); unneeded gradients are None.
    """
    if strategy not in BACKWARD:
        raise ValueError(f"linear: unknown backward strategy {strategy!r}; use one of {sorted(BACKWARD)}")
    ops = ops or K.array_ops(x2d, grad_y, *cores)
    return BACKWARD[strategy].backward(x2d, cores, grad_y, ops, path, need_x=need_x, need_cores=need_cores)


def _is_torch(x: Array) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "requires_grad")


def _check_shapes(x: Array, shape: tuple[int, int], bias: Array) -> None:
    out_features, in_features = shape
    if x.ndim < 1 or int(x.shape[-1]) != in_features:
        raise ValueError(
            f"linear: x has shape {tuple(x.shape)} but W has shape (M, N) = {shape}; "
            f"the last dimension of x must be N = {in_features}"
        )
    if bias is not None and (bias.ndim != 1 or int(bias.shape[0]) != out_features):
        raise ValueError(f"linear: bias has shape {tuple(bias.shape)}, expected ({out_features},)")


def linear(x: Array, cores: Sequence[Array], bias: Array = None, *, save_weight: bool = False) -> Any:
    """``x @ W.T (+ bias)`` for the TTM cores of W (:func:`tensornet.linear` checks W itself).

    It validates ``x`` and ``bias`` against the cores and dispatches to the torch binding or runs the planned
    forward.
    """
    _checks.check_flag("linear", "save_weight", save_weight)
    shape = (K.rows_of(cores), K.cols_of(cores))
    if _is_torch(x):
        # checked without array_api_compat so that torch.compile traces this function cleanly
        if not _is_torch(cores[0]):
            raise TypeError("linear: x is a torch tensor but W has numpy cores; convert W with W.to('torch')")
        _check_shapes(x, shape, bias)
        if bias is not None and not _is_torch(bias):
            raise TypeError(f"linear: bias must be a torch tensor like x, got {type(bias).__name__}")
        if x.device != cores[0].device:
            raise ValueError(f"linear: x is on {x.device} but W is on {cores[0].device}; move one with .to()")
        # sys.modules first: torch.compile traces a dict lookup but not import_module
        binding = sys.modules.get("tensornet._linear.autograd") or importlib.import_module(
            "tensornet._linear.autograd"
        )
        return binding.linear_torch(x, cores, bias, save_weight=save_weight)
    if not B.is_array(x):
        raise TypeError(f"linear: x must be an array, got {type(x).__name__}")
    backend = B.backend_name(x)
    if backend != B.backend_name(cores[0]):
        raise TypeError(
            f"linear: x is a {backend} array but W has {B.backend_name(cores[0])} cores; use one backend"
        )
    if bias is not None and (not B.is_array(bias) or B.backend_name(bias) != backend):
        raise TypeError(f"linear: bias must be a {backend} array like x, got {type(bias).__name__}")
    _check_shapes(x, shape, bias)
    if x.dtype != cores[0].dtype or (bias is not None and bias.dtype != cores[0].dtype):
        raise TypeError(f"linear: x is {x.dtype} but W is {cores[0].dtype}; use one dtype (bias too)")
    xp = B.namespace(x, *cores)
    lead = tuple(int(s) for s in x.shape[:-1])
    x2d = xp.reshape(x, (-1, shape[1]))
    if int(x2d.shape[0]) == 0:
        return xp.zeros((*lead, shape[0]), dtype=x.dtype) + (0 if bias is None else bias)
    plan = P.planned(x2d, cores, backend)
    y = xp.reshape(linear_forward(x2d, cores, plan.forward.strategy, plan.forward.path), (*lead, shape[0]))
    return y if bias is None else y + bias
