"""Argument checks of :mod:`tensornet.linalg` (messages name the function, the argument and the fix)."""

from __future__ import annotations

import math
import numbers
from typing import Any

from .. import _backend as B
from .. import _checks, _train_checks
from ..ops import add, norm, transpose
from ..tt import TT, TTM


def check_square(fn: str, a: Any) -> TTM:
    """``a`` as a square TTM (``row_shape == col_shape``)."""
    _checks.check_type(fn, a, TTM, "A")
    if a.row_shape != a.col_shape:
        raise ValueError(
            f"{fn}: A must be square with row_shape == col_shape core by core, got row_shape {a.row_shape} "
            f"and col_shape {a.col_shape}; a non-square operator has no {('inverse' if fn == 'solve' else 'eigenpairs')}"
            " (for least squares solve with A^T A and A^T b)"
        )
    _checks.check_precision(fn, a.dtype)
    return a


def check_vector(fn: str, name: str, t: Any, a: TTM) -> TT:
    """``t`` as a TT of shape ``A.col_shape`` on A's backend, dtype and device."""
    _checks.check_type(fn, t, TT, name)
    if t.shape != a.col_shape:
        raise ValueError(
            f"{fn}: {name} has shape {t.shape} but A has col_shape {a.col_shape}; they must match mode by mode"
        )
    precision = B.real_dtype_name(a.dtype)
    same_kind = B.is_complex(a.cores[0]) == B.is_complex(t.cores[0])  # real with complex promotes (as numpy)
    if a.backend == t.backend and same_kind and B.real_dtype_name(t.dtype) != precision:
        raise TypeError(
            f"{fn}: A is {B.dtype_name(a.dtype)} but {name} is {B.dtype_name(t.dtype)}; give them one precision, "
            f"e.g. {name}.to(dtype='{B.dtype_name(a.dtype)}') (a real operand with a complex one is promoted)"
        )
    _train_checks.check_same_storage(fn, a, t)
    return t


def check_tol(fn: str, tol: Any) -> float:
    """A relative tolerance ``0 < tol < 1`` as a float."""
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"{fn}: tol must be a real number, got {type(tol).__name__} {tol!r}")
    value = float(tol)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ValueError(f"{fn}: tol must be a finite relative tolerance with 0 < tol < 1, got {tol!r}")
    return value


def adjoint(a: TTM) -> TTM:
    """The conjugate transpose ``A^H`` (the transpose for real cores)."""
    t = transpose(a)
    if not B.is_complex(a.cores[0]):
        return t
    xp = B.namespace(*t.cores)
    return TTM._trusted([xp.conj(c) for c in t.cores])


def asymmetry(a: TTM) -> float:
    """``||A - A^H||_F / ||A||_F`` in TT form (0 for the zero operator)."""
    size = B.to_float(norm(a))
    if size == 0.0:
        return 0.0
    return B.to_float(norm(add(a, -adjoint(a)))) / size


def symmetric_tolerance(a: TTM) -> float:
    """The asymmetry below which A counts as symmetric: half the working precision (sqrt(u))."""
    return math.sqrt(B.finfo_eps(a.cores[0]))
