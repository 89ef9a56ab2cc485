"""The report of a derivative check: one row per direction compared, and the entry that disagrees."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Comparison", "DerivativeReport"]


@dataclass(frozen=True)
class Comparison:
    """One directional derivative against its finite difference.

    ``tolerance`` is ``rtol`` times the scale the two are compared at: the Cauchy-Schwarz bound on the
    derivative (``||g|| ||v||`` for a VJP, ``||w|| ||J v||`` for a JVP) plus ``||w|| ||f(x)||`` (times
    ``default step / step``, for the rounding errors that a smaller step magnifies). ``step`` is the
    relative finite-difference step the comparison ended with.
    """

    what: str
    derivative: float
    finite_difference: float
    tolerance: float
    step: float

    @property
    def error(self) -> float:
        """``|derivative - finite_difference|``."""
        return abs(self.derivative - self.finite_difference)

    @property
    def ok(self) -> bool:
        """Whether ``error <= tolerance`` (False for NaN)."""
        return self.error <= self.tolerance  # False for NaN


@dataclass(frozen=True)
class DerivativeReport:
    """What :func:`check_vjp` / :func:`check_jvp` compared: one row per direction, and the entry that disagrees.

    ``str(report)`` is a table; a failed check raises ``AssertionError`` with it.
    """

    mode: str
    function: str
    comparisons: tuple[Comparison, ...]
    entry: str
    rtol: float
    step: float

    @property
    def ok(self) -> bool:
        """Whether every comparison is within its tolerance."""
        return all(c.ok for c in self.comparisons)

    def __str__(self) -> str:
        verdict = "agrees with" if self.ok else "disagrees with"
        lines = [
            f"check_{self.mode.lower()} of {self.function}: the {self.mode} {verdict} central finite "
            f"differences (rtol {self.rtol:.2g}; relative steps from {self.step:.2g}, retried 4 and 16 times "
            "smaller where they disagree)",
            f"  {'direction':<44} {self.mode:>14} {'finite diff.':>14} {'step':>8} {'error/tol':>10}",
        ]
        for c in self.comparisons:
            ratio = c.error / c.tolerance if c.tolerance > 0 else math.inf
            flag = "" if c.ok else "  <- disagrees"
            lines.append(
                f"  {c.what:<44} {c.derivative:>14.6g} {c.finite_difference:>14.6g} {c.step:>8.2g} "
                f"{ratio:>10.3g}{flag}"
            )
        if self.entry:
            lines.append(f"  {self.entry}")
        return "\n".join(lines)
