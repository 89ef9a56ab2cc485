"""Linear systems and eigenproblems in TT form: :func:`solve` (AMEn) and :func:`eigsh` (block AMEn / DMRG)."""

from __future__ import annotations

from .._cross import ConvergenceWarning
from ._api import eigsh, solve
from ._eig import EigInfo
from ._operators import heisenberg
from ._solve import SolveInfo

__all__ = ["ConvergenceWarning", "EigInfo", "SolveInfo", "eigsh", "heisenberg", "solve"]
