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

__all__ = ["check_operands", "linear", "linear_backward", "linear_forward", "operand_mismatch"]


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


def operand_mismatch(values: dict[str, Any], reference: str, *, on: bool = False) -> str:
    """Which operands differ from ``reference`` in a property (a dtype, or with ``on`` a device).

    ``values`` maps operand names to the property: e.g. "bias is int64 but x and W are float64" or
    "x is on cuda:0 but W and bias are on cpu".
    """
    prep = "on " if on else ""
    groups: dict[str, list[str]] = {}
    for name, value in values.items():
        groups.setdefault(str(value), []).append(name)
    wanted = str(values[reference])
    parts = [_names_are(names, f"{prep}{value}") for value, names in groups.items() if value != wanted]
    return f"{' and '.join(parts)} but {_names_are(groups[wanted], f'{prep}{wanted}')}"


def _names_are(names: list[str], what: str) -> str:
    if len(names) == 1:
        return f"{names[0]} is {what}"
    return f"{', '.join(names[:-1])} and {names[-1]} are {what}"


def check_operands(fn: str, operands: dict[str, Any], reference: str = "W") -> None:
    """Raise unless the arrays ``operands`` share ``reference``'s backend, device and dtype.

    ``operands`` maps names to arrays (None: an absent operand, e.g. no bias). ``TypeError`` for a backend or dtype, ``ValueError`` for a device, naming the operands that differ.
    """
    given = {name: value for name, value in operands.items() if value is not None}
    for name, value in given.items():
        if not B.is_array(value):
            raise TypeError(f"{fn}: {name} must be an array, got {type(value).__name__}")
    backends = {name: B.backend_name(value) for name, value in given.items()}
    if len(set(backends.values())) > 1:
        raise TypeError(
            f"{fn}: {operand_mismatch(backends, reference)} arrays; use one backend (W.to('torch') or W.to('numpy') converts W)"
        )
    devices = {name: str(B.device(value)) for name, value in given.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"{fn}: {operand_mismatch(devices, reference, on=True)}; move them to one device")
    dtypes = {name: value.dtype for name, value in given.items()}
    if len(set(map(str, dtypes.values()))) > 1:
        raise TypeError(f"{fn}: {operand_mismatch(dtypes, reference)}; use one dtype")


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
        if x.device != cores[0].device or (bias is not None and bias.device != cores[0].device):
            devices = {"x": x.device, "W": cores[0].device} | ({} if bias is None else {"bias": bias.device})
            raise ValueError(
                f"linear: {operand_mismatch(devices, 'W', on=True)}; move them to one device with .to()"
            )
        # sys.modules first: torch.compile traces a dict lookup but not import_module
        binding = sys.modules.get("tensornet._linear.binding") or importlib.import_module(
            "tensornet._linear.binding"
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
    check_operands("linear", {"x": x, "W": cores[0], "bias": bias})
    xp = B.namespace(x, *cores)
    lead = tuple(int(s) for s in x.shape[:-1])
    x2d = xp.reshape(x, (-1, shape[1]))
    if int(x2d.shape[0]) == 0:
        return xp.zeros((*lead, shape[0]), dtype=x.dtype) + (0 if bias is None else bias)
    plan = P.planned(x2d, cores, backend)
    y = xp.reshape(linear_forward(x2d, cores, plan.forward.strategy, plan.forward.path), (*lead, shape[0]))
    return y if bias is None else y + bias
