"""TT-SVD, TTM-SVD, rounding and orthogonalisation: the eps guarantee, rank minimality, errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conftest import as_numpy, assert_close, rtol, torch
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet.testing import strategies as tst


def on(backend, dtype, array):
    """A numpy array on ``backend`` with ``dtype``."""
    return tn.TT([np.asarray(array).reshape(1, -1, 1)]).to(backend, dtype=dtype).cores[0].reshape(array.shape)


def rel_error(approx, exact):
    exact = as_numpy(exact)
    return np.linalg.norm(as_numpy(approx) - exact) / max(np.linalg.norm(exact), 1e-300)


def unfolding_min_ranks(x, eps):
    """Per unfolding k, the smallest rank whose discarded tail is <= eps / sqrt(d-1) * ||x||."""
    x = as_numpy(x)
    d = x.ndim
    threshold = eps / math.sqrt(max(d - 1, 1)) * np.linalg.norm(x)
    ranks = []
    for k in range(1, d):
        s = np.linalg.svd(x.reshape(int(np.prod(x.shape[:k])), -1), compute_uv=False)
        tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])
        ranks.append(max(1, int(np.nonzero(tail <= threshold**2)[0][0])))
    return ranks


@st.composite
def dense_case(draw):
    """A dense tensor: a random low-rank TT plus noise of a drawn level, on a drawn backend/dtype."""
    dtype = draw(tst.dtypes(complex=True))
    wide = "complex128" if "complex" in dtype else "float64"
    t = draw(tst.tts(backend="numpy", dtype=wide, max_size=4))
    noise = draw(st.sampled_from([0.0, 1e-6, 1e-2, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    x = t.full() + noise * rng.standard_normal(t.shape)
    if "complex" in dtype:
        x = x + 1j * noise * rng.standard_normal(t.shape)
    return on(draw(tst.backends()), dtype, x)


def double(dtype) -> bool:
    """float64 or complex128: the precision in which rank minimality is checked exactly."""
    return "float64" in str(dtype) or "complex128" in str(dtype)


eps_values = st.sampled_from([1e-1, 1e-2, 1e-4, 1e-8, 0.0])


@given(dense_case(), eps_values)
def test_tt_svd_meets_eps_with_minimal_ranks(x, eps):
    t, bound = tn.tt_svd(x, eps=eps, return_error=True)
    error = rel_error(t.full(), x)
    slack = rtol(x.dtype) * math.sqrt(x.ndim)  # rounding error of the SVDs themselves
    assert bound <= eps + 1e-15
    assert error <= bound * (1 + 1e-6) + slack
    # never larger than the per-unfolding minimal ranks of x (and never above the useful maximum)
    if double(x.dtype):
        assert all(r <= m for r, m in zip(t.ranks[1:-1], unfolding_min_ranks(x, eps)))
    assert all(r <= m for r, m in zip(t.ranks[1:-1], tn.shapes.useful_ranks(t.shape)))
    assert t.backend == tn.TT([x.reshape(1, -1, 1)]).backend and t.dtype == x.dtype


@given(tst.tts(backend="numpy", dtype=st.sampled_from(["float64", "complex128"])))
def test_tt_svd_round_trip_recovers_ranks(t):
    u = tn.tt_svd(t.full(), eps=1e-10)
    assert u.ranks == t.ranks  # strategies draw ranks within the useful maximum: generic TT has them
    assert rel_error(u.full(), t.full()) <= 1e-10


@given(dense_case(), st.integers(1, 3))
def test_tt_svd_max_rank(x, cap):
    t = tn.tt_svd(x, max_rank=cap)
    assert max(t.ranks) <= cap
    if x.ndim == 2:  # Eckart-Young: the truncated SVD is the best rank-cap approximation
        s = np.linalg.svd(as_numpy(x), compute_uv=False)
        best = math.sqrt(float(np.sum(s[cap:] ** 2))) / max(np.linalg.norm(s), 1e-300)
        assert rel_error(t.full(), x) <= best + rtol(x.dtype) * 10


def test_rank_cap_wins_over_eps_with_a_warning():
    x = np.random.default_rng(0).standard_normal((4, 4, 4))
    with pytest.warns(tn.RankCapWarning, match=r"max_rank kept the result from meeting eps=0.001.*bound is"):
        t, bound = tn.tt_svd(x, eps=1e-3, max_rank=2, return_error=True)
    assert max(t.ranks) == 2 and bound > 1e-3
    assert rel_error(t.full(), x) <= bound * (1 + 1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loose = tn.tt_svd(x, eps=0.5, max_rank=16)  # the cap does not bind: no warning
    assert rel_error(loose.full(), x) <= 0.5


def test_per_bond_max_rank():
    x = np.random.default_rng(0).standard_normal((3, 4, 5, 2))
    assert tn.tt_svd(x, max_rank=(1, 2, 2)).ranks == (1, 1, 2, 2, 1)


def test_zero_tensor_does_not_divide_by_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t, bound = tn.tt_svd(np.zeros((3, 4, 5)), eps=1e-3, return_error=True)
        r = tn.round(t + t, eps=1e-3)
    assert t.ranks == (1, 1, 1, 1) and bound == 0.0 and r.ranks == (1, 1, 1, 1)
    assert np.all(t.full() == 0) and np.all(np.isfinite(r.full()))


def test_one_dimensional_tensor():
    x = np.arange(1.0, 6.0)
    t = tn.tt_svd(x, eps=1e-3)
    assert t.ranks == (1, 1) and np.allclose(t.full(), x)


# --- TTM-SVD ---------------------------------------------------------------------------------------
@given(
    tst.ttms(backend="numpy", dtype=st.sampled_from(["float64", "complex128"])),
    st.sampled_from(["numpy", *tst.available_backends()]),
)
def test_ttm_svd_round_trip(a, backend):
    w = on(backend, str(a.dtype), a.full())
    b = tn.ttm_svd(w, a.row_shape, a.col_shape, eps=1e-10)
    assert b.row_shape == a.row_shape and b.col_shape == a.col_shape and b.ranks == a.ranks
    assert rel_error(b.full(), w) <= 1e-10


@given(
    tst.ttm_shapes(min_ncores=2), st.sampled_from([1e-1, 1e-3]), st.integers(0, 99), tst.dtypes(complex=True)
)
def test_ttm_svd_meets_eps(shapes, eps, seed, dtype):
    rows, cols = shapes
    rng = np.random.default_rng(seed)
    size = (math.prod(rows), math.prod(cols))
    w = rng.standard_normal(size) + (1j * rng.standard_normal(size) if "complex" in dtype else 0)
    w = on("numpy", dtype, w)
    a = tn.ttm_svd(w, rows, cols, eps=eps)
    assert rel_error(a.full(), w) <= eps + rtol(dtype) * 10


def test_ttm_svd_shape_errors():
    w = np.ones((6, 8))
    with pytest.raises(ValueError, match=r"row_shape \(2, 2\) multiplies to 4 but the matrix has 6 rows"):
        tn.ttm_svd(w, (2, 2), (2, 4))
    with pytest.raises(ValueError, match="different lengths"):
        tn.ttm_svd(w, (2, 3), (8,))
    with pytest.raises(ValueError, match="2-D matrix"):
        tn.ttm_svd(np.ones((2, 3, 8)), (2, 3), (8,))
    with pytest.raises(TypeError, match="sequence of positive ints"):
        tn.ttm_svd(w, (2, 3.0), (2, 4))


# --- rounding ----------------------------------------------------------------------------------------
@given(
    st.one_of(
        tst.tts(max_rank=3, dtype=tst.dtypes(complex=True)),
        tst.ttms(max_rank=3, dtype=tst.dtypes(complex=True)),
    ),
    st.sampled_from([1e-1, 1e-3, 1e-8]),
)
def test_round_meets_eps(t, eps):
    noisy = t + tn.scale(t, 0.5) + tn.scale(t * t, 1e-3)
    r, bound = tn.round(noisy, eps=eps, return_error=True)
    exact = as_numpy(noisy.full())
    assert bound <= eps + 1e-15
    assert rel_error(r.full(), exact) <= bound * (1 + 1e-6) + rtol(t.dtype) * math.sqrt(t.ncores) * 10
    assert type(r) is type(t) and r.dtype == t.dtype
    assert all(a <= b for a, b in zip(r.ranks, noisy.ranks))


@given(tst.tts(backend="numpy", dtype=st.sampled_from(["float64", "complex128"])))
def test_round_of_sum_recovers_ranks(t):
    r = tn.round(t + t + t, eps=1e-10)
    assert r.ranks == t.ranks
    assert rel_error(r.full(), 3 * t.full()) <= 1e-10


@given(tst.tts(max_rank=3), st.integers(1, 2))
def test_round_max_rank(t, cap):
    r = tn.round(t + t, max_rank=cap)
    assert max(r.ranks) <= cap


# --- orthogonalisation --------------------------------------------------------------------------------
@st.composite
def orth_case(draw):
    t = draw(st.one_of(tst.tts(), tst.ttms()))
    center = draw(st.one_of(st.integers(-t.ncores, t.ncores - 1), st.sampled_from(["left", "right"])))
    return t, center


@given(orth_case())
def test_orthogonalize(case):
    t, center = case
    o = tn.orthogonalize(t, center=center)
    assert_close(o.full(), t.full(), t.dtype, float(np.abs(as_numpy(t.full())).max()) * t.ncores)
    c = {"left": t.ncores - 1, "right": 0}.get(center, center) % t.ncores
    for k, core in enumerate(o.cores):
        m = as_numpy(core).reshape(core.shape[0], -1, core.shape[-1])
        if k < c:
            gram = m.reshape(-1, m.shape[2]).T @ m.reshape(-1, m.shape[2])
        elif k > c:
            gram = m.reshape(m.shape[0], -1) @ m.reshape(m.shape[0], -1).T
        else:
            continue
        np.testing.assert_allclose(gram, np.eye(gram.shape[0]), atol=rtol(t.dtype) * 10)


def test_orthogonalize_bad_center():
    t = tn.random_tt((2, 3, 4), 2, seed=0)
    with pytest.raises(ValueError, match="center 3 is out of range"):
        tn.orthogonalize(t, center=3)
    with pytest.raises(TypeError, match="center must be an int"):
        tn.orthogonalize(t, center="middle")


# --- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -1e-3}, ValueError, "eps must be finite and >= 0"),
        ({"eps": float("nan")}, ValueError, "eps must be finite and >= 0"),
        ({"eps": float("inf")}, ValueError, "eps must be finite and >= 0"),
        ({"eps": "small"}, TypeError, "eps must be a real number"),
        ({"eps": True}, TypeError, "eps must be a real number"),
        ({"max_rank": 0}, ValueError, "max_rank must be >= 1"),
        ({"max_rank": -2}, ValueError, "max_rank must be >= 1"),
        ({"max_rank": 2.5}, TypeError, "max_rank must be an int"),
        (
            {"max_rank": (2, 2, 2, 2, 2)},
            ValueError,
            r"max_rank has 5 entries but the train has 3 cores \(2 bonds\)",
        ),
        ({"max_rank": (2, 2, 2, 2)}, ValueError, "max_rank .* must start and end with 1"),
    ],
)
def test_bad_options(kwargs, error, match):
    x = np.ones((2, 3, 4))
    with pytest.raises(error, match=f"tt_svd: {match}"):
        tn.tt_svd(x, **kwargs)
    with pytest.raises(error, match=f"round: {match}"):
        tn.round(tn.random_tt((2, 3, 4), 2, seed=0), **kwargs)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (np.array([1.0, np.nan, 2.0]), ValueError, "NaN or inf"),
        (np.array([[1.0, np.inf]]), ValueError, "NaN or inf"),
        (np.ones((2, 0, 3)), ValueError, "zero-size"),
        (np.ones((2, 3), dtype=np.int64), TypeError, "int64 is not supported"),
        (np.ones((2, 3), dtype=np.int64), TypeError, "int64 is not supported"),
        (np.float64(3.0), TypeError, "expected a numpy array"),
        (np.array(3.0), ValueError, "0-d array"),
        ([[1.0, 2.0]], TypeError, "expected a numpy array or torch tensor, got list"),
    ],
)
def test_bad_arrays(x, error, match):
    with pytest.raises(error, match=match):
        tn.tt_svd(x, eps=1e-3)


def test_round_of_nan_train_is_refused():
    t = tn.TT([np.full((1, 2, 1), np.nan)])
    with pytest.raises(ValueError, match="NaN or inf"):
        tn.round(t, eps=1e-3)


def test_torch_input_keeps_backend_and_gradients():
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    t = tn.tt_svd(x, eps=1e-12)
    assert t.backend == "torch" and t.dtype == torch.float64
    (t.full() ** 2).sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=1e-8, atol=1e-8)


@given(dense_case(), st.sampled_from([1e-150, 1e150]), st.sampled_from([1e-2, 1e-6]))
def test_tt_svd_and_round_with_huge_and_tiny_values(x, factor, eps):
    if "float32" in str(x.dtype) or "complex64" in str(x.dtype):
        factor = factor ** (30 / 150)  # keep the values inside float32's range (1e-38 .. 3e38)
    x = x * factor
    t = tn.tt_svd(x, eps=eps)
    assert np.all(np.isfinite(as_numpy(t.full())))
    assert rel_error(t.full(), x) <= eps + rtol(x.dtype) * math.sqrt(x.ndim) * 10
    r = tn.round(t + t, eps=eps)
    assert rel_error(r.full(), 2 * as_numpy(x)) <= 2 * eps + rtol(x.dtype) * math.sqrt(x.ndim) * 10


# --- eps of any finite size, masked arrays -------------------------------------------------------------
@given(
    tst.tts(backend="numpy", dtype="float64", max_size=4),
    st.floats(1.0, 1.7e308),
    st.sampled_from([1e-300, 1.0, 1e300]),
)
def test_any_finite_eps_of_at_least_one_means_rank_one_is_fine(t, eps, scale):
    # tt_svd raised OverflowError for eps = 1e300 (the threshold's ratio to the top value was squared)
    x = t.full() * scale
    result, bound = tn.tt_svd(x, eps=eps, return_error=True)
    assert all(r == 1 for r in result.ranks) and bound <= 1.0 + 1e-12
    rounded, bound = tn.round(t * scale + t * scale, eps=eps, return_error=True)
    assert all(r == 1 for r in rounded.ranks) and bound <= 1.0 + 1e-12
    assert all(r == 1 for r in tn.ttm_svd(x.reshape(-1, 1), (x.size,), (1,), eps=eps).ranks)


@pytest.mark.parametrize("eps", [1.0, 1e10, 1e300, 1.7e308])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_the_reported_huge_eps_cases(eps, backend):
    x = tn.TT([np.random.default_rng(0).random((1, 60, 1))]).to(backend).full().reshape(3, 4, 5)
    assert tn.tt_svd(x, eps=eps).ranks == (1, 1, 1, 1)
    assert tn.reshape(tn.tt_svd(x.reshape(12, 5)), (3, 4, 5), eps=eps).ranks[1] == 1


def test_masked_arrays_are_refused_with_a_way_out():
    x = np.ma.masked_array(np.random.default_rng(0).random((3, 4, 5)), mask=np.zeros((3, 4, 5)))
    with pytest.raises(TypeError, match=r"tt_svd: the array is a numpy masked array.*x\.filled"):
        tn.tt_svd(x)
    with pytest.raises(TypeError, match="ttm_svd: the array is a numpy masked array"):
        tn.ttm_svd(x.reshape(12, 5), (3, 4), (5, 1))
    assert tn.tt_svd(x.data, eps=1e-12).shape == (3, 4, 5)


def test_tt_svd_kernel_returns_its_bound_and_the_public_functions_warn():
    # the kernel reports what it discarded and warns nothing; tt_svd and ttm_svd warn at the caller's line
    from tensornet._truncation import ErrorLog
    from tensornet.decomp import _tt_svd_cores

    x = np.random.default_rng(0).standard_normal((4, 4, 4))
    log = ErrorLog("tt_svd", 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cores, bound = _tt_svd_cores(x, 1e-3, [2, 2], log)
    assert log.capped and bound > 1e-3
    assert rel_error(tn.TT(cores).full(), x) <= bound * (1 + 1e-9)
    for call in (
        lambda: tn.tt_svd(x, eps=1e-3, max_rank=2, return_error=True),
        lambda: tn.ttm_svd(x.reshape(16, 4), (4, 4), (2, 2), eps=1e-3, max_rank=1, return_error=True),
    ):
        with pytest.warns(tn.RankCapWarning) as record:
            _, public_bound = call()
        assert public_bound > 1e-3 and {w.filename for w in record} == {__file__}


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_eps_of_exactly_one_cuts_every_bond_to_rank_one(backend):
    # found by the ci profile: eps = 1 spread as 1/sqrt(d - 1) per bond kept rank 2 on a 4-mode train
    cores = [
        [[[0.2762, 0.6568], [0.2641, -1.0417], [0.7237, 0.3568], [-0.4292, 0.4645]]],
        [
            [[0.4263, 0.993, 0.1454], [0.1748, 0.454, 0.186]],
            [[-0.6774, 0.2796, 0.497], [-0.4167, 0.233, 0.5865]],
        ],
        [[[-0.9599], [0.6597], [0.509]], [[-0.1541], [0.875], [-0.5015]], [[0.6992], [0.736], [0.1061]]],
        [[[-0.0881]]],
    ]
    t = tn.TT([np.array(c) for c in cores]).to(backend)
    x = t.full()
    result, bound = tn.tt_svd(x, eps=1.0, return_error=True)
    assert result.ranks == (1, 1, 1, 1, 1) and bound <= 1.0  # was (1, 2, 2, 1, 1)
    assert rel_error(result.full(), x) <= 1.0
    rounded, bound = tn.round(t + t, eps=1.0, return_error=True)
    assert rounded.ranks == (1, 1, 1, 1, 1) and bound <= 1.0
