"""Argument checks on trains: a TT or TTM, operands of one structure, storage and dtype.

Apart from :mod:`tensornet._checks` because they need the train classes, whose module needs those checks:
``_checks`` stays below :mod:`tensornet.tt` and this module above it, so neither imports the other in a
circle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _backend as B
from .tt import TT, TTM

__all__ = ["check_same_storage", "check_same_structure", "check_train", "common_dtype", "promoted"]


def check_train(fn: str, x: Any, name: str = "argument") -> None:
    """Raise ``TypeError`` unless ``x`` is a TT or a TTM."""
    if not isinstance(x, (TT, TTM)):
        raise TypeError(f"{fn}: {name} must be a tensornet TT or TTM, got {type(x).__name__}")


def common_dtype(fn: str, a: Any, b: Any) -> str:
    """The dtype two trains combine in: their own if equal, numpy's promotion of a real and a complex one.

    ``float64`` with ``complex64`` gives ``complex128`` (as numpy); two real (or two complex) dtypes of
    different precisions are refused: convert one explicitly.

    Raises
    ------
    TypeError
        Dtypes that differ other than by being real and complex.
    """
    first, second = B.dtype_name(a.dtype), B.dtype_name(b.dtype)
    if first == second:
        return first
    if (first in _COMPLEX) == (second in _COMPLEX):
        raise TypeError(
            f"{fn}: operands have different dtypes ({a.dtype} and {b.dtype}); convert with .to(dtype=...)"
        )
    return str(np.result_type(first, second))


_COMPLEX = ("complex64", "complex128")


def check_same_storage(fn: str, a: Any, b: Any) -> None:
    """Raise unless two trains share backend (``TypeError``), device (``ValueError``) and a dtype.

    A real and a complex train combine (:func:`common_dtype`); other dtype differences are a ``TypeError``.
    """
    if a.backend != b.backend:
        raise TypeError(
            f"{fn}: operands use different backends ({a.backend} and {b.backend}); convert with .to()"
        )
    common_dtype(fn, a, b)
    if a.device != b.device:
        raise ValueError(
            f"{fn}: operands are on different devices ({a.device} and {b.device}); move one with .to()"
        )


def promoted(*trains: Any) -> list[Any]:
    """The trains converted to the dtype they combine in (checked first by :func:`check_same_storage`).

    A real train combined with a complex one becomes complex (a copy, differentiable on torch); trains
    already of that dtype are returned as they are.
    """
    target = B.dtype_name(trains[0].dtype)
    for t in trains[1:]:
        target = str(np.result_type(target, B.dtype_name(t.dtype)))
    return [t if B.dtype_name(t.dtype) == target else t.to(dtype=target) for t in trains]


def check_same_structure(fn: str, a: Any, b: Any) -> None:
    """Raise unless ``a`` and ``b`` are trains of one type, storage and mode shapes (elementwise operands)."""
    check_train(fn, a, "first operand")
    check_train(fn, b, "second operand")
    if type(a) is not type(b):
        raise TypeError(f"{fn}: cannot combine a {type(a).__name__} with a {type(b).__name__}")
    check_same_storage(fn, a, b)
    if isinstance(a, TTM):
        if (a.row_shape, a.col_shape) != (b.row_shape, b.col_shape):
            raise ValueError(
                f"{fn}: TTM shapes differ: row_shape {a.row_shape} x col_shape {a.col_shape} vs "
                f"row_shape {b.row_shape} x col_shape {b.col_shape}; both must match core by core"
            )
    elif a.shape != b.shape:
        raise ValueError(f"{fn}: TT shapes differ: {a.shape} vs {b.shape}; they must match mode by mode")
