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


def check_memory(
    fn: str, sizes: Sequence[int], itemsize: int, *, temporaries: int = 1, what: str = "", hint: str = ""
) -> None:
    """Refuse, before allocating, cores of ``sizes`` entries that cannot fit in the memory available now.

    The cores are built as float64 on the host (with ``temporaries`` scratch arrays of the largest core's
    size) and then placed in ``itemsize`` bytes per entry, so the peak is
    ``8 n + 8 temporaries max(size) + itemsize n`` bytes for ``n`` entries in all.

    Raises
    ------
    ValueError
        The peak exceeds the memory available (the message starts with ``what``, by default "the cores
        would hold n entries", and ends with ``hint``).
    """
    total = sum(sizes)
    peak = 8 * total + 8 * temporaries * max(sizes) + itemsize * total
    memory = B.available_memory()
    if memory is not None and peak > memory:
        what = what or f"the cores would hold {total:,} entries"
        raise ValueError(
            f"{fn}: {what} (about {peak / 2**30:,.1f} GiB at the peak of building them), more than the "
            f"{memory / 2**30:,.1f} GiB of memory available{hint}"
        )


def target_itemsize(fn: str, like: Any, dtype: Any) -> int:
    """Bytes per entry of the cores :func:`place` will make (for memory checks before drawing them)."""
    found = reference(fn, like)
    target = dtype if dtype is not None else (found.dtype if found is not None else "float64")
    return int(np.dtype(B.dtype_name(target)).itemsize) if B.dtype_name(target) != "bfloat16" else 2


def place(fn: str, cores: Sequence[np.ndarray], like: Any, dtype: Any) -> list[Array]:
    """Host ``cores`` (float64 or complex128) on ``like``'s backend and device, in ``dtype``.

    ``dtype`` defaults to ``like``'s dtype, or float64 without ``like``; complex host cores keep a default
    real dtype's precision but become complex (numpy's promotion), an explicit real ``dtype`` refuses them.

    Raises
    ------
    TypeError
        A bad ``like``, something that is not a dtype, a dtype that is not floating point or complex,
        complex cores with an explicit real ``dtype``.
    ValueError
        Entries beyond the range of ``dtype``.
    """
    found = reference(fn, like)
    if dtype is not None:
        try:
            B.dtype_name(dtype)
        except TypeError:
            raise TypeError(
                f"{fn}: dtype {dtype!r} is not a dtype; use e.g. 'float32', 'float64' or 'complex128'"
            ) from None
    target = dtype if dtype is not None else (found.dtype if found is not None else "float64")
    if any(np.iscomplexobj(c) for c in cores) and B.dtype_name(target) in ("float32", "float64"):
        if dtype is not None:
            raise TypeError(
                f"{fn}: the values are complex but dtype={B.dtype_name(dtype)} is real; pass a complex dtype "
                "('complex128') or leave dtype out"
            )
        target = B.complex_dtype_name(target)
    with np.errstate(over="ignore"):  # checked below, with a message
        if found is None:
            placed = [np.asarray(c, dtype=np.dtype(B.dtype_name(target))) for c in cores]
        else:
            backend, device = B.backend_name(found), B.device(found)
            placed = [B.to_backend(c, backend, device=device, dtype=target) for c in cores]
    if not (B.is_floating(placed[0]) or B.is_complex(placed[0])):
        raise TypeError(
            f"{fn}: the cores would have dtype {placed[0].dtype}; trains are floating point or complex: pass "
            "dtype='float64' (or 'float32', 'complex128', 'complex64'), or such a like"
        )
    for k, (core, host) in enumerate(zip(placed, cores)):
        if not B.all_finite(core) and bool(np.all(np.isfinite(host))):
            raise ValueError(
                f"{fn}: core {k} has entries up to {float(np.max(np.abs(host))):.3g}, beyond the range of "
                f"{B.dtype_name(core.dtype)}; use a wider dtype (float64) or rescale"
            )
    return placed
