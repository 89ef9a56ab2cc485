"""Hypothesis strategies for TT / TTM objects, shapes, ranks, backends and dtypes.

For property tests of your own tensor code::

    from hypothesis import given
    from tensornet.testing import strategies as tst

    @given(tst.tts(max_ncores=4, max_rank=3))
    def test_norm_is_nonnegative(t):
        assert float(tn.norm(t)) >= 0

Every strategy draws a seed and builds cores with :func:`tensornet.random_tt` (fast even for large
cores; shrinking goes towards smaller shapes, ranks and seed 0). Shapes can be fixed by passing a tuple,
or left to the strategy. ``backend`` / ``dtype`` are fixed values, strategies or None (drawn from
:func:`dtypes`: real; pass ``dtype=dtypes(complex=True)`` to draw complex trains too, whose cores are
circular complex normal).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

from .. import ops as _ops
from ..decomp import orthogonalize
from ..random import random_tt, random_ttm
from ..tt import TT, TTM

__all__ = [
    "available_backends",
    "backends",
    "bond_ranks",
    "complex_dtypes",
    "core_shapes",
    "dtypes",
    "low_rank_arrays",
    "mode_shapes",
    "orthogonal_tts",
    "redundant_tts",
    "scaled_tts",
    "ttm_shapes",
    "ttms",
    "tts",
    "zero_tts",
]


def available_backends() -> list[str]:
    """'numpy' and, when torch is installed, 'torch'."""
    found = ["numpy"]
    if importlib.util.find_spec("torch") is not None:
        found.append("torch")
    return found


def backends() -> st.SearchStrategy[str]:
    """One of :func:`available_backends`."""
    return st.sampled_from(available_backends())


def dtypes(*, complex: bool = False) -> st.SearchStrategy[str]:
    """'float64' or 'float32', and with ``complex`` also 'complex128' or 'complex64'."""
    return st.sampled_from(
        ["float64", "float32", "complex128", "complex64"] if complex else ["float64", "float32"]
    )


def complex_dtypes() -> st.SearchStrategy[str]:
    """'complex128' or 'complex64'."""
    return st.sampled_from(["complex128", "complex64"])


def _is_complex(dtype: Any) -> bool:
    return "complex" in str(dtype)


def mode_shapes(*, min_ndim: int = 1, max_ndim: int = 4, min_size: int = 1, max_size: int = 5) -> Any:
    """Tensor mode sizes ``(n_1, ..., n_d)``."""
    return st.lists(st.integers(min_size, max_size), min_size=min_ndim, max_size=max_ndim).map(tuple)


@st.composite
def ttm_shapes(
    draw: Any, *, min_ncores: int = 1, max_ncores: int = 3, max_size: int = 4
) -> tuple[tuple[int, ...], ...]:
    """``(row_shape, col_shape)`` of equal length (the number of cores)."""
    d = draw(st.integers(min_ncores, max_ncores))
    rows = tuple(draw(st.lists(st.integers(1, max_size), min_size=d, max_size=d)))
    cols = tuple(draw(st.lists(st.integers(1, max_size), min_size=d, max_size=d)))
    return rows, cols


@st.composite
def bond_ranks(
    draw: Any, mode_sizes: Sequence[int], *, max_rank: int = 3, clip: bool = True
) -> tuple[int, ...]:
    """Bond ranks ``(r_1..r_{d-1})`` for modes of ``mode_sizes``, each in ``1..max_rank``.

    Mode sizes are ``m_k n_k`` for a TTM. With ``clip`` (default) they are also reachable: ``r_k <= r_{k-1}
    n_k`` and ``r_k <= n_{k+1} r_{k+1}``, so a generic TT with these ranks has exactly these TT ranks.
    """
    sizes = [int(n) for n in mode_sizes]
    ranks = [1]
    for k in range(len(sizes) - 1):
        limit = min(max_rank, ranks[-1] * sizes[k]) if clip else max_rank
        ranks.append(draw(st.integers(1, max(1, limit))))
    ranks.append(1)
    if clip:
        for k in range(len(sizes) - 1, 0, -1):
            ranks[k] = min(ranks[k], sizes[k] * ranks[k + 1])
    return tuple(ranks[1:-1])


def core_shapes(mode_sizes: Sequence[int], ranks: Sequence[int]) -> list[tuple[int, int, int]]:
    """TT core shapes ``(r_{k-1}, n_k, r_k)`` for bond ``ranks`` (without the boundary 1s)."""
    full = (1, *ranks, 1)
    return [(full[k], int(n), full[k + 1]) for k, n in enumerate(mode_sizes)]


def _resolve(draw: Any, value: Any, default: Any) -> Any:
    if value is None:
        return draw(default)
    if isinstance(value, st.SearchStrategy):
        return draw(value)
    return value


def _placed(train: Any, backend: str, dtype: str) -> Any:
    return train.to(backend, dtype=dtype)


@st.composite
def tts(
    draw: Any,
    *,
    shape: Any = None,
    ranks: Any = None,
    max_ncores: int = 4,
    max_size: int = 5,
    max_rank: int = 3,
    backend: Any = None,
    dtype: Any = None,
    std: float = 1.0,
) -> TT:
    """A random :class:`~tensornet.TT` (entries of std ``std``) with at most ``max_ncores`` cores."""
    shape = _resolve(draw, shape, mode_shapes(max_ndim=max_ncores, max_size=max_size))
    ranks = _resolve(draw, ranks, bond_ranks(shape, max_rank=max_rank))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = _resolve(draw, dtype, dtypes())
    train = random_tt(shape, ranks, std=std, seed=seed, dtype="complex128" if _is_complex(dtype) else None)
    return _placed(train, _resolve(draw, backend, backends()), dtype)


@st.composite
def ttms(
    draw: Any,
    *,
    row_shape: Any = None,
    col_shape: Any = None,
    ranks: Any = None,
    max_ncores: int = 3,
    max_size: int = 4,
    max_rank: int = 3,
    backend: Any = None,
    dtype: Any = None,
    std: float = 1.0,
) -> TTM:
    """A random :class:`~tensornet.TTM`; give ``row_shape``/``col_shape`` to fix either."""
    if row_shape is None and col_shape is None:
        row_shape, col_shape = draw(ttm_shapes(max_ncores=max_ncores, max_size=max_size))
    else:
        known = row_shape if row_shape is not None else col_shape
        d = len(_resolve(draw, known, None))
        other = st.lists(st.integers(1, max_size), min_size=d, max_size=d).map(tuple)
        row_shape = _resolve(draw, row_shape, other)
        col_shape = _resolve(draw, col_shape, other)
    sizes = [m * n for m, n in zip(row_shape, col_shape)]
    ranks = _resolve(draw, ranks, bond_ranks(sizes, max_rank=max_rank))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = _resolve(draw, dtype, dtypes())
    wide = "complex128" if _is_complex(dtype) else None
    train = random_ttm(row_shape, col_shape, ranks, std=std, seed=seed, dtype=wide)
    return _placed(train, _resolve(draw, backend, backends()), dtype)


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
    power = _resolve(draw, exponent, st.sampled_from([-limit, limit]))
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
    position = _resolve(draw, center, st.integers(0, train.ncores - 1))
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
    shape = _resolve(draw, shape, mode_shapes(max_ndim=max_ndim, max_size=max_size))
    bonds = draw(bond_ranks(shape, max_rank=max_rank))
    seed = draw(st.integers(0, 2**32 - 1))
    dtype = _resolve(draw, dtype, dtypes())
    wide = "complex128" if _is_complex(dtype) else None
    dense = np.asarray(random_tt(shape, bonds, seed=seed, dtype=wide).full())
    for k, r in enumerate(bonds):
        singular = np.linalg.svd(dense.reshape(int(np.prod(shape[: k + 1])), -1), compute_uv=False)
        assume(singular[r - 1] > 1e-6 * singular[0])
    train = TT([dense.reshape(1, -1, 1)])
    placed = _placed(train, _resolve(draw, backend, backends()), dtype)
    xp_array = placed.cores[0]
    return xp_array.reshape(tuple(shape)), (1, *bonds, 1)
