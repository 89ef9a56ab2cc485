"""Forward-mode derivative checks of functions of trains: :func:`check_jvp`."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .. import _backend as B
from ..tt import TT, TTM
from . import _probe as P
from ._check import Checker, no_grad
from ._report import DerivativeReport

__all__ = ["check_jvp"]


class _JVPChecker(Checker):
    def __init__(self, *a: Any, jvp: Any, **k: Any) -> None:
        if jvp is not None and not callable(jvp):
            raise TypeError(f"check_jvp: jvp must be callable, got {type(jvp).__name__}")
        super().__init__(*a, **k)
        if jvp is None and B.backend_name(self.blocks[0].value) != "torch":
            raise TypeError(
                f"{self.fn}: numpy arguments need the JVP rule under test: pass jvp=..., called as "
                "jvp(primals, tangents); torch arguments are differentiated by torch's forward mode"
            )
        self.jvp = jvp

    def _tangents(self, direction: P.Direction) -> tuple[Any, ...]:
        """One tangent per argument: a train of tangent cores, an array, or None (not differentiated)."""
        tangents: list[Any] = [None] * len(self.args)
        for i, arg in enumerate(self.args):
            mine = [j for j, b in enumerate(self.blocks) if b.arg == i]
            if not mine:
                continue
            pieces = [direction[j] if j in direction else self.blocks[j].value * 0 for j in mine]
            tangents[i] = type(arg)(pieces) if isinstance(arg, (TT, TTM)) else pieces[0]
        return tuple(tangents)

    def _forward_mode(self, direction: P.Direction) -> tuple[Any, Any]:
        """``(f(x), its tangent)`` by torch's forward-mode AD (a train's tangent as one array per core)."""
        torch = P.torch_module()
        forward = torch.autograd.forward_ad
        with forward.dual_level():
            with warnings.catch_warnings():
                # torch's first make_dual imports its JVP decompositions, which call the deprecated
                # torch.jit.script: torch's own warning, that nobody calling check_jvp can act on
                warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
                duals = {j: forward.make_dual(self.blocks[j].value, t) for j, t in direction.items()}
            try:
                y = self.f(*P.with_values(self.args, self.blocks, duals))
            except (RuntimeError, NotImplementedError) as err:
                raise TypeError(
                    f"{self.fn}: torch's forward mode failed inside f ({err}); give jvp=... or check the "
                    "reverse mode with check_vjp"
                ) from err
            parts = list(y.cores) if isinstance(y, (TT, TTM)) else [y]
            unpacked = [forward.unpack_dual(p) if isinstance(p, torch.Tensor) else (p, None) for p in parts]
        primal = [p for p, _ in unpacked]
        tangent = [torch.zeros_like(p) if t is None else t for p, t in unpacked]
        if isinstance(y, (TT, TTM)):
            return type(y)(primal), tangent
        return primal[0], tangent[0]

    def derivative(self, direction: P.Direction) -> tuple[float, float]:
        if self.jvp is None:
            y, tangent = self._forward_mode(direction)
        else:
            y = self.y0
            with no_grad(self.blocks):
                tangent = self.jvp(tuple(self.args), self._tangents(direction))
        probe = self.probe
        if probe.kind != "train" or isinstance(tangent, (TT, TTM)):
            size = probe.size(tangent) if probe.kind == "train" else P.norm_of(probe.w) * P.norm_of(tangent)
            return probe.phi(tangent), size
        if len(tangent) != y.ncores:
            raise ValueError(
                f"{self.fn}: jvp returned {len(tangent)} core tangents for an output with {y.ncores} cores; "
                "return one per core, or the tangent as a TT/TTM"
            )
        value, bound = 0.0, 0.0
        for k, core in enumerate(tangent):
            cores = list(y.cores)
            cores[k] = core
            term = type(y)(cores)
            value += probe.phi(term)
            bound += probe.size(term)
        return value, bound


def check_jvp(
    f: Callable[..., Any],
    *args: Any,
    jvp: Callable[..., Any] | None = None,
    wrt: int | Sequence[int] | None = None,
    seed: Any = 0,
    rtol: float | None = None,
    step: float | None = None,
) -> DerivativeReport:
    """Check the forward-mode derivative (JVP) of ``f(*args)`` against finite differences, in TT form.

    Parameters
    ----------
    f : callable
        ``f(*args)`` returns a scalar, a dense array, a TT or a TTM.
    *args
        Trains (perturbed core by core), arrays, and anything else (passed as is).
    jvp : callable, optional
        The rule under test, called as ``jvp(primals, tangents)`` with ``primals = args`` and one tangent per
        argument (a train of tangent cores for a train, an array for an array, None for an argument not
        differentiated). It returns the output's tangent: a scalar or array like the output; for a train
        output the tangent tensor as a TT/TTM (any ranks), or one tangent per output core (the tensor
        tangent is then the sum over k of the output with core k replaced). Without it the arguments must
        be torch trains/arrays and torch's forward-mode AD (``torch.autograd.forward_ad``) is checked.
    wrt, seed, rtol, step
        As :func:`check_vjp`.

    Returns
    -------
    DerivativeReport

    Raises
    ------
    AssertionError
        A directional derivative disagrees with finite differences beyond ``rtol`` (the message names the
        block and the entry).
    TypeError
        As :func:`check_vjp`; numpy arguments without ``jvp``; an op inside ``f`` that torch's forward mode
        does not support.
    ValueError
        As :func:`check_vjp`; core tangents of the wrong number.

    Notes
    -----
    ``Re <w, J v>`` for a random probe ``w`` (TT form for a train output) is compared with the 4th-order
    central difference of ``phi(x) = Re <w, f(x)>`` along ``v``, for a random ``v`` on all blocks at once;
    on disagreement each block alone, and the worst is bisected to one entry (see :func:`check_vjp`).

    Cost: 4 evaluations of ``f`` (up to 12 where the step is retried) and one JVP; on failure
    ``number of blocks + 2 log2(block size)`` more JVPs and 4 times as many evaluations.
    """
    return _JVPChecker("check_jvp", f, args, wrt, seed, rtol, step, jvp=jvp).run("JVP")
