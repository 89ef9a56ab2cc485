"""``assert_allclose`` for trains, compared in TT form (never through the dense tensor)."""

from __future__ import annotations

import math
import numbers
from typing import Any

from .. import ops as _ops
from ..tt import TT, TTM

__all__ = ["assert_allclose"]


def _describe(x: Any) -> str:
    if isinstance(x, TTM):
        return f"TTM row_shape {x.row_shape} col_shape {x.col_shape}"
    return f"TT shape {x.shape}"


def assert_allclose(
    actual: Any, desired: Any, *, rtol: float = 1e-7, atol: float = 0.0, err_msg: str = ""
) -> None:
    """Raise ``AssertionError`` unless ``||actual - desired||_F <= atol + rtol ||desired||_F``.

    Parameters
    ----------
    actual, desired : TT or TTM
        Both TT or both TTM of the same shape, on any backends and dtypes.
    rtol, atol : float
        Relative and absolute tolerances (>= 0).
    err_msg : str
        Prepended to the failure message.

    Notes
    -----
    The trains are compared in float64 (complex128 if either is complex) on the host (detached), through the TT of their difference and
    the QR-based :func:`tensornet.norm` (accurate to working precision for nearly equal trains, and at
    any scale), never through ``full()``. Unlike ``numpy.testing.assert_allclose`` the test is on the
    Frobenius norm of the whole difference, not entry by entry. NaN or inf entries fail.

    Cost: ``O(d n (r + s)^3)``.

    Raises
    ------
    AssertionError
        The trains differ by more than the tolerance, or do not have the same type and shape.
    TypeError
        An argument is not a TT or TTM, or a tolerance is not a real number >= 0.
    """
    for name, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise TypeError(f"assert_allclose: {name} must be a real number >= 0, got {value!r}")
    for name, value in (("actual", actual), ("desired", desired)):
        if not isinstance(value, (TT, TTM)):
            raise TypeError(
                f"assert_allclose: {name} must be a tensornet TT or TTM, got {type(value).__name__}"
            )
    prefix = f"{err_msg}\n" if err_msg else ""
    if type(actual) is not type(desired) or _describe(actual) != _describe(desired):
        raise AssertionError(
            f"{prefix}trains differ in structure: {_describe(actual)} vs {_describe(desired)}"
        )
    wide = "complex128" if any("complex" in str(t.dtype) for t in (actual, desired)) else "float64"
    a = actual.to("numpy", dtype=wide)
    b = desired.to("numpy", dtype=wide)
    difference = float(_ops.norm(_ops.add(a, _ops.scale(b, -1.0))))
    reference = float(_ops.norm(b))
    bound = atol + rtol * reference
    if difference <= bound:  # False for NaN
        return
    relative = difference / reference if reference > 0 else math.inf
    raise AssertionError(
        f"{prefix}trains not close in TT form (Frobenius norm, rtol={rtol:g}, atol={atol:g}): "
        f"||actual - desired|| = {difference:.6g} > {bound:.6g} (||desired|| = {reference:.6g}, "
        f"relative {relative:.3g}); {_describe(actual)}, ranks {actual.ranks} vs {desired.ranks}"
    )
