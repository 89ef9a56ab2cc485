"""Operations against dense references, on numpy and torch, float64, float32, complex128 and complex64."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import as_numpy, assert_close, dense_tt, torch
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet.testing import strategies as tst


@st.composite
def tt_pair(draw, kind="tt"):
    backend, dtype = draw(tst.backends()), draw(tst.dtypes(complex=True))
    if kind == "tt":
        shape = draw(tst.mode_shapes())
        make = lambda: tst.tts(shape=shape, backend=backend, dtype=dtype)  # noqa: E731
    else:
        rows, cols = draw(tst.ttm_shapes())
        make = lambda: tst.ttms(row_shape=rows, col_shape=cols, backend=backend, dtype=dtype)  # noqa: E731
    return draw(make()), draw(make())


def dense(x):
    return as_numpy(x.full())


pairs = st.one_of(tt_pair("tt"), tt_pair("ttm"))


@given(pairs)
def test_add_sub_neg(pair):
    a, b = pair
    scale = np.abs(dense(a)).max() + np.abs(dense(b)).max()
    assert_close(tn.add(a, b).full(), dense(a) + dense(b), a.dtype, scale)
    assert_close((a + b).full(), tn.add(a, b).full(), a.dtype, scale)
    assert_close((a - b).full(), dense(a) - dense(b), a.dtype, scale)
    assert_close((-a).full(), -dense(a), a.dtype)
    assert (a + b).ranks == tuple(
        r + s if 0 < k < a.ncores else 1 for k, (r, s) in enumerate(zip(a.ranks, b.ranks))
    )


@given(pairs, st.one_of(st.floats(-3, 3), st.complex_numbers(max_magnitude=3)))
def test_scale(pair, alpha):
    a, _ = pair
    assert_close(tn.scale(a, alpha).full(), alpha * dense(a), a.dtype, np.abs(dense(a)).max() * 3)
    assert_close((alpha * a).full(), tn.scale(a, alpha).full(), a.dtype, np.abs(dense(a)).max() * 3)
    assert_close((a * alpha).full(), tn.scale(a, alpha).full(), a.dtype, np.abs(dense(a)).max() * 3)
    assert_close((a / 2.0).full(), dense(a) / 2.0, a.dtype)
    numpy_alpha = np.complex128(alpha) if isinstance(alpha, complex) else np.float64(alpha)
    assert_close((numpy_alpha * a).full(), alpha * dense(a), a.dtype, np.abs(dense(a)).max() * 3)


@given(pairs)
def test_hadamard(pair):
    a, b = pair
    expected = dense(a) * dense(b)
    scale = np.abs(dense(a)).max() * np.abs(dense(b)).max()
    assert_close(tn.hadamard(a, b).full(), expected, a.dtype, scale)
    assert_close((a * b).full(), expected, a.dtype, scale)


@given(pairs)
def test_dot_and_norm(pair):
    a, b = pair
    scale = np.linalg.norm(dense(a)) * np.linalg.norm(dense(b))
    assert_close(tn.dot(a, b), np.vdot(dense(a), dense(b)), a.dtype, scale)  # conjugate-linear in a
    assert_close(tn.dot(a, b), np.conj(as_numpy(tn.dot(b, a))), a.dtype, scale)
    assert_close(tn.norm(a), np.linalg.norm(dense(a)), a.dtype)
    assert_close(tn.norm(a) ** 2, tn.dot(a, a), a.dtype, np.linalg.norm(dense(a)) ** 2)
    assert not np.iscomplexobj(as_numpy(tn.norm(a)))  # real, also for complex trains
    assert_close(a.norm(), tn.norm(a), a.dtype)
    assert tn.dot(a, b).shape == ()


@given(st.one_of(tst.tts(dtype=tst.dtypes(complex=True)), tst.ttms(dtype=tst.dtypes(complex=True))))
def test_sum(a):
    assert_close(tn.sum(a), dense(a).sum(), a.dtype, np.abs(dense(a)).sum())


@given(pairs)
def test_kron(pair):
    a, b = pair
    outer = np.multiply.outer if isinstance(a, tn.TT) else np.kron
    expected = outer(dense(a), dense(b))
    result = tn.kron(a, b)
    assert_close(result.full(), expected, a.dtype, np.abs(expected).max())
    assert result.ncores == a.ncores + b.ncores


@st.composite
def matvec_case(draw):
    backend, dtype = draw(tst.backends()), draw(tst.dtypes(complex=True))
    a = draw(tst.ttms(backend=backend, dtype=dtype))
    x = draw(tst.tts(shape=a.col_shape, backend=backend, dtype=dtype))
    return a, x


@given(matvec_case())
def test_matvec(case):
    a, x = case
    expected = (dense(a) @ dense(x).reshape(-1)).reshape(a.row_shape)
    scale = np.abs(dense(a)).sum(axis=1).max() * np.abs(dense(x)).max()
    assert_close(tn.matvec(a, x).full(), expected, a.dtype, scale)
    assert_close((a @ x).full(), expected, a.dtype, scale)


@st.composite
def matmul_case(draw):
    backend, dtype = draw(tst.backends()), draw(tst.dtypes(complex=True))
    a = draw(tst.ttms(backend=backend, dtype=dtype))
    b = draw(tst.ttms(row_shape=a.col_shape, backend=backend, dtype=dtype))
    return a, b


@given(matmul_case())
def test_matmul_and_transpose(case):
    a, b = case
    expected = dense(a) @ dense(b)
    scale = np.abs(dense(a)).max() * np.abs(dense(b)).max() * a.shape[1]
    assert_close(tn.matmul(a, b).full(), expected, a.dtype, scale)
    assert_close((a @ b).full(), expected, a.dtype, scale)
    assert_close(tn.transpose(a).full(), dense(a).T, a.dtype)
    assert_close(a.T.full(), tn.transpose(a).full(), a.dtype)
    assert_close(a.H.full(), dense(a).conj().T, a.dtype)
    assert_close(tn.transpose(a, conjugate=True).full(), dense(a).conj().T, a.dtype)


@given(tst.tts(dtype=tst.dtypes(complex=True)))
def test_conj_real_imag_and_reversed_modes(t):
    x = dense(t)
    scale = np.abs(x).max()
    assert_close(tn.conj(t).full(), x.conj(), t.dtype, scale)
    assert_close(t.conj().full(), x.conj(), t.dtype, scale)
    for part, expected in ((tn.real(t), x.real), (tn.imag(t), x.imag), (t.real, x.real), (t.imag, x.imag)):
        assert "complex" not in str(part.dtype)
        assert_close(part.full(), expected, t.dtype, scale)
    if "complex" not in str(t.dtype):  # the imaginary part of a real train is the zero train at rank 1
        assert set(tn.imag(t).ranks) == {1} and tn.imag(t).dtype == t.dtype
    assert_close(t.T.full(), x.T, t.dtype, scale)  # numpy's x.T: the modes reversed
    assert_close(tn.transpose(t, conjugate=True).full(), x.conj().T, t.dtype, scale)


@given(st.data())
def test_real_and_complex_operands_promote_as_numpy_does(data):
    backend = data.draw(tst.backends())
    real_dtype = data.draw(tst.dtypes())
    complex_dtype = data.draw(tst.complex_dtypes())
    shape = data.draw(tst.mode_shapes(max_ndim=3))
    a = data.draw(tst.tts(shape=shape, backend=backend, dtype=real_dtype))
    b = data.draw(tst.tts(shape=shape, backend=backend, dtype=complex_dtype))
    expected_dtype = str(np.result_type(real_dtype, complex_dtype))
    x, y = dense_tt(a), dense_tt(b)  # exact references from the cores (full() works in the operand's dtype)
    scale = np.abs(x).max() * np.abs(y).max() + np.abs(x).max() + np.abs(y).max()
    for result, value in (
        (a + b, x + y),
        (b - a, y - x),
        (a * b, x * y),
        (tn.kron(a, b), np.multiply.outer(x, y)),
    ):
        assert tn._backend.dtype_name(result.dtype) == expected_dtype
        assert_close(result.full(), value, expected_dtype, scale)
    assert_close(tn.dot(a, b), np.vdot(x, y), expected_dtype, scale * x.size)
    assert tn._backend.dtype_name(tn.round_sum([a, b, a], eps=1e-3).dtype) == expected_dtype


def test_real_and_complex_of_different_precisions_are_refused():
    a = tn.random_tt((2, 3), 2, seed=0, dtype="complex64")
    with pytest.raises(TypeError, match="different dtypes"):
        a + a.to(dtype="complex128")
    with pytest.raises(TypeError, match=r"linear: complex operands are not supported.*tn\.matvec"):
        tn.linear(np.ones((2, 6)), tn.random_ttm((2, 3), (3, 2), 2, seed=0, dtype="complex128"))


@st.composite
def linear_case(draw):
    backend, dtype = draw(tst.backends()), draw(tst.dtypes())
    w = draw(tst.ttms(backend=backend, dtype=dtype))
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    x = np.random.default_rng(draw(st.integers(0, 1000))).standard_normal((*lead, w.shape[1]))
    x = tn.TT([x.reshape(1, -1, 1)]).to(backend, dtype=dtype).cores[0].reshape(*lead, w.shape[1])
    return x, w


@given(linear_case())
def test_linear_any_leading_dims(case):
    x, w = case
    expected = as_numpy(x) @ dense(w).T
    scale = np.abs(as_numpy(x)).max() * np.abs(dense(w)).sum(axis=1).max()
    y = tn.linear(x, w)
    assert tuple(y.shape) == (*x.shape[:-1], w.shape[0])
    assert_close(y, expected, w.dtype, scale)


def test_linear_bias_and_errors():
    w = tn.random_ttm((2, 3), (3, 2), 2, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 6))
    bias = np.arange(6.0)
    np.testing.assert_allclose(tn.linear(x, w, bias), x @ w.full().T + bias, atol=1e-12)
    with pytest.raises(ValueError, match="last dimension of x must be N = 6"):
        tn.linear(np.ones((4, 5)), w)
    with pytest.raises(ValueError, match="bias has shape"):
        tn.linear(x, w, np.ones(5))
    with pytest.raises(TypeError, match="W must be a tensornet TTM"):
        tn.linear(x, tn.random_tt((6,), 1, seed=0))


# --- long trains: no overflow / underflow ---------------------------------------------------------
@pytest.mark.parametrize("backend", tst.available_backends())
def test_long_train_norm_and_dot_are_finite_and_accurate(backend):
    rng = np.random.default_rng(0)
    d, n, r = 200, 2, 2
    unit = []
    for k in range(d):
        core = rng.standard_normal((1 if k == 0 else r, n, 1 if k == d - 1 else r))
        unit.append(core / np.linalg.norm(core))
    u = tn.TT(unit).to(backend)
    big = tn.TT([10.0 * c for c in unit]).to(backend)  # norm ~ 1e200 * norm(u)
    small = tn.TT([0.1 * c for c in unit]).to(backend)  # norm ~ 1e-200 * norm(u)
    reference_norm = float(as_numpy(tn.norm(u)))
    reference_dot = float(as_numpy(tn.dot(u, u)))
    assert 0 < reference_norm < np.inf and 0 < reference_dot < np.inf
    np.testing.assert_allclose(reference_norm**2, reference_dot, rtol=1e-10)
    for train, log_factor in ((big, np.log(10.0)), (small, np.log(0.1))):
        value = float(as_numpy(tn.norm(train)))
        assert np.isfinite(value) and value > 0  # no overflow to inf, no underflow to 0
        np.testing.assert_allclose(np.log(value), d * log_factor + np.log(reference_norm), rtol=1e-12)
    # <big, small> = <u, u> exactly in exact arithmetic: neither factor's scale may leak
    np.testing.assert_allclose(float(as_numpy(tn.dot(big, small))), reference_dot, rtol=1e-10)
    np.testing.assert_allclose(
        float(as_numpy(tn.sum(tn.hadamard(big, small)))), float(as_numpy(tn.sum(u * u))), rtol=1e-10
    )


def test_norm_of_difference_is_accurate():
    t = tn.random_tt((4, 4, 4, 4), 3, seed=0)
    u = tn.scale(t, 1 + 1e-12)
    # ||u - t|| = 1e-12 ||t||: the QR sweep resolves it, a Gram-based sqrt(<x, x>) would give ~1e-8
    # rtol 1e-3: 1 + 1e-12 itself is stored with a relative error ~1e-4 of its 1e-12 part (2.2e-16 / 1e-12)
    np.testing.assert_allclose(float(tn.norm(u - t)), 1e-12 * float(tn.norm(t)), rtol=1e-3)


def test_zero_train_norm_and_dot():
    t = tn.TT([np.zeros((1, 3, 2)), np.zeros((2, 3, 1))])
    assert float(tn.norm(t)) == 0.0 and float(tn.dot(t, t)) == 0.0


# --- errors ----------------------------------------------------------------------------------------
def test_structure_mismatch_errors():
    a = tn.random_tt((2, 3), 2, seed=0)
    with pytest.raises(ValueError, match=r"TT shapes differ: \(2, 3\) vs \(3, 2\)"):
        tn.add(a, tn.random_tt((3, 2), 2, seed=0))
    with pytest.raises(TypeError, match="different dtypes"):
        tn.dot(a, a.to(dtype="float32"))
    with pytest.raises(TypeError, match="cannot combine a TT with a TTM"):
        tn.hadamard(a, tn.random_ttm((2, 1), (1, 3), 1, seed=0))
    with pytest.raises(ValueError, match="TTM shapes differ"):
        tn.add(tn.random_ttm((2, 2), (2, 2), 1, seed=0), tn.random_ttm((2, 2), (4, 1), 1, seed=0))
    with pytest.raises(ValueError, match=r"A has col_shape \(2, 2\) but x has shape \(2, 3\)"):
        tn.matvec(tn.random_ttm((2, 2), (2, 2), 1, seed=0), a)
    with pytest.raises(ValueError, match="A has col_shape"):
        tn.matmul(tn.random_ttm((2, 2), (2, 2), 1, seed=0), tn.random_ttm((2, 3), (2, 2), 1, seed=0))
    with pytest.raises(TypeError, match="scale: the scalar must be a number or a 0-d array"):
        tn.scale(a, np.ones(3))
    with pytest.raises(TypeError, match="must be a tensornet TT or TTM"):
        tn.norm(np.ones(3))
    with pytest.raises(TypeError):
        a + "1"  # numbers are added entrywise (tests/test_construct.py); other objects are refused
    with pytest.raises(TypeError, match="transpose: a must be a tensornet TT or TTM"):
        tn.transpose(np.ones((2, 2)))
    with pytest.raises(TypeError, match="conjugate must be True or False"):
        tn.transpose(a, conjugate=1)


def test_mixed_backend_operands_refused():
    a = tn.random_tt((2, 3), 2, seed=0)
    with pytest.raises(TypeError, match="different backends"):
        tn.add(a, a.to("torch"))


# --- autodiff through ops on torch ------------------------------------------------------------------
def test_gradients_flow_through_ops():
    t = tn.random_tt((3, 4, 2), 2, seed=0).to("torch")
    cores = [c.clone().requires_grad_(True) for c in t.cores]
    u = tn.TT(cores)
    a = tn.random_ttm((2, 2, 2), (3, 4, 2), 2, seed=1).to("torch")

    def loss(*cs):
        v = tn.TT(list(cs))
        return (
            tn.norm(v)
            + tn.dot(v, v * v)
            + tn.sum(a @ v)
            + (v + v)[1, 2, 0]
            + tn.norm(tn.round(v, max_rank=2))
        )

    assert torch.autograd.gradcheck(loss, tuple(cores))
    loss(*u.cores).backward()
    assert all(c.grad is not None and torch.isfinite(c.grad).all() for c in cores)


@given(st.one_of(tst.tts(), tst.ttms()), st.sampled_from([1e-30, 1e30]))
def test_norm_with_huge_and_tiny_entries(a, factor):
    # 1e30 squared overflows float32 (max 3e38) and 1e-30 squared underflows it: norm must not square first
    expected = np.linalg.norm(dense(a)) * factor
    assert_close(tn.norm(tn.scale(a, factor)), expected, a.dtype, expected)
