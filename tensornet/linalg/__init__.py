"""Linear systems and eigenproblems in TT form: :func:`solve` (AMEn) and :func:`eigsh` (block AMEn / DMRG).

Also the operators they are explored with: :func:`heisenberg` (spin chains) and :func:`laplacian_inverse`
(the closed-form inverse of the 1-D Dirichlet Laplacian, dense or QTT). The rounded product
``tn.matvec(A, x, eps=...)`` lives in the core (:func:`tensornet.matvec`).

Conventions (all of :mod:`tensornet.linalg`): square TTMs ``A`` with ``row_shape == col_shape``; tolerances
are relative; a :class:`~tensornet.ConvergenceWarning` (the class :func:`tensornet.cross` uses) is issued whenever a
result misses its tolerance, with what was reached. Everything runs on the cores' backend and device: the
local Krylov solvers are written on the array namespace, and only small projected matrices (Hessenberg,
Rayleigh-Ritz) go to the host.
"""

from __future__ import annotations

from .._cross import ConvergenceWarning
from ._api import eigsh, solve
from ._eig import EigInfo
from ._operators import heisenberg, laplacian_inverse
from ._solve import SolveInfo

__all__ = ["ConvergenceWarning", "EigInfo", "SolveInfo", "eigsh", "heisenberg", "laplacian_inverse", "solve"]
