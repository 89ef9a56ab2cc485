"""Hypothesis strategies for TT / TTM objects, shapes, ranks, backends, dtypes and gauge-equivalent trains.

For property tests of your own tensor code::

    from hypothesis import given
    from tensornet.testing import strategies as tst

    @given(tst.tts(max_ncores=4, max_rank=3))
    def test_norm_is_nonnegative(t):
        assert float(tn.norm(t)) >= 0

The strategies draw one element per core (its mode size, the rank of the bond to its right and a seed for
its entries), so hypothesis shrinks a failing train towards fewer cores, ranks 1, mode sizes 1 or 2, seeds
0, float64 on numpy and scale 1: a property that fails for every train with a bond of rank >= 2 shrinks to
a 2-core train of shape ``(2, 2)`` with that bond at 2. Failing trains are printed compactly (shape, ranks,
backend, dtype) and with their cores when they have at most 32 parameters. Shapes and ranks can be fixed by
passing tuples, or left to the strategy. ``backend`` / ``dtype`` are fixed values, strategies or None
(drawn from :func:`dtypes`: real; pass ``dtype=dtypes(complex=True)`` to draw complex trains too, whose
cores are circular complex normal). :func:`gauge_equivalent` draws the same tensor in other cores for
metamorphic properties; the recipes are in ``docs/testing.md``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from .. import _checks, _train_checks
from .. import ops as _ops
from ..decomp import orthogonalize
from ..random import random_tt
from ..tt import TT, TTM
from . import _draw, _gauge, _show
from ._draw import SEEDS, is_complex, resolve

__all__ = [
    "available_backends",
    "backends",
    "bond_ranks",
    "complex_dtypes",
    "core_shapes",
    "dtypes",
    "gauge_equivalent",
    "low_rank_arrays",
    "mode_shapes",
    "orthogonal_tts",
    "redundant_tts",
    "scaled_tts",
    "scales",
    "ttm_shapes",
    "ttms",
    "tts",
    "zero_tts",
]

_show.register()


def available_backends() -> list[str]:
    """'numpy' and, when torch is installed, 'torch'."""
    found = ["numpy"]
    if importlib.util.find_spec("torch") is not None:
        found.append("torch")
    return found


def backends() -> st.SearchStrategy[str]:
    """One of :func:`available_backends` (shrinking towards 'numpy')."""
    return st.sampled_from(available_backends())


def dtypes(*, complex: bool = False) -> st.SearchStrategy[str]:
    """'float64' or 'float32', and with ``complex`` also 'complex128' or 'complex64' (shrinking towards 'float64')."""
    return st.sampled_from(
        ["float64", "float32", "complex128", "complex64"] if complex else ["float64", "float32"]
    )


def complex_dtypes() -> st.SearchStrategy[str]:
    """'complex128' or 'complex64'."""
    return st.sampled_from(["complex128", "complex64"])


def scales(*, max_exponent: int = 100) -> st.SearchStrategy[float]:
    """Powers of two ``2^k`` with ``|k| <= max_exponent`` (shrinking towards 1), for ``tts(scale=...)``.

    The default reaches ``2^+-100``, inside float32's range as well as float64's.
    """
    if isinstance(max_exponent, bool) or not isinstance(max_exponent, int) or max_exponent < 0:
        raise ValueError(f"scales: max_exponent must be an int >= 0, got {max_exponent!r}")
    return st.integers(-max_exponent, max_exponent).map(lambda k: math.ldexp(1.0, k))


def mode_shapes(*, min_ndim: int = 1, max_ndim: int = 4, min_size: int = 1, max_size: int = 5) -> Any:
    """Tensor mode sizes ``(n_1, ..., n_d)``."""
    return st.lists(st.integers(min_size, max_size), min_size=min_ndim, max_size=max_ndim).map(tuple)


@st.composite
def ttm_shapes(
    draw: Any, *, min_ncores: int = 1, max_ncores: int = 3, max_size: int = 4
) -> tuple[tuple[int, ...], ...]:
    """``(row_shape, col_shape)`` of equal length (the number of cores)."""
    pairs = draw(
        st.lists(
            st.tuples(st.integers(1, max_size), st.integers(1, max_size)),
            min_size=min_ncores,
            max_size=max_ncores,
        )
    )
    return tuple(m for m, _ in pairs), tuple(n for _, n in pairs)


@st.composite
def bond_ranks(
    draw: Any, mode_sizes: Sequence[int], *, max_rank: int = 3, clip: bool = True
) -> tuple[int, ...]:
    """Bond ranks ``(r_1..r_{d-1})`` for modes of ``mode_sizes``, each in ``1..max_rank``.

    Mode sizes are ``m_k n_k`` for a TTM. With ``clip`` (default) they are also reachable: ``r_k <= r_{k-1}
    n_k`` and ``r_k <= n_{k+1} r_{k+1}``, so a generic TT with these ranks has exactly these TT ranks.
    """
    sizes = [int(n) for n in mode_sizes]
    wanted = draw(st.lists(st.integers(1, max_rank), min_size=len(sizes) - 1, max_size=len(sizes) - 1))
    return _draw.reachable(sizes, wanted) if clip else tuple(wanted)


def core_shapes(mode_sizes: Sequence[int], ranks: Sequence[int]) -> list[tuple[int, int, int]]:
    """TT core shapes ``(r_{k-1}, n_k, r_k)`` for bond ``ranks`` (without the boundary 1s)."""
    full = (1, *ranks, 1)
    return [(full[k], int(n), full[k + 1]) for k, n in enumerate(mode_sizes)]


def _bonds(fn: str, ranks: Any, sizes: Sequence[int], wanted: Sequence[int]) -> tuple[int, ...]:
    if ranks is None:
        return _draw.reachable(sizes, wanted)
    return _checks.parse_ranks(fn, "ranks", ranks, len(sizes))


def _finish(draw: Any, cls: type, cores: list[Any], backend: Any, dtype: str, scale: Any) -> Any:
    factor = resolve(draw, scale, None)
    if factor is not None:
        cores = _draw.spread_pow2(cores, float(factor))
    return cls(cores).to(resolve(draw, backend, backends()), dtype=dtype)


@st.composite
def tts(
    draw: Any,
    *,
    shape: Any = None,
    ranks: Any = None,
    min_ncores: int = 1,
    max_ncores: int = 4,
    max_size: int = 5,
    max_rank: int = 3,
    backend: Any = None,
    dtype: Any = None,
    std: float = 1.0,
    scale: Any = None,
) -> TT:
    """A random :class:`~tensornet.TT` (entries of std ``std``) with ``min_ncores..max_ncores`` cores.

    ``shape`` and ``ranks`` (the d - 1 bond ranks, an int, or a rank spec as :func:`tensornet.random_tt`
    takes) are fixed values, strategies, or None: drawn, mode sizes in ``1..max_size`` and bond ranks in
    ``1..max_rank`` clipped to reachable ones (so a generic train has exactly them). ``scale`` (a number, a
    strategy such as :func:`scales`, or None for 1) multiplies the tensor; a power of two is spread exactly
    over the cores.
    """
    shape = resolve(draw, shape, None)
    if shape is None:
        sizes = st.integers(1, max_size)
        elements = draw(
            st.lists(st.tuples(sizes, st.integers(1, max_rank)), min_size=min_ncores, max_size=max_ncores)
        )
        shape = tuple(n for n, _ in elements)
    else:
        shape = tuple(int(n) for n in shape)
        d = len(shape)
        elements = draw(st.lists(st.tuples(st.just(0), st.integers(1, max_rank)), min_size=d, max_size=d))
    bonds = _bonds("tts", resolve(draw, ranks, None), shape, [r for _, r in elements][:-1])
    dtype = resolve(draw, dtype, dtypes())
    seed = draw(SEEDS)
    cores = _draw.cores_from_seed([(n,) for n in shape], bonds, seed, std=std, complex_=is_complex(dtype))
    return _finish(draw, TT, cores, backend, dtype, scale)


@st.composite
def ttms(
    draw: Any,
    *,
    row_shape: Any = None,
    col_shape: Any = None,
    ranks: Any = None,
    min_ncores: int = 1,
    max_ncores: int = 3,
    max_size: int = 4,
    max_rank: int = 3,
    backend: Any = None,
    dtype: Any = None,
    std: float = 1.0,
    scale: Any = None,
) -> TTM:
    """A random :class:`~tensornet.TTM`; give ``row_shape``/``col_shape`` to fix either (other arguments as :func:`tts`)."""
    rows, cols = resolve(draw, row_shape, None), resolve(draw, col_shape, None)
    size = st.integers(1, max_size)
    if rows is None and cols is None:
        element = st.tuples(size, size, st.integers(1, max_rank))
        elements = draw(st.lists(element, min_size=min_ncores, max_size=max_ncores))
    else:
        d = len(rows if rows is not None else cols)
        row = st.just(0) if rows is not None else size
        col = st.just(0) if cols is not None else size
        elements = draw(st.lists(st.tuples(row, col, st.integers(1, max_rank)), min_size=d, max_size=d))
    rows = tuple(int(m) for m in rows) if rows is not None else tuple(e[0] for e in elements)
    cols = tuple(int(n) for n in cols) if cols is not None else tuple(e[1] for e in elements)
    if len(rows) != len(cols):
        raise ValueError(f"ttms: row_shape {rows} and col_shape {cols} must have one entry per core each")
    sizes = [m * n for m, n in zip(rows, cols)]
    bonds = _bonds("ttms", resolve(draw, ranks, None), sizes, [e[2] for e in elements][:-1])
    dtype = resolve(draw, dtype, dtypes())
    seed = draw(SEEDS)
    cores = _draw.cores_from_seed(list(zip(rows, cols)), bonds, seed, std=std, complex_=is_complex(dtype))
    return _finish(draw, TTM, cores, backend, dtype, scale)


# --- the same tensor in other cores ------------------------------------------------------------------------
def _default_condition(train: Any) -> float:
    single = "float32" in str(train.dtype) or "complex64" in str(train.dtype)
    return 2.0**3 if single else 2.0**10


def gauge_equivalent(
    t: TT | TTM,
    *,
    kinds: Sequence[str] = _gauge.KINDS,
    max_condition: float | None = None,
    edge: bool = True,
) -> st.SearchStrategy[Any]:
    """A train representing ``t``'s tensor in other cores (:func:`tensornet.testing.regauge`).

    Each bond is transformed by a random invertible matrix of a drawn kind (``"monomial"``: signed
    permutations times powers of two, exact; ``"orthogonal"``; ``"general"``: condition number a drawn power of
    two up to ``max_condition``), and, with ``edge``, scaled by ``2^e_k`` with ``e_k`` drawn up to the largest
    that keeps every core within the dtype's range (half the draws at that limit with alternating signs, as
    ``regauge(..., exponents="edge")``), so single cores sit near overflow or underflow while the tensor
    stays the same. Shrinks towards a monomial transform of condition 1 and no scaling.

    ``max_condition`` defaults to ``2^10`` in float64/complex128 and ``2^3`` in float32/complex64; properties
    exact for ``t`` hold for the drawn train to ``tensornet.testing.gauge_rtol(t, max_condition)`` plus the
    tolerance of the operation compared. A train with one core has no bond and is returned as is. Use
    ``st.data()`` or ``tts(...).flatmap(lambda t: gauge_equivalent(t).map(lambda g: (t, g)))`` to draw both.

    Raises
    ------
    TypeError
        ``t`` not a train.
    ValueError
        ``kinds`` empty or holding an unknown kind; ``max_condition`` not a finite number >= 1.
    """
    _train_checks.check_train("gauge_equivalent", t, "t")
    if not kinds or any(k not in _gauge.KINDS for k in kinds):
        raise ValueError(
            f"gauge_equivalent: kinds must be a non-empty subset of {_gauge.KINDS}, got {kinds!r}"
        )
    limit = _default_condition(t) if max_condition is None else max_condition
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not 1 <= limit < math.inf:
        raise ValueError(
            f"gauge_equivalent: max_condition must be a finite number >= 1, got {max_condition!r}"
        )
    return _regauged(t, tuple(kinds), math.floor(math.log2(limit)), edge)


@st.composite
def _regauged(draw: Any, t: Any, kinds: tuple[str, ...], steps: int, edge: bool) -> Any:
    # every choice is drawn whatever the branch: hypothesis prefers shorter choice sequences, and a branch
    # that skipped a draw would count as simpler than the one the strategy means to shrink to
    kind = draw(st.sampled_from(kinds))
    power = draw(st.integers(0, steps))
    condition = 1.0 if kind == "orthogonal" else 2.0**power
    seed = draw(SEEDS)
    out = _gauge.transformed(t, np.random.default_rng(seed), kind, condition)
    if edge and t.ncores > 1:
        bound, bonds = _gauge.exponent_limit(out), t.ncores - 1
        exponents = draw(st.lists(st.integers(-bound, bound), min_size=bonds, max_size=bonds))
        at_edge, sign = draw(st.booleans()), draw(st.sampled_from([1, -1]))
        if at_edge:  # half the draws at the edge itself, which uniform exponents rarely reach
            exponents = _gauge.edge_exponents(bonds, bound, sign)
        out = _gauge.scaled(out, exponents)
    return out


# --- edge cases for users' property tests ---------------------------------------------------------------
@st.composite
def zero_tts(draw: Any, **kwargs: Any) -> TT:
    """A TT whose tensor is exactly zero although its ranks need not be 1.

    One drawn core is zeroed. Keyword arguments as :func:`tts`.
    """
    train = draw(tts(**kwargs))
    k = draw(st.integers(0, train.ncores - 1))
    cores = list(train.cores)
    cores[k] = cores[k] * 0.0
    return TT(cores)


@st.composite
def redundant_tts(draw: Any, **kwargs: Any) -> TT:
    """A TT stored with ranks above its TT ranks: ``a + c a`` for a drawn TT ``a``.

    ``c`` is in [0.5, 2] (stored ranks ``2 r``, tensor ``(1 + c) a`` of a's TT ranks; rounding must shrink
    them). Keyword arguments as :func:`tts`.
    """
    train = draw(tts(**kwargs))
    factor = draw(st.floats(0.5, 2.0))
    return _ops.add(train, _ops.scale(train, factor))


@st.composite
def scaled_tts(draw: Any, *, exponent: Any = None, **kwargs: Any) -> TT:
    """A TT multiplied by ``10 ** exponent`` on one drawn core.

    The exponent is by default ``+-100`` for float64 and ``+-30`` for float32 (entries near the ends of the
    dtype's range: guarantees must hold at every finite scale). Keyword arguments as :func:`tts`.
    """
    train = draw(tts(**kwargs))
    limit = 30 if "float32" in str(train.dtype) or "complex64" in str(train.dtype) else 100
    power = resolve(draw, exponent, st.sampled_from([-limit, limit]))
    k = draw(st.integers(0, train.ncores - 1))
    cores = list(train.cores)
    cores[k] = cores[k] * 10.0**power
    return TT(cores)


@st.composite
def orthogonal_tts(draw: Any, *, center: Any = None, **kwargs: Any) -> TT:
    """A TT orthogonalised around a drawn (or given) core.

    Cores are left-orthogonal before ``center``, right-orthogonal after it (:func:`tensornet.orthogonalize`).
    Keyword arguments as :func:`tts`.
    """
    train = draw(tts(**kwargs))
    position = resolve(draw, center, st.integers(0, train.ncores - 1))
    return orthogonalize(train, center=position)


@st.composite
def low_rank_arrays(
    draw: Any,
    *,
    shape: Any = None,
    max_ndim: int = 4,
    max_size: int = 5,
    max_rank: int = 3,
    backend: Any = None,
    dtype: Any = None,
) -> tuple[Any, tuple[int, ...]]:
    """``(array, ranks)``: a dense array whose TT ranks are exactly ``ranks`` (with the boundary 1s).

    The array is the full tensor of a random TT with reachable ranks (:func:`bond_ranks`); draws in
    which an unfolding's ``r_k``-th singular value is below ``1e-6`` of its largest (nearly rank-
    deficient, which a float32 round-trip could not tell apart) are rejected, so ``tt_svd(array,
    eps=1e-8)`` (1e-4 in float32) recovers ``ranks`` exactly.
    """
    shape = resolve(draw, shape, mode_shapes(max_ndim=max_ndim, max_size=max_size))
    bonds = draw(bond_ranks(shape, max_rank=max_rank))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = resolve(draw, dtype, dtypes())
    wide = "complex128" if is_complex(dtype) else None
    dense = np.asarray(random_tt(shape, bonds, seed=seed, dtype=wide).full())
    for k, r in enumerate(bonds):
        singular = np.linalg.svd(dense.reshape(int(np.prod(shape[: k + 1])), -1), compute_uv=False)
        assume(singular[r - 1] > 1e-6 * singular[0])
    train = TT([dense.reshape(1, -1, 1)])
    placed = train.to(resolve(draw, backend, backends()), dtype=dtype)
    xp_array = placed.cores[0]
    return xp_array.reshape(tuple(shape)), (1, *bonds, 1)
