"""Where new cores go: host float64 cores placed on the backend, device and dtype of a ``like``.

Shared by the constructors (:mod:`tensornet.construct`), :func:`tensornet.random_tt` and
:func:`tensornet.cross`, which all build their cores on the host first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _backend as B
from . import tt as _tt
from ._backend import Array


def reference(fn: str, like: Any) -> Array | None:
    """The array whose backend, device and dtype ``like`` (an array, TT or TTM, or None) stands for.

    Raises
    ------
    TypeError
        ``like`` is neither None, an array, a TT nor a TTM.
    """
    if like is None:
        return None
    found = like.cores[0] if isinstance(like, (_tt.TT, _tt.TTM)) else like
    if not B.is_array(found):
        raise TypeError(f"{fn}: like must be an array, TT or TTM, got {type(like).__name__}")
    return found


def target_itemsize(fn: str, like: Any, dtype: Any) -> int:
    """Bytes per entry of the cores :func:`place` will make (for memory checks before drawing them)."""
    found = reference(fn, like)
    target = dtype if dtype is not None else (found.dtype if found is not None else "float64")
    return int(np.dtype(B.dtype_name(target)).itemsize) if B.dtype_name(target) != "bfloat16" else 2


def place(fn: str, cores: Sequence[np.ndarray], like: Any, dtype: Any) -> list[Array]:
    """Host float64 ``cores`` on ``like``'s backend and device, in ``dtype``.

    ``dtype`` defaults to ``like``'s dtype, or float64 without ``like``.

    Raises
    ------
    TypeError
        A bad ``like``, something that is not a dtype, or a dtype that is not real floating point.
    """
    found = reference(fn, like)
    if dtype is not None:
        try:
            B.dtype_name(dtype)
        except TypeError:
            raise TypeError(
                f"{fn}: dtype {dtype!r} is not a dtype; use e.g. 'float32' or 'float64'"
            ) from None
    if found is None:
        target = np.dtype(B.dtype_name(dtype)) if dtype is not None else np.dtype(np.float64)
        placed = [np.asarray(c, dtype=target) for c in cores]
    else:
        backend, device = B.backend_name(found), B.device(found)
        placed = [B.to_backend(c, backend, device=device, dtype=dtype or found.dtype) for c in cores]
    if not B.is_floating(placed[0]) or B.is_complex(placed[0]):
        raise TypeError(
            f"{fn}: the cores would have dtype {placed[0].dtype}; trains are real floating point: pass "
            "dtype='float64' (or 'float32'), or a floating-point like"
        )
    return placed
