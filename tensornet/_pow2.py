"""Exact power-of-two scaling of trains, so that results hold at every finite scale of the dtype.

Multiplying by ``2^k`` is exact (unless the result itself over- or underflows), so a factor taken out and
put back leaves no rounding behind, and a result that overflows saturates to inf instead of turning into
``inf / inf = NaN``. Two uses:

* chains of products (``dot``, ``sum``, ``gather``, ``norm``): every core and every running product is
  divided by a power of two near its size and the exponents are summed (:func:`normalized_cores`,
  :func:`chain`, :func:`spread`);
* decompositions (``tt_svd``, ``round``, ``orthogonalize``): the SVDs and QRs are scale-safe (LAPACK
  rescales internally), but Gram matrices, products of cores and squares of singular values are not at
  the ends of the range, so data far from 1 are divided by a power of two first and the factor is put
  back on one core at the end (:func:`safe_exponent`, :func:`normalize_cores`, :func:`restore`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _backend as B
from ._backend import Array


# --- chains of products -----------------------------------------------------------------------------
def normalized_cores(cores: Sequence[Array]) -> tuple[list[Array], Any]:
    """Each core divided by a power of two near its largest magnitude, and the sum of the exponents.

    ``x = 2^e * train(result)`` exactly, with every core's entries at most about 1, so products of cores
    neither overflow nor underflow on their way, whatever the scale of each core.
    """
    scaled, total = [], 0
    for core in cores:
        core, e = B.normalized(core)
        scaled.append(core)
        total = total + e
    return scaled, total


def chain(first: Array, steps: Sequence[Callable[[Array], Array]], exponent: Any) -> Array:
    """Apply ``steps`` to a small matrix, renormalising after each, and return the (1, 1) result.

    The scale ``2^exponent`` (plus every step's exponent) is restored exactly at the end: inf or 0 if
    the result itself overflows or underflows, never NaN from finite cores.
    """
    value = first
    for step in steps:
        value, e = B.normalized(step(value))
        exponent = exponent + e
    xp = B.namespace(value)
    return B.scale_pow2(xp.reshape(value, ()), exponent)


def spread(cores: list[Array], exponent: Any) -> list[Array]:
    """The train of ``cores`` times ``2^exponent``, the factor split evenly over the cores.

    Each core near 1 gets at most its share, so none over- or underflows unless the train's entries do.
    """
    count = len(cores)
    share = exponent // count
    rest = exponent - share * count
    return [B.scale_pow2(c, share + rest if k == 0 else share) for k, c in enumerate(cores)]


def scaled_product(
    fn: str,
    ca: Sequence[Array],
    cb: Sequence[Array],
    product: Callable[[list[Array], list[Array]], list[Array]],
) -> list[Array]:
    """``product(ca, cb)`` (cores built from one core of each train) without overflow on the way.

    Each train whose core scales are extreme is divided core by core by powers of two first (exact) and the
    factor is spread over the result's cores, so finite cores give finite cores whenever the result's scale
    is representable (``2^1000`` on one core times ``2^-1000`` on another is no longer inf times 0).

    Under ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``) the values cannot be inspected, and the
    product is formed as it is.

    Raises
    ------
    ValueError
        NaN or inf entries (the message starts with ``fn``).
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch._C._are_functorch_transforms_active():
        return product(list(ca), list(cb))
    na, ea = normalize_cores(fn, list(ca))
    nb, eb = normalize_cores(fn, list(cb))
    cores = product(na, nb)
    return cores if ea == 0 and eb == 0 else spread(cores, ea + eb)


# --- decompositions ---------------------------------------------------------------------------------
def safe_exponent(tops: Sequence[float], dtype: Any) -> int:
    """0 when the magnitudes ``tops`` multiply to something safely inside ``dtype``'s range.

    ``tops`` are the largest magnitudes of a dense array, or of each core of a train; otherwise the sum
    of their power-of-two exponents is returned, the factor to divide by.
    """
    exponents = [math.frexp(t)[1] if t > 0 else 0 for t in tops]
    return 0 if _is_safe(exponents, dtype) else sum(exponents)


def core_exponents(cores: Sequence[Array]) -> list[int]:
    """The power-of-two exponent of each core's largest magnitude (of its parts, for complex cores).

    Raises
    ------
    ValueError
        A core with NaN or inf entries.
    """
    if all(isinstance(c, np.ndarray) for c in cores):
        values = np.array([B.magnitude(c) for c in cores], dtype=np.float64)
    else:  # one host transfer for all cores
        xp = B.namespace(*cores)
        parts = [xp.real(c) for c in cores] + [xp.imag(c) for c in cores if B.is_complex(c)]
        tops = xp.stack([xp.max(xp.abs(p)) for p in parts])
        values = np.asarray(B.to_backend(tops, "numpy"), dtype=np.float64)
        if len(parts) > len(cores):
            values = np.maximum(values[: len(cores)], values[len(cores) :])
    if not np.all(np.isfinite(values)):
        raise ValueError("the train has NaN or inf entries; the operation is undefined")
    return [math.frexp(float(t))[1] if t > 0 else 0 for t in values]


def _is_safe(exponents: Sequence[int], dtype: Any) -> bool:
    """Whether factors of these power-of-two exponents multiply safely inside ``dtype``'s range.

    Their magnitudes must sum to at most a quarter of the exponent range: exponents that cancel (cores at
    ``2^-470``, ``2^952``, ``2^-485``) are not safe, as the products and squares on the way are not.
    """
    safe = 32 if B.real_dtype_name(dtype) == "float32" else 256  # a quarter of the exponent range
    return sum(abs(e) for e in exponents) <= safe


def normalize_cores(fn: str, cores: list[Array]) -> tuple[list[Array], int]:
    """Cores divided by powers of two near their magnitudes when their scale is extreme.

    Returns the cores and the exponent to put back on the result; ``(cores, 0)`` unchanged when their
    scale is safe.

    Raises
    ------
    ValueError
        NaN or inf entries (the message starts with ``fn``).
    """
    try:
        exponents = core_exponents(cores)
    except ValueError as err:
        raise ValueError(f"{fn}: {err}") from None
    if _is_safe(exponents, cores[0].dtype):
        return cores, 0
    return [B.scale_pow2(c, -e) for c, e in zip(cores, exponents)], sum(exponents)


def normalize_terms(fn: str, trains: list[list[Array]]) -> tuple[list[list[Array]], int]:
    """The terms of a sum put on one safe scale by powers of two (exact), and the exponent to put back.

    Each term's cores are divided by powers of two near their magnitudes and the term's own factor
    ``2^(E_i - E)`` (E the largest E_i) is spread over its cores, so that the scaled terms keep their
    ratios: the sum is ``2^E`` times the sum of the scaled terms. A term below ``2^-1000`` of the
    largest may underflow to zero, which changes the sum by less than its rounding.

    Raises
    ------
    ValueError
        A term with NaN or inf entries (the message names it).
    """
    exponents = []
    for i, cores in enumerate(trains):
        try:
            exponents.append(core_exponents(cores))
        except ValueError as err:
            raise ValueError(f"{fn}: term {i}: {err}") from None
    dtype = trains[0][0].dtype
    totals = [sum(e) for e in exponents]
    top = max(totals)
    if all(_is_safe(es, dtype) for es in exponents) and top - min(totals) <= 64:
        return trains, 0  # every term safe, and none far below another
    d = len(trains[0])
    scaled = []
    for cores, es, total in zip(trains, exponents, totals):
        share, rest = divmod(total - top, d)  # the term's factor 2^(total - top) <= 1, spread evenly
        scaled.append(
            [B.scale_pow2(c, -e + share + (rest if k == 0 else 0)) for k, (c, e) in enumerate(zip(cores, es))]
        )
    return scaled, top


def restore(cores: list[Array], exponent: int, at: int) -> list[Array]:
    """Multiply the train by ``2^exponent``: on core ``at`` where that core can hold it, else spread.

    Core ``at`` carries the norm in the results here; a norm near the dtype's maximum is spread over
    all cores instead.
    """
    if exponent == 0:
        return cores
    cores = list(cores)
    xp = B.namespace(*cores)
    top = B.to_float(xp.max(xp.abs(cores[at])))
    finfo = xp.finfo(cores[at].dtype)
    # compared in log2: the scaled value itself may not be representable (math.ldexp would raise)
    size = math.log2(top) + exponent if top > 0.0 else 0.0
    if top == 0.0 or math.log2(float(finfo.smallest_normal)) <= size < math.log2(float(finfo.max)):
        cores[at] = B.scale_pow2(cores[at], exponent)
        return cores
    share, rest = divmod(exponent, len(cores))
    return [B.scale_pow2(c, share + (rest if k == at % len(cores) else 0)) for k, c in enumerate(cores)]
