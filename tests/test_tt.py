"""The TT / TTM datatypes: validation, properties, dense form, conversion, indexing."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from conftest import as_numpy, assert_close, dense_tt, dense_ttm, torch
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet.testing import strategies as tst


def cores_of(shape, ranks, extra=()):
    full = (1, *ranks, 1)
    return [np.ones((full[k], *extra, n, full[k + 1])) for k, n in enumerate(shape)]


# --- properties and dense form ---------------------------------------------------------------------
@given(tst.tts())
def test_tt_full_matches_product_of_core_slices(t):
    assert_close(t.full(), dense_tt(t), t.dtype)
    assert tuple(t.full().shape) == t.shape
    assert t.full().dtype == t.dtype


@given(tst.ttms())
def test_ttm_full_matches_product_of_core_slices(a):
    assert_close(a.full(), dense_ttm(a), a.dtype)
    assert tuple(a.full().shape) == a.shape == (int(np.prod(a.row_shape)), int(np.prod(a.col_shape)))


@given(tst.tts())
def test_tt_properties(t):
    d = len(t.shape)
    assert t.ndim == d and len(t.ranks) == d + 1 and t.ranks[0] == t.ranks[-1] == 1
    assert t.nparams == sum(int(np.prod(c.shape)) for c in t.cores)
    assert t.compression == pytest.approx(np.prod(t.shape) / t.nparams)
    assert t.backend in ("numpy", "torch")
    text = repr(t)
    assert text.startswith("TT(shape=") and str(t.ranks) in text and "params" in text and "[" not in text


@given(tst.ttms())
def test_ttm_properties_and_transpose(a):
    assert a.T.row_shape == a.col_shape and a.T.col_shape == a.row_shape
    assert_close(a.T.full(), as_numpy(a.full()).T, a.dtype)
    assert "row_shape" in repr(a)


def test_immutable():
    t = tn.random_tt((2, 3), 2, seed=0)
    with pytest.raises(AttributeError, match="immutable"):
        t.foo = 1
    with pytest.raises(AttributeError, match="immutable"):
        t._cores = ()


def test_pickle_round_trip():
    t = tn.random_ttm((2, 3), (3, 2), 2, seed=0)
    u = pickle.loads(pickle.dumps(t))
    assert isinstance(u, tn.TTM) and u.ranks == t.ranks
    np.testing.assert_array_equal(u.full(), t.full())


# --- conversion ----------------------------------------------------------------------------------
@given(tst.tts(backend="numpy", dtype="float64"), st.sampled_from(["float32", "float64"]))
def test_to_torch_and_back(t, dtype):
    u = t.to("torch", dtype=dtype)
    assert u.backend == "torch" and str(u.dtype) == f"torch.{dtype}"
    v = u.to("numpy")
    assert v.backend == "numpy" and str(v.dtype) == dtype
    assert_close(v.full(), t.full(), dtype)
    assert t.numpy().backend == "numpy"


def test_to_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        tn.random_tt((2, 2), 1, seed=0).to("jax")


# --- indexing ------------------------------------------------------------------------------------
@st.composite
def tt_and_index(draw):
    t = draw(tst.tts())
    index = []
    for n in t.shape:
        kind = draw(st.sampled_from(["int", "neg", "slice", "all"]))
        if kind == "int":
            index.append(draw(st.integers(0, n - 1)))
        elif kind == "neg":
            index.append(draw(st.integers(-n, -1)))
        elif kind == "slice":
            start = draw(st.integers(0, n - 1))
            stop = draw(st.integers(start + 1, n))
            index.append(slice(start, stop, draw(st.integers(1, 2))))
        else:
            index.append(slice(None))
    cut = draw(st.integers(0, len(index)))  # trailing modes left implicit
    return t, tuple(index[:cut]) if cut < len(index) else tuple(index)


@given(tt_and_index())
def test_indexing_matches_dense(case):
    t, index = case
    expected = as_numpy(t.full())[index]
    result = t[index] if index else t[...]
    value = result.full() if isinstance(result, tn.TT) else result
    assert_close(value, expected, t.dtype, scale=max(float(np.abs(as_numpy(t.full())).max()), 1e-300))


def test_indexing_ellipsis_and_errors():
    t = tn.random_tt((2, 3, 4), 2, seed=1)
    x = t.full()
    np.testing.assert_allclose(t[..., 1].full(), x[..., 1], atol=1e-12)
    np.testing.assert_allclose(t[1, ...].full(), x[1, ...], atol=1e-12)
    with pytest.raises(IndexError, match="out of range for mode 1 of size 3"):
        t[0, 3]
    with pytest.raises(IndexError, match="4 indices"):
        t[0, 0, 0, 0]
    with pytest.raises(IndexError, match="empty"):
        t[:, 2:2]
    with pytest.raises(TypeError, match="arrays of indices"):
        t[[0, 1]]
    with pytest.raises(IndexError, match="at most one Ellipsis"):
        t[..., 0, ...]


# --- construction errors -------------------------------------------------------------------------
def test_rank_chain_error_names_cores_and_sizes():
    a = np.ones((1, 4, 8, 3))
    b = np.ones((6, 4, 8, 1))
    with pytest.raises(
        ValueError, match=r"TTM: core 0 has shape \(1, 4, 8, 3\) but core 1 .*ranks must chain"
    ):
        tn.TTM([a, b])


@pytest.mark.parametrize(
    ("cores", "error", "match"),
    [
        ([], ValueError, "at least one core"),
        (np.ones((1, 2, 1)), TypeError, "list or tuple"),
        ([np.ones((2, 3))], ValueError, r"2-D\) but TT cores are 3-D"),
        ([np.ones((2, 3, 1))], ValueError, "first .boundary. rank must be 1"),
        ([np.ones((1, 3, 2))], ValueError, "last .boundary. rank must be 1"),
        ([np.ones((1, 0, 1))], ValueError, "zero-size"),
        ([np.ones((1, 3, 1), dtype=np.int64)], TypeError, "floating point"),
        ([np.ones((1, 3, 1), dtype=np.complex128)], TypeError, "complex"),
        ([np.ones((1, 3, 1)), "core"], TypeError, "core 1 is a str"),
        ([np.ones((1, 3, 2)), np.ones((2, 3, 1), dtype=np.float32)], TypeError, "dtype"),
    ],
)
def test_bad_cores(cores, error, match):
    with pytest.raises(error, match=match):
        tn.TT(cores)


def test_mixed_backends_refused():
    with pytest.raises(TypeError, match="different or unsupported libraries"):
        tn.TT([np.ones((1, 3, 2)), torch.ones((2, 3, 1), dtype=torch.float64)])


def test_cores_are_not_copied_or_mutated():
    core = np.ones((1, 3, 1))
    t = tn.TT([core])
    assert t.cores[0] is core
    u = 2.0 * t
    assert np.all(core == 1.0) and u.cores[0] is not core


@st.composite
def arbitrary_core_shapes(draw):
    """Lists of 3-D shapes that may or may not chain, with boundary ranks that may be wrong."""
    d = draw(st.integers(1, 4))
    return [tuple(draw(st.lists(st.integers(1, 3), min_size=3, max_size=3))) for _ in range(d)]


@given(arbitrary_core_shapes())
def test_malformed_cores_raise_value_error_or_build(shapes):
    cores = [np.ones(s) for s in shapes]
    chains = (
        shapes[0][0] == 1 and shapes[-1][2] == 1 and all(a[2] == b[0] for a, b in itertools.pairwise(shapes))
    )
    if chains:
        assert tn.TT(cores).shape == tuple(s[1] for s in shapes)
    else:
        with pytest.raises(ValueError, match="TT: core"):
            tn.TT(cores)
