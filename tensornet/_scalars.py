"""The scalar operand of a train's arithmetic (``2 * t``, ``t + 1``, ``scale``): what it is, and its form.

Below :mod:`tensornet.tt` (whose operators test for a scalar) and :mod:`tensornet.ops`.
"""

from __future__ import annotations

import numbers
from typing import Any

from . import _backend as B

__all__ = ["check_scalar", "is_scalar", "scalar_promoted"]


def is_scalar(x: Any) -> bool:
    """A Python/numpy number or a 0-d array (a bool is not a scalar here)."""
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Number):
        return True
    return B.is_array(x) and x.ndim == 0


def check_scalar(fn: str, x: Any, alpha: Any) -> Any:
    """``alpha`` in a form that multiplies the train ``x``'s cores without changing their dtype or device.

    A real scalar never changes a train's dtype (numpy's NEP 50 and torch's rule for Python scalars):
    real numbers, numpy scalars and 0-d numpy arrays become Python floats, complex ones Python complex
    numbers, and 0-d arrays of the train's own backend are cast to its dtype and device (a torch scalar
    that requires grad keeps its graph). A complex scalar with a real train is returned as a complex
    number (or a complex 0-d array of the train's precision): the caller promotes the train
    (:func:`scalar_promoted`), as numpy does.

    Raises
    ------
    TypeError
        Not a number or a 0-d array; a 0-d array of another backend than numpy or the train's.
    ValueError
        A number not representable as a float (or complex).
    """
    if not is_scalar(alpha):
        raise TypeError(f"{fn}: the scalar must be a number or a 0-d array, got {type(alpha).__name__}")
    if isinstance(alpha, numbers.Number):
        try:
            if isinstance(alpha, numbers.Complex) and not isinstance(alpha, numbers.Real):
                return complex(alpha)
            return float(alpha)  # type: ignore[arg-type]  # Python/numpy reals, Fraction, Decimal
        except (TypeError, ValueError, OverflowError) as err:
            raise ValueError(
                f"{fn}: the scalar {alpha!r:.40} is not representable as a float ({err})"
            ) from None
    widen = B.is_complex(alpha) and not B.is_complex(x.cores[0])  # the caller promotes x to complex
    dtype = B.complex_dtype_name(x.dtype) if widen else x.dtype
    if B.backend_name(alpha) == x.backend:
        return B.to_backend(alpha, x.backend, device=x.device, dtype=dtype)
    if B.backend_name(alpha) == "numpy":
        return complex(alpha) if B.is_complex(alpha) else float(alpha)
    raise TypeError(
        f"{fn}: the scalar is a {B.backend_name(alpha)} array but the train's cores are {x.backend}; "
        "convert one of them"
    )


def scalar_promoted(x: Any, alpha: Any) -> Any:
    """``x``, or a complex copy of it when the checked scalar ``alpha`` is complex and ``x`` real."""
    complex_scalar = isinstance(alpha, complex) or (B.is_array(alpha) and B.is_complex(alpha))
    if complex_scalar and not B.is_complex(x.cores[0]):
        return x.to(dtype=B.complex_dtype_name(x.dtype))
    return x
