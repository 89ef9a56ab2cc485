"""The pieces :func:`check_vjp` and :func:`check_jvp` are built from: blocks, directions and probes.

A *block* is one array that a derivative check perturbs: a core of a train argument, or a dense array
argument. A *direction* gives some blocks a tangent. The *probe* ``w`` turns the function's output ``y`` (a
scalar, a dense array, or a train) into the real number ``phi(y) = Re <w, y>``, computed in TT form for a
train, so every comparison is between two real numbers and no dense tensor is formed.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _backend as B
from .. import ops as _ops
from .._einsum import einsum
from ..random import random_tt, random_ttm
from ..tt import TT, TTM

Direction = dict[int, Any]
"""Tangents of some blocks, by block number (arrays of the blocks' backend, dtype and shape)."""


def _is_train(x: Any) -> bool:
    return isinstance(x, (TT, TTM))


def inexact(x: Any) -> bool:
    """A real or complex floating-point array."""
    return B.is_array(x) and (B.is_floating(x) or B.is_complex(x))


def _is_float_array(x: Any) -> bool:
    return inexact(x) and not isinstance(x, np.generic)


def host(x: Any) -> np.ndarray:
    """``x`` as a numpy array on the host (detached)."""
    return np.asarray(B.to_backend(x, "numpy")) if B.is_array(x) else np.asarray(x)


def norm_of(x: Any) -> float:
    return float(np.linalg.norm(host(x).ravel()))


def as_complex(x: Any) -> complex:
    """A scalar (Python number, 0-d numpy or torch array) as a Python complex."""
    return complex(host(x).reshape(()).item())


@dataclass(frozen=True)
class Block:
    """One perturbed array: core ``core`` of the train ``args[arg]``, or the array ``args[arg]`` (core None)."""

    arg: int
    core: int | None
    value: Any
    name: str

    @property
    def complex(self) -> bool:
        return B.is_complex(self.value)


def argument_names(f: Callable[..., Any], count: int) -> list[str]:
    """The names of ``f``'s first ``count`` positional parameters where its signature tells them."""
    try:
        parameters = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    names = []
    for i in range(count):
        if i < len(parameters) and parameters[i].kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            names.append(f"argument {i} ({parameters[i].name!r})")
        else:
            names.append(f"argument {i}")
    return names


def blocks_of(fn: str, f: Callable[..., Any], args: Sequence[Any], wrt: Any) -> list[Block]:
    """The blocks of the arguments in ``wrt`` (default: every train and floating-point array)."""
    if wrt is None:
        chosen = [i for i, a in enumerate(args) if _is_train(a) or _is_float_array(a)]
    else:
        given = [wrt] if isinstance(wrt, numbers.Integral) and not isinstance(wrt, bool) else list(wrt)
        chosen = []
        for i in given:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= int(i) < len(args):
                raise ValueError(
                    f"{fn}: wrt holds {i!r}, not the position of one of the {len(args)} arguments"
                )
            if not (_is_train(args[int(i)]) or _is_float_array(args[int(i)])):
                raise TypeError(
                    f"{fn}: argument {i} is a {type(args[int(i)]).__name__}; only trains and floating-point "
                    "arrays can be differentiated (leave it out of wrt)"
                )
            chosen.append(int(i))
    if not chosen:
        raise ValueError(f"{fn}: no argument to differentiate; give a TT, a TTM or a floating-point array")
    names = argument_names(f, len(args))
    blocks = []
    for i in chosen:
        arg = args[i]
        if _is_train(arg):
            for k, core in enumerate(arg.cores):
                blocks.append(Block(i, k, B.detach(core), f"core {k} of {names[i]}"))
        else:
            blocks.append(Block(i, None, B.detach(arg), names[i]))
    backends = {B.backend_name(b.value) for b in blocks}
    if len(backends) > 1:
        raise TypeError(
            f"{fn}: the arguments to differentiate mix backends ({', '.join(sorted(backends))}); "
            "convert them to one with .to(...)"
        )
    return blocks


def random_like(value: Any, rng: np.random.Generator) -> Any:
    """Standard normal entries shaped like ``value`` (circular complex if it is complex), on its backend."""
    shape = tuple(int(s) for s in value.shape)
    out = rng.standard_normal(shape)
    if B.is_complex(value):
        out = (out + 1j * rng.standard_normal(shape)) / math.sqrt(2.0)
    return B.asarray_like(out, value)


def random_direction(blocks: Sequence[Block], rng: np.random.Generator) -> Direction:
    """One random tangent per block, as long as the block itself (or of norm 1 for a zero block)."""
    direction = {}
    for j, block in enumerate(blocks):
        tangent = random_like(block.value, rng)
        size = norm_of(block.value)
        direction[j] = tangent * ((size if size > 0 else 1.0) / max(norm_of(tangent), 1e-300))
    return direction


def with_values(args: Sequence[Any], blocks: Sequence[Block], values: Direction) -> list[Any]:
    """The arguments with the blocks in ``values`` replaced by those arrays (trains rebuilt around them)."""
    out = list(args)
    cores = {i: list(a.cores) for i, a in enumerate(args) if _is_train(a)}
    for j, value in values.items():
        block = blocks[j]
        if block.core is None:
            out[block.arg] = value
        else:
            cores[block.arg][block.core] = value
    for i in {blocks[j].arg for j in values}:
        if i in cores:
            out[i] = type(args[i])(cores[i])
    return out


def shifted(args: Sequence[Any], blocks: Sequence[Block], direction: Direction, h: float) -> list[Any]:
    """The arguments with every block in ``direction`` moved by ``h`` times its tangent."""
    return with_values(args, blocks, {j: blocks[j].value + h * t for j, t in direction.items()})


# --- the probe of the output ------------------------------------------------------------------------------
class Probe:
    """``phi(y) = Re <w, y>`` for a random ``w`` shaped like the output ``y0`` (scalar, array or train)."""

    def __init__(self, fn: str, y0: Any, rng: np.random.Generator) -> None:
        self.complex = False
        if _is_train(y0):
            self.kind = "train"
            self.complex = B.is_complex(y0.cores[0])
            if isinstance(y0, TTM):
                self.w: Any = random_ttm(y0.row_shape, y0.col_shape, 2, seed=rng, like=y0)
            else:
                self.w = random_tt(y0.shape, 2, seed=rng, like=y0)
        elif B.is_array(y0) and len(tuple(y0.shape)) > 0:
            if not inexact(y0):
                raise TypeError(f"{fn}: f returned an array of dtype {y0.dtype}; it must be floating-point")
            self.kind = "array"
            self.complex = B.is_complex(y0)
            self.w = random_like(B.detach(y0), rng)
        elif isinstance(y0, (int, float, complex, np.number)) or inexact(y0):
            self.kind = "scalar"
            self.complex = isinstance(y0, complex) or (
                not isinstance(y0, (int, float)) and np.iscomplexobj(host(y0))
            )
            value = rng.standard_normal(2)
            self.w = complex(value[0], value[1]) if self.complex else float(value[0])
        else:
            raise TypeError(
                f"{fn}: f returned a {type(y0).__name__}; it must return a scalar, an array, a TT or a TTM "
                "(wrap f to return one of them)"
            )

    def phi(self, y: Any) -> float:
        """``Re <w, y>`` as a Python float."""
        if self.kind == "train":
            return as_complex(_ops.dot(self.w, y)).real
        if self.kind == "array":
            return float(np.real(np.vdot(host(self.w).ravel(), host(y).ravel())))
        return (self.w.conjugate() * as_complex(y)).real

    def loss(self, y: Any) -> Any:
        """``Re <w, y>`` on ``y``'s own backend, for autograd."""
        if self.kind == "train":
            value = _ops.dot(self.w, y)
        elif self.kind == "array":
            xp = B.namespace(y)
            value = xp.sum(B.conj(self.w) * y)
        else:
            value = self.w.conjugate() * y  # a Python number: y's backend does the product
        return value.real if B.is_array(value) and B.is_complex(value) else value

    def size(self, y: Any) -> float:
        """``||w|| ||y||``: the scale that rounding errors in evaluating ``phi(y)`` are relative to."""
        if self.kind == "train":
            return float(_ops.norm(self.w)) * float(B.to_float(_ops.norm(y)))
        return norm_of(self.w) * norm_of(y)

    def cotangent_cores(self, y: Any) -> list[Any]:
        """The gradients of ``Re <w, y>`` with respect to the cores of the train ``y`` (torch's convention)."""
        wc, yc = self.w._tt_layout(), y._tt_layout()
        conj_y = [B.conj(c) for c in yc]
        d = len(yc)
        xp = B.namespace(*yc)
        one = xp.ones((1, 1), dtype=yc[0].dtype, device=B.device(yc[0]))
        left = [one]
        for k in range(d - 1):
            left.append(einsum("ab,anc,bnd->cd", left[k], conj_y[k], wc[k]))
        right = [one] * (d + 1)
        for k in range(d - 1, 0, -1):
            right[k] = einsum("anc,bnd,cd->ab", conj_y[k], wc[k], right[k + 1])
        # Re <w, y> = Re sum conj(w) y: the gradient of a core (y holomorphic in it) is conj(dy/dcore)^T w,
        # the environments of conj(y) around core k of w
        grads = [einsum("ab,bnd,cd->anc", left[k], wc[k], right[k + 1]) for k in range(d)]
        return [xp.reshape(g, tuple(c.shape)) for g, c in zip(grads, y.cores)]


def torch_module() -> Any:
    return importlib.import_module("torch")
