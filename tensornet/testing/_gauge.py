"""Gauge transforms: the same tensor stored in different cores (:func:`regauge`).

A train's bonds carry a gauge freedom: for any invertible ``G_k`` (``r_k x r_k``) the cores
``G_{k-1}^{-1} X_k G_k`` (``G_0 = G_d = 1``) represent the same tensor, because the ``G_k G_k^{-1}`` between
neighbours cancel in every product of core slices. Code that depends on the tensor only (norms, inner
products, entries, rounding to an accuracy) must give the same answer for every gauge; code that looks at
the cores (an orthogonality test, a ranks-revealing sweep) is exercised on cores it has never seen.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .. import _backend as B
from .. import _checks, _train_checks
from ..tt import TT, TTM, TrainT

__all__ = ["exponent_limit", "gauge_rtol", "regauge"]

Kind = Literal["monomial", "orthogonal", "general"]
KINDS: tuple[str, ...] = ("monomial", "orthogonal", "general")

# Headroom kept between a scaled core's largest entry and the ends of the dtype's range: 2^8 above for the
# sums of squares a QR or a norm forms inside one core, and the significand's width (plus 2^8) below, so
# that the entries that turn subnormal lose only what is below the core's rounding unit anyway.
_MARGIN_BITS = 8


def _is_complex(dtype: Any) -> bool:
    return "complex" in B.dtype_name(dtype)


def _haar(rng: np.random.Generator, r: int, complex_: bool) -> np.ndarray:
    """A Haar-random orthogonal (unitary when ``complex_``) ``r x r`` matrix: QR of a Gaussian, signs fixed."""
    z = rng.standard_normal((r, r))
    if complex_:
        z = (z + 1j * rng.standard_normal((r, r))) / math.sqrt(2.0)
    q, rr = np.linalg.qr(z)
    diagonal = np.diagonal(rr)
    return q * (diagonal / np.abs(diagonal))  # Mezzadri's correction: Q R with a positive diagonal of R


def _transform(rng: np.random.Generator, r: int, kind: str, condition: float, complex_: bool) -> np.ndarray:
    """One bond transform ``G`` (float64 or complex128) of the given kind and condition number."""
    if kind == "monomial":
        # a signed (phased) permutation times powers of two: exact in floating point, and so is its inverse
        spread = math.floor(math.log2(condition) / 2)
        units = np.array([1, -1, 1j, -1j] if complex_ else [1, -1])
        values = rng.choice(units, r) * np.ldexp(1.0, rng.integers(-spread, spread + 1, r))
        out = np.zeros((r, r), dtype=np.complex128 if complex_ else np.float64)
        out[np.arange(r), rng.permutation(r)] = values
        return out
    if kind == "orthogonal":
        return _haar(rng, r, complex_)
    # general: U diag(s) V^H with singular values log-spaced over [condition^-1/2, condition^1/2]
    if r == 1:
        return _haar(rng, 1, complex_)
    singular = condition ** (0.5 - np.arange(r) / (r - 1))
    return (_haar(rng, r, complex_) * singular) @ _haar(rng, r, complex_).conj().T


def _check_arguments(t: Any, kind: Any, condition: Any) -> float:
    _train_checks.check_train("regauge", t, "t")
    if kind not in KINDS:
        raise ValueError(f"regauge: kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    if condition is None:
        return 1.0 if kind == "orthogonal" else 16.0
    if isinstance(condition, bool) or not isinstance(condition, numbers.Real) or not float(condition) >= 1:
        raise ValueError(f"regauge: condition must be a real number >= 1, got {condition!r}")
    if not math.isfinite(condition):
        raise ValueError(f"regauge: condition must be finite, got {condition!r}")
    if kind == "orthogonal" and condition != 1:
        raise ValueError(
            f"regauge: an orthogonal transform has condition number 1, got condition={condition!r}; "
            "use kind='general' for an ill-conditioned one"
        )
    return float(condition)


def transformed(t: TrainT, rng: np.random.Generator, kind: str, condition: float) -> TrainT:
    """``t`` with every bond transformed by a random ``G_k`` (no power-of-two scaling)."""
    cores = list(t.cores)
    complex_ = _is_complex(t.dtype)
    target = B.dtype_name(t.dtype)
    wide = "complex128" if complex_ else "float64"
    left_inverse: Any = None
    out = []
    for k, core in enumerate(cores):
        xp = B.namespace(core)
        shape = tuple(int(s) for s in core.shape)
        r0, r1 = shape[0], shape[-1]
        flat = xp.reshape(core, (r0, -1))
        if left_inverse is not None:
            flat = xp.matmul(B.asarray_like(left_inverse, core), flat)
        if k < len(cores) - 1:
            # G in the cores' precision, and the inverse of that rounded G: the pair cancels to the
            # rounding of the inverse alone (about condition * u)
            g = _transform(rng, r1, kind, condition, complex_).astype(target).astype(wide)
            left_inverse = np.linalg.inv(g)
            flat = xp.matmul(xp.reshape(flat, (-1, r1)), B.asarray_like(g, core))
        out.append(xp.reshape(flat, shape))
    return type(t)(out)


def _range(dtype: Any) -> tuple[int, int]:
    """The exponents ``(low, high)`` that a scaled core's largest entry must stay within, as powers of two."""
    info = np.finfo(np.dtype(B.real_dtype_name(dtype)))
    return int(info.minexp) + int(info.nmant) + 1 + _MARGIN_BITS, int(info.maxexp) - _MARGIN_BITS


def exponent_limit(t: TT | TTM) -> int:
    """The largest ``L`` such that bond exponents in ``[-L, L]`` keep every core of ``t`` within range.

    Core k is multiplied by ``2^(e_k - e_{k-1})``, at most ``2^(2L)`` up or down; its largest entry then stays
    within the dtype's range with the margins of :data:`_MARGIN_BITS` (a zero core constrains nothing).
    """
    low, high = _range(t.dtype)
    room = high - low
    for core in t.cores:
        largest = B.max_abs(core)
        if largest > 0 and math.isfinite(largest):
            exponent = math.frexp(largest)[1]  # 2^(exponent - 1) <= largest < 2^exponent
            room = min(room, high - exponent, exponent - 1 - low)
    return max(room, 0) // 2


def scaled(t: TrainT, exponents: Sequence[int]) -> TrainT:
    """``t`` with bond k scaled by ``2^e_k`` and ``2^-e_k`` on its two sides (exact: the tensor is unchanged)."""
    full = [0, *(int(e) for e in exponents), 0]
    cores = []
    for k, core in enumerate(t.cores):
        shift = full[k + 1] - full[k]
        cores.append(core if shift == 0 else core * math.ldexp(1.0, shift))
    return type(t)(cores)


def edge_exponents(bonds: int, limit: int, sign: int) -> list[int]:
    """Bond exponents that push cores to the edge: ``+-limit`` with alternating signs, the first ``sign``.

    The interior cores move by ``2^(+-2 limit)`` (the end cores by ``2^(+-limit)``); a single bond takes
    ``2 limit`` alone.
    """
    if bonds == 1:
        return [2 * limit * sign]
    return [limit * sign * (-1) ** k for k in range(bonds)]


def _check_exponents(t: Any, exponents: Any, rng: np.random.Generator) -> list[int]:
    bonds = t.ncores - 1
    limit = exponent_limit(t)
    if isinstance(exponents, str):
        if exponents != "edge":
            raise ValueError(f"regauge: exponents must be None, 'edge' or {bonds} ints, got {exponents!r}")
        return edge_exponents(bonds, limit, int(rng.choice([-1, 1])))
    values = list(exponents)
    if len(values) != bonds or not all(
        isinstance(e, numbers.Integral) and not isinstance(e, bool) for e in values
    ):
        raise ValueError(
            f"regauge: exponents must be one int per bond ({bonds} for a train with {t.ncores} cores), "
            f"got {exponents!r}"
        )
    outside = [k for k, e in enumerate(values) if abs(int(e)) > limit]
    if outside:
        k = outside[0]
        raise ValueError(
            f"regauge: exponent {values[k]} at bond {k} is outside [-{limit}, {limit}], the range that keeps "
            f"every core finite and normal in {B.dtype_name(t.dtype)}; give smaller exponents or 'edge'"
        )
    return [int(e) for e in values]


def regauge(
    t: TrainT,
    *,
    seed: Any = None,
    kind: Kind = "general",
    condition: float | None = None,
    exponents: Sequence[int] | Literal["edge"] | None = None,
) -> TrainT:
    """The same tensor in other cores: every bond transformed by a random invertible matrix.

    Parameters
    ----------
    t : TT or TTM
        On any backend (numpy, torch on any device) and dtype, real or complex.
    seed : optional
        Anything ``numpy.random.default_rng`` takes; the same seed gives the same transforms.
    kind : {"general", "orthogonal", "monomial"}
        ``"general"``: ``G = U diag(s) V^H`` with Haar-random ``U``, ``V`` and singular values log-spaced over
        ``[condition^-1/2, condition^1/2]``; ``"orthogonal"``: Haar-random orthogonal (unitary for complex
        trains); ``"monomial"``: a permutation times signs (``+-1, +-i`` for complex) and powers of two
        within ``[condition^-1/2, condition^1/2]``, exact in floating point.
    condition : float >= 1, optional
        The condition number of each transform (default 16; 1 and only 1 for ``"orthogonal"``).
    exponents : None, "edge" or sequence of int
        Bond k is further scaled by ``2^e_k`` (and ``2^-e_k`` on its other side), which is exact and moves
        core k by ``2^(e_k - e_{k-1})``. ``"edge"`` takes ``e_k = +-L`` with alternating signs (a random first
        one) and the largest ``L`` that keeps every core finite and away from subnormals, so the interior
        cores move by ``2^(+-2L)`` to the ends of the dtype's range (one bond: ``e_1 = +-2L``).

    Returns
    -------
    TT or TTM
        Of ``t``'s type, ranks, backend, device and dtype, representing the same tensor. With torch cores
        that require grad the result stays in the graph (the transforms are constants).

    Raises
    ------
    TypeError
        ``t`` not a train; a seed ``default_rng`` does not take.
    ValueError
        An unknown ``kind``; ``condition`` not a finite number >= 1 (or not 1 for ``"orthogonal"``);
        ``exponents`` of the wrong length, or beyond what the dtype's range allows for these cores.

    Notes
    -----
    Core k becomes ``G_{k-1}^{-1} X_k G_k``, so every product of core slices, hence every entry, is unchanged
    in exact arithmetic. In floating point ``G_k`` is rounded to the cores' precision first and the inverse is
    that of the rounded ``G_k``; what remains is the rounding of the inverse and of the two products, a
    relative change of the tensor of about ``(d - 1) * condition * u`` (``u`` the unit roundoff, ``2^-53`` in
    float64 and ``2^-24`` in float32) for a train whose norm is not far below the product of its cores'
    norms. Properties that hold exactly for ``t`` (same norm, inner products, entries, rounding) therefore
    hold for ``regauge(t)`` to a relative tolerance of a small multiple of that (see ``docs/testing.md``);
    ``"monomial"`` transforms and the ``exponents`` scaling add no error at all. A train with one core has
    no bond: it is returned as is.

    Cost: ``O(d n r^3)`` (two small matrix products per core).
    """
    condition = _check_arguments(t, kind, condition)
    rng = _checks.rng("regauge", seed)
    out = transformed(t, rng, kind, condition)
    if exponents is None:
        return out
    return scaled(out, _check_exponents(out, exponents, rng))


def gauge_rtol(t: TT | TTM, condition: float = 1.0) -> float:
    """The relative tolerance to which :func:`regauge` with ``condition`` reproduces ``t``'s tensor.

    Parameters
    ----------
    t : TT or TTM
        The train (its dtype and number of cores set the tolerance).
    condition : float >= 1
        The largest condition number of the transforms (1 for orthogonal ones).

    Returns
    -------
    float
        ``8 (d - 1) (1 + condition^2) u``, ``u`` the unit roundoff of ``t``'s dtype (0 for one core).

    Raises
    ------
    TypeError
        ``t`` not a train.
    ValueError
        ``condition`` not a finite number >= 1.

    Notes
    -----
    An interior core ``G_{k-1}^{-1} X_k G_k`` is rounded relative to ``||G_{k-1}^{-1}|| ||X_k|| ||G_k||``, and its
    neighbours' transforms carry that error into the tensor amplified by ``||G_{k-1}|| ||G_k^{-1}||``: the
    worst case grows like ``condition^2`` per bond (``condition`` alone with two cores). Measured over random
    trains of up to 5 cores and ranks up to 4, in float32, float64 and complex128, with conditions 1 to
    ``1e6``, the relative change of the tensor stayed below ``0.6 (d - 1) (1 + condition^2) u``; the factor
    8 leaves room for trains whose norm is below the product of their cores' norms. A metamorphic test
    adds the tolerance of the operation it compares to this one.

    Cost: ``O(1)``.
    """
    _train_checks.check_train("gauge_rtol", t, "t")
    if (
        isinstance(condition, bool)
        or not isinstance(condition, numbers.Real)
        or not 1 <= condition < math.inf
    ):
        raise ValueError(f"gauge_rtol: condition must be a finite number >= 1, got {condition!r}")
    u = float(np.finfo(np.dtype(B.real_dtype_name(t.dtype))).eps) / 2
    return 8.0 * (t.ncores - 1) * (1.0 + float(condition) ** 2) * u
