"""Derivative checks of functions of trains: :func:`check_vjp` (and the machinery :func:`check_jvp` shares).

Both compare a directional derivative with central finite differences of ``phi(x) = Re <w, f(x)>`` for a
random probe ``w``: the VJP through the dot-product identity ``Re <w, J v> = Re <J^H w, v>``, the JVP
directly. Inner products of trains are taken in TT form, so no dense tensor is formed.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from .. import _backend as B
from .._backend import Array
from ..tt import TT, TTM
from . import _probe as P
from ._report import Comparison, DerivativeReport

__all__ = ["Checker", "check_vjp"]


def _unit_roundoff(arrays: Sequence[Any]) -> float:
    """The largest unit roundoff among the floating-point arrays (the least precise dtype)."""
    u = 2.0**-53
    for a in arrays:
        if P.inexact(a):
            u = max(u, float(np.finfo(np.dtype(B.real_dtype_name(a.dtype))).eps) / 2)
    return u


def _check_options(fn: str, rtol: Any, step: Any) -> None:
    for name, value in (("rtol", rtol), ("step", step)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 1:
            raise ValueError(f"{fn}: {name} must be a number in (0, 1) or None, got {value!r}")


def no_grad(blocks: Sequence[P.Block]) -> Any:
    if any(B.backend_name(b.value) == "torch" for b in blocks):
        return P.torch_module().no_grad()
    return contextlib.nullcontext()


def _inner(g: Any, v: Any) -> float:
    """``Re <g, v>`` (``g`` conjugated) on the host."""
    return float(np.real(np.vdot(P.host(g).ravel(), P.host(v).ravel())))


class Checker:
    """The shared machinery: the probe, finite differences along a direction, and the comparisons."""

    def __init__(
        self, fn: str, f: Callable[..., Any], args: Sequence[Any], wrt: Any, seed: Any, rtol: Any, step: Any
    ) -> None:
        if not callable(f):
            raise TypeError(f"{fn}: f must be callable, got {type(f).__name__}")
        _check_options(fn, rtol, step)
        self.fn, self.f, self.args = fn, f, list(args)
        self.blocks = P.blocks_of(fn, f, self.args, wrt)
        self.rng = np.random.default_rng(seed)
        with no_grad(self.blocks):
            self.y0 = f(*self.args)
        self.probe = P.Probe(fn, self.y0, self.rng)
        out = self.y0.cores if isinstance(self.y0, (TT, TTM)) else [self.y0]
        u = _unit_roundoff([b.value for b in self.blocks] + list(out))
        # fourth-order central differences: truncation ~ h^4, rounding ~ u / h, balanced at h ~ u^(1/5);
        # the comparisons are then good to about u^(4/5) of their scale, and rtol leaves room above that
        self.step = float(step) if step is not None else u**0.2
        self.rtol = float(rtol) if rtol is not None else 1000.0 * u**0.8
        self.direction = P.random_direction(self.blocks, self.rng)

    def finite_difference(self, direction: P.Direction, h: float) -> tuple[float, float]:
        """``d phi / dh`` at 0 along ``direction`` (4th order, step ``h``), and the scale of the evaluations."""
        values, size = [], 0.0
        with no_grad(self.blocks):
            for factor in (-2.0, -1.0, 1.0, 2.0):
                y = self.f(*P.shifted(self.args, self.blocks, direction, factor * h))
                values.append(self.probe.phi(y))
                size = max(size, self.probe.size(y))
        return (values[0] - 8.0 * values[1] + 8.0 * values[2] - values[3]) / (12.0 * h), size

    def derivative(self, direction: P.Direction) -> tuple[float, float]:
        """The derivative under test along ``direction`` and its Cauchy-Schwarz bound."""
        raise NotImplementedError

    def compare(self, what: str, direction: P.Direction) -> Comparison:
        """The derivative against finite differences, retried with steps 4 and 16 times smaller.

        A function whose higher derivatives are large along ``direction`` (near a crossing of eigenvalues,
        say) needs a smaller step than the default; an error in the derivative persists at every step.
        """
        value, bound = self.derivative(direction)
        for shrink in (1.0, 4.0, 16.0):
            fd, size = self.finite_difference(direction, self.step / shrink)
            result = Comparison(what, value, fd, self.rtol * (bound + shrink * size), self.step / shrink)
            if result.ok:
                break
        return result

    # --- the report ---------------------------------------------------------------------------------
    def run(self, mode: str) -> DerivativeReport:
        comparisons = [self.compare("all arguments at once", self.direction)]
        entry = ""
        if not comparisons[0].ok:
            # where it goes wrong: each core (or array) alone, then the entries of the worst one
            per_block = [self.compare(b.name, {j: self.direction[j]}) for j, b in enumerate(self.blocks)]
            comparisons.extend(per_block)
            ratios = [c.error / c.tolerance if c.tolerance > 0 else math.inf for c in per_block]
            worst = int(np.nanargmax(ratios)) if not all(math.isnan(r) for r in ratios) else 0
            entry = self.locate(worst, mode)
        function = getattr(self.f, "__qualname__", None) or type(self.f).__name__
        report = DerivativeReport(mode, function, tuple(comparisons), entry, self.rtol, self.step)
        if not report.ok:
            raise AssertionError(str(report))
        return report

    def _masked(self, j: int, flat: np.ndarray) -> P.Direction:
        tangent = self.direction[j]
        shape = tuple(int(s) for s in tangent.shape)
        mask = np.zeros(math.prod(shape))
        mask[flat] = 1.0
        return {j: tangent * B.asarray_like(mask.reshape(shape), tangent)}

    def locate(self, j: int, mode: str) -> str:
        """Halve the entries of block ``j`` towards the half that disagrees most, down to one entry."""
        block = self.blocks[j]
        shape = tuple(int(s) for s in block.value.shape)
        candidates = np.arange(int(np.prod(shape)))
        while len(candidates) > 1:
            halves = np.array_split(candidates, 2)
            ratios = []
            for half in halves:
                c = self.compare("", self._masked(j, half))
                ratios.append(c.error / c.tolerance if c.tolerance > 0 else math.inf)
            candidates = halves[int(np.nanargmax(ratios))] if not all(map(math.isnan, ratios)) else halves[0]
        index = tuple(int(i) for i in np.unravel_index(int(candidates[0]), shape))
        size = P.norm_of(block.value)
        scale = size / math.sqrt(max(math.prod(shape), 1)) if size > 0 else 1.0
        got, want = 0j, 0j
        for unit in (1.0, 1j) if block.complex else (1.0,):  # d phi / d Re x, then d phi / d Im x
            e = np.zeros(shape, dtype=np.complex128 if block.complex else np.float64)
            e[index] = unit * scale
            direction = {j: B.asarray_like(e, block.value)}
            value, _ = self.derivative(direction)
            fd, _ = self.finite_difference(direction, self.step)
            got += unit * value / scale
            want += unit * fd / scale
        show = (lambda z: f"{z:.6g}") if block.complex else (lambda z: f"{z.real:.6g}")
        return (
            f"entry {index} of {block.name} disagrees most: d phi / d entry is {show(got)} by the {mode}, "
            f"{show(want)} by finite differences (phi = Re <w, f(x)> for the random probe w)"
        )


# --- VJP --------------------------------------------------------------------------------------------
class _VJPChecker(Checker):
    def __init__(self, *a: Any, vjp: Any, cotangent: str, **k: Any) -> None:
        if cotangent not in ("cores", "tensor"):
            raise ValueError(f"check_vjp: cotangent must be 'cores' or 'tensor', got {cotangent!r}")
        if vjp is not None and not callable(vjp):
            raise TypeError(f"check_vjp: vjp must be callable, got {type(vjp).__name__}")
        super().__init__(*a, **k)
        self.grads = self._torch_grads() if vjp is None else self._rule_grads(vjp, cotangent)

    def _torch_grads(self) -> list[Array]:
        backend = B.backend_name(self.blocks[0].value)
        if backend != "torch":
            raise TypeError(
                f"{self.fn}: numpy arguments need the VJP rule under test: pass vjp=..., e.g. "
                "check_vjp(tn.dot, a, b, vjp=tn.adjoint.dot); torch arguments are differentiated by autograd"
            )
        torch = P.torch_module()
        leaves = {j: b.value.detach().clone().requires_grad_(True) for j, b in enumerate(self.blocks)}
        loss = self.probe.loss(self.f(*P.with_values(self.args, self.blocks, leaves)))
        if not (isinstance(loss, torch.Tensor) and loss.requires_grad):
            return [torch.zeros_like(leaf) for leaf in leaves.values()]
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves.values())]

    def _rule_grads(self, vjp: Callable[..., Any], cotangent: str) -> list[Array]:
        probe = self.probe
        if probe.kind == "train":
            given = probe.cotangent_cores(self.y0) if cotangent == "cores" else probe.w
        else:
            given = probe.w
        result = vjp(*self.args, given)
        if len(self.args) == 1 and not (isinstance(result, tuple) and len(result) == 1):
            result = (result,)
        if not isinstance(result, (tuple, list)) or len(result) != len(self.args):
            raise ValueError(
                f"{self.fn}: vjp returned {type(result).__name__} of length "
                f"{len(result) if isinstance(result, (tuple, list)) else 'n/a'}; it must return one "
                f"cotangent per argument of f ({len(self.args)}), None for those without one"
            )
        grads = []
        for block in self.blocks:
            g = result[block.arg]  # one cotangent per argument: core gradients for a train
            if g is not None and block.core is not None:
                g = list(g.cores) if isinstance(g, (TT, TTM)) else list(g)
                g = g[block.core] if block.core < len(g) else None
            if g is None:
                g = block.value * 0
            if tuple(int(s) for s in g.shape) != tuple(int(s) for s in block.value.shape):
                raise ValueError(
                    f"{self.fn}: vjp's cotangent of {block.name} has shape {tuple(g.shape)} but the block "
                    f"has shape {tuple(block.value.shape)}; they must match"
                )
            grads.append(g)
        return grads

    def derivative(self, direction: P.Direction) -> tuple[float, float]:
        value = sum(_inner(self.grads[j], t) for j, t in direction.items())
        bound = sum(P.norm_of(self.grads[j]) * P.norm_of(t) for j, t in direction.items())
        return value, bound


def check_vjp(
    f: Callable[..., Any],
    *args: Any,
    vjp: Callable[..., Any] | None = None,
    wrt: int | Sequence[int] | None = None,
    cotangent: Literal["cores", "tensor"] = "cores",
    seed: Any = 0,
    rtol: float | None = None,
    step: float | None = None,
) -> DerivativeReport:
    """Check the reverse-mode derivative (VJP) of ``f(*args)`` against finite differences, in TT form.

    Parameters
    ----------
    f : callable
        ``f(*args)`` returns a scalar, a dense array (any shape), a TT or a TTM.
    *args
        Trains (perturbed core by core), arrays, and anything else (passed as is).
    vjp : callable, optional
        The rule under test, called as ``vjp(*args, cotangent)``; it returns one cotangent per argument
        (a list of core gradients for a train, an array for an array, None for an argument without one;
        with one argument, that cotangent alone), e.g. ``vjp=tn.adjoint.dot`` for ``tn.dot``. Without it
        the arguments must be torch trains/arrays and torch's autograd is checked. Complex arguments
        follow torch's convention: for a real loss the gradient of ``z`` is ``dL/dRe z + i dL/dIm z``.
    wrt : int or sequence of int, optional
        The positions of the arguments to differentiate (default: every train and floating-point array).
    cotangent : {"cores", "tensor"}
        For a train-valued ``f``: what ``vjp`` receives. ``"cores"``: the gradients of ``Re <w, f(x)>`` with
        respect to the output's cores (the form of ``tensornet.adjoint.hadamard``, ``matvec``, ``matmul``);
        ``"tensor"``: ``w`` itself, a TT shaped like the output (the form of ``tensornet.adjoint.solve``).
        A scalar or array output's cotangent is ``w`` (a number or an array like the output).
    seed : optional
        Seeds the probe and the directions (``numpy.random.default_rng``); default 0, reproducible.
    rtol : float, optional
        Relative tolerance (default ``1000 u^(4/5)``: about ``2e-10`` in float64, ``2e-3`` in float32,
        ``u`` the unit roundoff of the least precise dtype among the arguments and the output).
    step : float, optional
        The relative finite-difference step (default ``u^(1/5)``); directions are as long as the blocks.

    Returns
    -------
    DerivativeReport
        The comparison made (all blocks at once); a failed check's report, in the ``AssertionError``, also
        has one row per core / array.

    Raises
    ------
    AssertionError
        A directional derivative disagrees with finite differences beyond ``rtol``; the message is the
        report's table and names the entry of the worst block that disagrees most.
    TypeError
        ``f`` or ``vjp`` not callable; numpy arguments without ``vjp``; an argument in ``wrt`` that is not a
        train or floating-point array; arguments of mixed backends; ``f`` returning something else.
    ValueError
        ``wrt`` out of range, a bad ``cotangent``, ``rtol`` or ``step``, cotangents of the wrong number or
        shape.

    Notes
    -----
    With a random probe ``w`` shaped like the output, ``phi(x) = Re <w, f(x)>`` (a ``tensornet.dot`` for a
    train output). For a random direction ``v`` (one tangent per core or array, as long as it) the VJP's
    ``g = J^H w`` predicts ``phi'(0) = Re <g, v>`` (the dot-product identity), compared with the 4th-order
    central difference ``(phi(-2h) - 8 phi(-h) + 8 phi(h) - phi(2h)) / 12h`` along ``v`` with all blocks
    moving at once (the step is retried 4 and 16 times smaller before a disagreement counts, for functions
    whose higher derivatives are large). On disagreement every block is compared alone, and the worst is
    bisected (random tangents on halves of its entries) to one entry, whose partial derivative is reported
    both ways. Tangents are scaled to their blocks, so each block's share of the derivative is comparable
    and an error in any one of them shows in the comparison of all at once.

    Cost: 4 evaluations of ``f`` (up to 12 where the step is retried) and one VJP; on failure
    ``4 (number of blocks + 2 log2(block size))`` more.
    """
    checker = _VJPChecker("check_vjp", f, args, wrt, seed, rtol, step, vjp=vjp, cotangent=cotangent)
    return checker.run("VJP")
