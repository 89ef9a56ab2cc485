"""Metamorphic tests: the same tensor stored in other cores (tensornet.testing.regauge, tst.gauge_equivalent)
has the same norm, inner products, entries, rounding, orthogonalisation and layer outputs, on numpy and torch,
real and complex, with ill-conditioned bond transforms and cores pushed to the ends of the dtype's range."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import as_numpy, rtol
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet.testing import gauge_rtol, regauge
from tensornet.testing import strategies as tst

ANY_DTYPE = tst.dtypes(complex=True)


def condition(t) -> float:
    """The largest condition number gauge_equivalent draws by default for t's dtype."""
    return 2.0**3 if any(s in str(t.dtype) for s in ("float32", "complex64")) else 2.0**10


def tolerance(t) -> float:
    """What regauging costs (gauge_rtol) plus what the operation compared costs in t's dtype."""
    return gauge_rtol(t, condition(t)) + rtol(t.dtype)


def pair(data, **kwargs):
    t = data.draw(tst.tts(dtype=ANY_DTYPE, **kwargs))
    return t, data.draw(tst.gauge_equivalent(t))


def like(t, data, **kwargs):
    """Another train of t's shape, backend and dtype."""
    return data.draw(
        tst.tts(shape=t.shape, backend=t.backend, dtype=tn._backend.dtype_name(t.dtype), **kwargs)
    )


@given(st.data())
def test_gauge_equivalent_trains_are_the_same_tensor_in_other_cores(data):
    t, g = pair(data)
    assert (g.shape, g.ranks, g.backend, g.dtype) == (t.shape, t.ranks, t.backend, t.dtype)
    assert all(bool(torch.isfinite(torch.as_tensor(as_numpy(c))).all()) for c in g.cores)
    tn.testing.assert_allclose(g, t, rtol=tolerance(t))


@given(st.data())
def test_norm_is_gauge_invariant(data):
    t, g = pair(data)
    expected = float(tn.norm(t))
    assert abs(float(tn.norm(g)) - expected) <= tolerance(t) * expected


@given(st.data())
def test_dot_is_gauge_invariant(data):
    a, ga = pair(data)
    b = like(a, data)
    gb = data.draw(tst.gauge_equivalent(b))
    expected = complex(as_numpy(tn.dot(a, b)))
    scale = float(tn.norm(a)) * float(tn.norm(b))
    for x, y in ((ga, gb), (ga, b), (a, gb)):
        assert abs(complex(as_numpy(tn.dot(x, y))) - expected) <= 2 * tolerance(a) * scale


@given(st.data())
def test_gather_is_gauge_invariant(data):
    t, g = pair(data)
    rows = data.draw(st.integers(1, 6))
    index = np.stack([np.arange(rows) * (k + 1) % n for k, n in enumerate(t.shape)], axis=1)
    got, expected = as_numpy(tn.gather(g, index)), as_numpy(tn.gather(t, index))
    assert np.max(np.abs(got - expected)) <= tolerance(t) * float(tn.norm(t))


@given(st.data(), st.sampled_from([1e-1, 0.5]))
def test_round_keeps_its_accuracy_in_any_gauge(data, eps):
    t, g = pair(data, max_rank=4)
    rounded = tn.round(g, eps=eps)
    # ||round(g) - t|| <= ||round(g) - g|| + ||g - t|| <= eps ||g|| + gauge error
    tn.testing.assert_allclose(rounded, t, rtol=eps * (1 + tolerance(t)) + tolerance(t))


@given(st.data())
def test_round_finds_the_same_ranks_in_any_gauge(data):
    """a + c a has twice a's ranks stored; rounding finds a's TT ranks whatever the gauge (float64: the
    gauge's rounding stays far below the threshold)."""
    t = data.draw(tst.tts(dtype=st.sampled_from(["float64", "complex128"]), max_rank=4))
    g = data.draw(tst.gauge_equivalent(t))
    c = data.draw(st.floats(0.5, 2.0))
    assert tn.round(g + c * g, eps=1e-6).ranks == tn.round(t + c * t, eps=1e-6).ranks


def orthonormal_columns(matrix, dtype) -> bool:
    gram = matrix.conj().T @ matrix
    return np.max(np.abs(gram - np.eye(gram.shape[0]))) <= 100 * rtol(dtype)


@given(st.data())
def test_orthogonalize_gives_an_orthogonal_gauge_of_the_same_tensor(data):
    t, g = pair(data)
    center = data.draw(st.integers(0, t.ncores - 1))
    o = tn.orthogonalize(g, center=center)
    tn.testing.assert_allclose(o, t, rtol=tolerance(t))
    cores = [as_numpy(c) for c in o.cores]
    for k, core in enumerate(cores):
        r0, n, r1 = core.shape
        if k < center:
            assert orthonormal_columns(core.reshape(r0 * n, r1), t.dtype), k
        elif k > center:
            assert orthonormal_columns(core.reshape(r0, n * r1).T, t.dtype), k
    # the centre carries the norm
    norm = float(tn.norm(t))
    assert abs(np.linalg.norm(cores[center]) - norm) <= tolerance(t) * norm


@given(st.data())
def test_linear_is_gauge_invariant(data):
    w = data.draw(tst.ttms(max_ncores=3, max_size=4, max_rank=3))
    gw = data.draw(tst.gauge_equivalent(w))
    tokens = data.draw(st.integers(1, 5))
    x = tn._backend.asarray_like(
        np.random.default_rng(tokens).standard_normal((tokens, w.shape[1])), w.cores[0]
    )
    got, expected = as_numpy(tn.linear(x, gw)), as_numpy(tn.linear(x, w))
    scale = np.linalg.norm(as_numpy(x)) * float(tn.norm(w))
    assert np.max(np.abs(got - expected)) <= tolerance(w) * scale


# --- regauge itself ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["monomial", "orthogonal", "general"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "complex128", "complex64"])
def test_regauge_kinds_change_the_cores_not_the_tensor(kind, dtype):
    t = tn.random_tt((3, 4, 2, 3), 3, seed=1, dtype=dtype)
    cond = None if kind == "orthogonal" else (64.0 if "64" in dtype and dtype != "complex64" else 8.0)
    g = regauge(t, seed=2, kind=kind, condition=cond)
    assert g.dtype == t.dtype and g.ranks == t.ranks
    assert max(float(np.max(np.abs(as_numpy(a) - as_numpy(b)))) for a, b in zip(g.cores, t.cores)) > 0.01
    tn.testing.assert_allclose(g, t, rtol=gauge_rtol(t, cond or 1.0))
    again = regauge(t, seed=2, kind=kind, condition=cond)
    assert all(np.array_equal(as_numpy(a), as_numpy(b)) for a, b in zip(g.cores, again.cores))  # seeded
    if kind == "orthogonal":
        # an orthogonal bond transform keeps left-orthogonal cores left-orthogonal
        o = regauge(tn.orthogonalize(t, center=3), seed=3, kind="orthogonal")
        for core in o.cores[:3]:
            m = as_numpy(core).reshape(-1, core.shape[-1])
            assert orthonormal_columns(m, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32", "complex64"])
def test_regauge_at_the_edge_moves_cores_to_the_ends_of_the_range_and_ops_still_agree(dtype):
    t = tn.random_tt((3, 2, 4, 2, 3), 3, seed=5, dtype=dtype)
    g = regauge(t, seed=6, kind="general", condition=4.0, exponents="edge")
    info = np.finfo(tn._backend.real_dtype_name(dtype))
    exponents = [math.frexp(float(np.max(np.abs(as_numpy(c)))))[1] for c in g.cores]
    # some core's largest entry within 2^24 of overflow, or of where subnormals would cost it precision
    assert max(exponents) >= info.maxexp - 24 or min(exponents) <= info.minexp + info.nmant + 24, exponents
    assert all(np.all(np.isfinite(as_numpy(c))) for c in g.cores)
    tol = gauge_rtol(t, 4.0) + rtol(dtype)
    norm = float(tn.norm(t))
    assert abs(float(tn.norm(g)) - norm) <= tol * norm
    assert abs(complex(as_numpy(tn.dot(g, t))) - norm**2) <= 2 * tol * norm**2
    eps = 1e-8 if dtype in ("float64", "complex128") else 1e-2  # complex64 is single precision
    # rounding meets eps in norm; the regauged cores' own rounding adds tol
    tn.testing.assert_allclose(tn.round(g, eps=eps), t, rtol=eps + tol)
    index = np.array([[0, 1, 3, 1, 2], [2, 0, 0, 1, 0]])
    assert np.max(np.abs(as_numpy(tn.gather(g, index)) - as_numpy(tn.gather(t, index)))) <= tol * norm


def test_regauge_exponents_are_exact_and_bounded():
    t = tn.random_tt((2, 3, 2), 2, seed=0)
    g = regauge(t, seed=1, kind="monomial", condition=1.0, exponents=[300, -200])
    plain = regauge(t, seed=1, kind="monomial", condition=1.0)
    for k, shift in enumerate([300, -500, 200]):  # core k moves by 2^(e_k - e_{k-1})
        assert np.array_equal(as_numpy(g.cores[k]), np.ldexp(as_numpy(plain.cores[k]), shift))
    limit = tn.testing._gauge.exponent_limit(plain)
    with pytest.raises(ValueError, match=rf"exponent {limit + 1} at bond 1 is outside \[-{limit}, {limit}\]"):
        regauge(t, seed=1, kind="monomial", condition=1.0, exponents=[0, limit + 1])


def test_regauge_keeps_the_torch_graph():
    t = tn.random_tt((3, 2, 4), 2, seed=2).to("torch")
    leaves = [c.clone().requires_grad_(True) for c in t.cores]
    tn.norm(regauge(tn.TT(leaves), seed=3, condition=8.0, exponents="edge")).backward()
    direct = [c.clone().requires_grad_(True) for c in t.cores]
    tn.norm(tn.TT(direct)).backward()
    # regauge(t) is t as a function of t's cores, so the gradients are the same
    for a, b in zip(leaves, direct):
        np.testing.assert_allclose(as_numpy(a.grad), as_numpy(b.grad), rtol=1e-9, atol=1e-12)


def test_regauge_one_core_and_ttm():
    single = tn.random_tt((5,), 1, seed=0)
    assert np.array_equal(as_numpy(regauge(single, seed=0).cores[0]), as_numpy(single.cores[0]))
    a = tn.random_ttm((2, 3), (3, 2), 3, seed=1, dtype="complex128")
    tn.testing.assert_allclose(regauge(a, seed=2, exponents="edge"), a, rtol=gauge_rtol(a, 16.0))


def test_regauge_bad_input():
    t = tn.random_tt((2, 3, 2), 2, seed=0)
    with pytest.raises(TypeError, match="regauge: t must be a tensornet TT or TTM, got ndarray"):
        regauge(np.ones(3))
    with pytest.raises(ValueError, match="regauge: kind must be one of"):
        regauge(t, kind="unitary")
    with pytest.raises(ValueError, match=r"condition must be a real number >= 1, got 0\.5"):
        regauge(t, condition=0.5)
    with pytest.raises(ValueError, match="condition must be finite"):
        regauge(t, condition=math.inf)
    with pytest.raises(ValueError, match="orthogonal transform has condition number 1"):
        regauge(t, kind="orthogonal", condition=10.0)
    with pytest.raises(ValueError, match=r"one int per bond \(2 for a train with 3 cores\)"):
        regauge(t, exponents=[1])
    with pytest.raises(ValueError, match="exponents must be None, 'edge' or 2 ints"):
        regauge(t, exponents="max")
    with pytest.raises(TypeError, match="regauge"):
        regauge(t, seed=1.5)
    with pytest.raises(ValueError, match="gauge_rtol: condition must be a finite number >= 1"):
        gauge_rtol(t, 0.0)
    with pytest.raises(ValueError, match="gauge_equivalent: kinds must be a non-empty subset"):
        tst.gauge_equivalent(t, kinds=("shear",))
    with pytest.raises(ValueError, match="gauge_equivalent: max_condition must be a finite number >= 1"):
        tst.gauge_equivalent(t, max_condition=0.5)


def test_round_and_orthogonalize_rescale_cores_whose_exponents_cancel():
    """Regression: cores at 2^-470, 2^952 and 2^-485 multiply to ~1, and the check for extreme scales once
    took the sum of their exponents (0) for "safe": squares of the middle core overflowed in round's noise
    filter, which then kept one direction (rank 1, error 0.6 for eps = 0.1), and orthogonalize's sweep
    overflowed too."""
    t = tn.TT(
        [
            np.array([[[-0.0742, -0.9014], [0.8075, -0.3967]]]),
            np.array([[[-0.035], [0.4274]], [[-0.2084], [-0.2852]]]),
            np.array([[[0.0123]]]),
        ]
    )
    g = regauge(t, seed=4, kind="monomial", condition=1024.0, exponents=[-474, 474])
    assert [math.frexp(float(np.max(np.abs(as_numpy(c)))))[1] for c in g.cores] == [-470, 952, -485]
    rounded = tn.round(g, eps=0.1)
    assert rounded.ranks == (1, 2, 1, 1)  # sigma_2 is 26% of the norm: nothing may be dropped
    tn.testing.assert_allclose(rounded, t, rtol=1e-12)
    tn.testing.assert_allclose(tn.orthogonalize(g, center=0), t, rtol=1e-12)
    tn.testing.assert_allclose(tn.round_sum([g, g], eps=0.1), 2.0 * t, rtol=1e-12)
