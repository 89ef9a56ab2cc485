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
@given(tst.tts(dtype=tst.dtypes(complex=True)))
def test_tt_full_matches_product_of_core_slices(t):
    assert_close(t.full(), dense_tt(t), t.dtype)
    assert tuple(t.full().shape) == t.shape
    assert t.full().dtype == t.dtype


@given(tst.ttms(dtype=tst.dtypes(complex=True)))
def test_ttm_full_matches_product_of_core_slices(a):
    assert_close(a.full(), dense_ttm(a), a.dtype)
    assert tuple(a.full().shape) == a.shape == (int(np.prod(a.row_shape)), int(np.prod(a.col_shape)))


@given(tst.tts(dtype=tst.dtypes(complex=True)))
def test_tt_properties(t):
    d = len(t.shape)
    assert t.ndim == d and len(t.ranks) == d + 1 and t.ranks[0] == t.ranks[-1] == 1
    assert t.nparams == sum(int(np.prod(c.shape)) for c in t.cores)
    assert t.compression == pytest.approx(np.prod(t.shape) / t.nparams)
    assert t.backend in ("numpy", "torch")
    text = repr(t)
    assert text.startswith("TT(shape=") and str(t.ranks) in text and "params" in text and "[" not in text


@given(tst.ttms(dtype=tst.dtypes(complex=True)))
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
    t = draw(tst.tts(dtype=tst.dtypes(complex=True)))
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
    np.testing.assert_allclose(t[[0, 1]].full(), x[[0, 1]], atol=1e-12)  # a 1-D index array keeps the mode
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
        ([np.ones((1, 3, 1), dtype=bool)], TypeError, "floating point"),
        ([np.ones((1, 3, 1)), "core"], TypeError, "core 1 is a str"),
        ([np.ones((1, 3, 2)), np.ones((2, 3, 1), dtype=np.float32)], TypeError, "dtype"),
    ],
)
def test_bad_cores(cores, error, match):
    with pytest.raises(error, match=match):
        tn.TT(cores)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_half_precision_complex_cores_are_refused():
    with pytest.raises(TypeError, match="complex cores must be complex64 or complex128"):
        tn.TT([torch.ones((1, 3, 1), dtype=torch.complex32)])


def test_mixed_backends_refused():
    with pytest.raises(TypeError, match="different or unsupported libraries"):
        tn.TT([np.ones((1, 3, 2)), torch.ones((2, 3, 1), dtype=torch.float64)])


def test_operations_never_mutate_cores():
    core = np.ones((1, 3, 1))
    t = tn.TT([core])
    u = 2.0 * t
    assert np.all(core == 1.0) and np.all(t.cores[0] == 1.0) and np.all(u.cores[0] == 2.0)


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


# --- immutability and conversions: what a train promises about its memory ----------------------------
def test_numpy_cores_are_read_only_and_norm_cannot_be_changed_behind_the_trains_back():
    t = tn.random_tt((3, 4, 5), 2, seed=0)
    before = float(tn.norm(t))
    for core in t.cores:
        assert not core.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            core[0, 0, 0] += 100.0
    assert float(tn.norm(t)) == before
    for result in (t + t, 2.0 * t, tn.round(t, eps=1e-8), t[:, 1], tn.orthogonalize(t)):
        assert not any(c.flags.writeable for c in result.cores)


def test_constructor_copies_arrays_the_caller_can_still_write():
    core = np.ones((1, 3, 1))
    base = np.ones((2, 1, 3, 1))
    t, u = tn.TT([core]), tn.TT([base[0]])
    core[0, 0, 0] = 100.0
    base[0, 0, 0, 0] = 100.0
    assert np.all(t.full() == 1.0) and np.all(u.full() == 1.0)
    # a read-only view of writeable memory is copied too: the memory can still change through its base
    view = base[1].view()
    view.flags.writeable = False
    v = tn.TT([view])
    base[1, 0, 0, 0] = 7.0
    assert np.all(v.full() == 1.0)
    # cores of another train are shared, not copied: nobody can write them
    assert tn.TT(list(t.cores)).cores[0] is not None and np.shares_memory(
        tn.TT(list(t.cores)).cores[0], t.cores[0]
    )


def test_tt_svd_of_one_mode_and_full_do_not_share_memory_with_the_caller():
    x = np.arange(1.0, 6.0)
    t = tn.tt_svd(x)
    x[0] = 100.0
    assert float(t[0]) == 1.0
    dense = tn.full(t)
    dense[1] = -1.0  # full() returns the caller's own array, writeable
    assert float(t[1]) == 2.0


@pytest.mark.parametrize("source", ["numpy", "torch"])
@pytest.mark.parametrize("target", ["numpy", "torch"])
def test_to_is_always_a_copy(source, target):
    t = tn.random_tt((3, 4), 2, seed=1).to(source)
    u = t.to(target)
    before = np.array(as_numpy(t.cores[0]))
    if target == "torch":
        with torch.no_grad():
            u.cores[0].add_(5.0)  # training the torch copy in place
    else:
        with pytest.raises(ValueError, match="read-only"):
            u.cores[0][0, 0, 0] = 5.0
    np.testing.assert_array_equal(as_numpy(t.cores[0]), before)
    assert t.to().cores[0] is not t.cores[0]


def test_to_torch_keeps_the_graph_and_to_numpy_detaches():
    core = torch.ones((1, 3, 1), dtype=torch.float64, requires_grad=True)
    t = tn.TT([core])
    (t.to(dtype="float32").full().sum()).backward()
    assert core.grad is not None and torch.all(core.grad == 1.0)
    assert not t.to("numpy").cores[0].flags.writeable


def test_masked_cores_are_refused():
    core = np.ma.masked_array(np.ones((1, 3, 1)), mask=[[[0], [1], [0]]])
    with pytest.raises(TypeError, match="masked array"):
        tn.TT([core])


def test_no_implicit_conversion_or_truth_value():
    t = tn.random_tt((3, 4), 2, seed=1)
    with pytest.raises(TypeError, match=r"tn\.full"):
        np.asarray(t)
    with pytest.raises(TypeError, match=r"tn\.full"):
        np.array([t, t])
    with pytest.raises(TypeError, match="ambiguous"):
        bool(t)
    with pytest.raises(TypeError, match="ambiguous"):
        bool(tn.eye((2, 2)))
    assert isinstance(np.float64(2.0) * t, tn.TT)  # numpy scalars still defer to the train's operators


# --- index arrays -------------------------------------------------------------------------------------
@st.composite
def tt_and_array_index(draw):
    """A TT and an index with one 1-D integer array or boolean mask among ints and slices (numpy's rule)."""
    t = draw(tst.tts(max_ncores=4, max_size=5, max_rank=3, dtype=tst.dtypes(complex=True)))
    d = t.ncores
    at = draw(st.integers(0, d - 1))
    index = []
    for k, n in enumerate(t.shape):
        if k == at:
            if draw(st.booleans()):
                mask = draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
                index.append(np.array(mask))
            else:
                positions = draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=6))
                kind = draw(st.sampled_from(["list", "int64", "uint8", "torch"]))
                if kind == "uint8":
                    positions = [p % n for p in positions]
                index.append(
                    positions
                    if kind == "list"
                    else torch.tensor(positions)
                    if kind == "torch"
                    else np.array(positions, dtype=kind)
                )
        else:
            index.append(draw(st.one_of(st.integers(-n, n - 1), st.just(slice(None)))))
    return t, tuple(index)


@given(tt_and_array_index())
def test_index_arrays_match_numpy(case):
    t, index = case
    dense = as_numpy(t.full())
    expected = dense[tuple(as_numpy(i).astype(np.int64) if isinstance(i, torch.Tensor) else i for i in index)]
    advanced = [k for k, i in enumerate(index) if not isinstance(i, slice)]
    if advanced[-1] - advanced[0] + 1 != len(advanced):  # numpy moves the array's mode to the front
        with pytest.raises(IndexError, match="separated by a slice"):
            t[index]
        return
    result = t[index]
    value = result.full() if isinstance(result, tn.TT) else result
    assert_close(value, expected, t.dtype, scale=max(float(np.abs(dense).max()), 1e-300))


def test_index_array_errors_name_the_mode_and_gather():
    t = tn.random_tt((3, 4, 5), 2, seed=0)
    with pytest.raises(IndexError, match=r"modes \[0, 1\].*tn\.gather"):
        t[np.array([0, 1]), np.array([0, 1])]
    with pytest.raises(IndexError, match=r"1-D.*tn\.gather"):
        t[np.zeros((2, 2), dtype=int)]
    with pytest.raises(IndexError, match="position 5 in the array of mode 0"):
        t[[5]]
    with pytest.raises(IndexError, match="position 18446744073709551615"):
        t[np.array([2**64 - 1], dtype=np.uint64)]
    with pytest.raises(IndexError, match="selects nothing"):
        t[[]]
    with pytest.raises(IndexError, match="mask of mode 1 has length 2, not 4"):
        t[:, np.array([True, False])]
    with pytest.raises(TypeError, match="must hold integers"):
        t[[1.5]]
    with pytest.raises(TypeError, match="mode 0 got NoneType"):
        t[None]


def test_torch_cores_are_kept_as_given_and_in_place_updates_are_seen():
    # the README: torch cores are not copied (parameters train through a train), the package never writes
    # into them, and an in-place update by the caller (an optimizer step) is what the train then holds
    cores = [torch.randn(1, 3, 2, dtype=torch.float64), torch.randn(2, 4, 1, dtype=torch.float64)]
    before = [c.clone() for c in cores]
    t = tn.TT(cores)
    assert all(a is b for a, b in zip(t.cores, cores))
    for op in (lambda: tn.round(t + t, eps=1e-12), lambda: tn.norm(t), lambda: tn.tt_svd(t.full(), eps=0)):
        op()
    assert all(torch.equal(c, b) for c, b in zip(cores, before))  # nothing wrote into them
    with torch.no_grad():
        cores[0].mul_(2.0)
    assert torch.allclose(t.full(), 2.0 * tn.TT(before).full())
