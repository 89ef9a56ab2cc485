"""Trust at the edges of the core: guarantees at every finite scale of the dtype, scalars that keep the
dtype, exact double backward through ``linear``, and inputs checked where they enter (before any
allocation). Each test here failed on the code before these rules were enforced."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from conftest import as_numpy, dense_tt, rtol, torch
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet.testing import strategies as tst

# Scales as powers of ten (not exact in binary), spanning the finite range of each dtype.
SCALE_EXPONENT = {"float64": 300, "float32": 37, "complex128": 300, "complex64": 37}


def scale_of(dtype, draw) -> float:
    limit = SCALE_EXPONENT[str(dtype).replace("torch.", "")]
    return 10.0 ** draw(st.integers(-limit, limit))


def ldexp(a: np.ndarray, e) -> np.ndarray:
    """``a 2^e`` exactly, for real or complex ``a`` (numpy's ldexp takes real arrays only)."""
    if np.iscomplexobj(a):
        return np.ldexp(a.real, e) + 1j * np.ldexp(a.imag, e)
    return np.ldexp(a, e)


def normalized_f64(array) -> tuple[np.ndarray, int]:
    """``(a / 2^e, e)`` in float64 (complex128), exact: a reference whose squares neither over- nor underflow."""
    a = as_numpy(array)
    top = float(np.max(np.abs(a)))
    e = math.frexp(top)[1] if top > 0 else 0
    return ldexp(a, -e), e


def relative_error(approx, exact) -> float:
    """``||approx - exact|| / ||exact||`` computed on both divided by the same power of two."""
    b, e = normalized_f64(exact)
    a = ldexp(as_numpy(approx), -e)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def double(dtype) -> bool:
    return "float64" in str(dtype) or "complex128" in str(dtype)


def min_ranks(x: np.ndarray, eps: float) -> list[int]:
    """Per unfolding, the smallest rank whose discarded tail is <= eps / sqrt(d-1) ||x|| (x near 1)."""
    d = x.ndim
    threshold = eps / math.sqrt(max(d - 1, 1)) * np.linalg.norm(x)
    ranks = []
    for k in range(1, d):
        s = np.linalg.svd(x.reshape(int(np.prod(x.shape[:k])), -1), compute_uv=False)
        tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])
        ranks.append(max(1, int(np.nonzero(tail <= threshold**2)[0][0])))
    return ranks


def place(array: np.ndarray, backend: str, dtype: str):
    return tn.TT([array.reshape(1, -1, 1)]).to(backend, dtype=dtype).cores[0].reshape(array.shape)


# --- TT-SVD, TTM-SVD, round, orthogonalize at every scale ---------------------------------------------
@st.composite
def scaled_dense(draw):
    """A low-rank tensor plus noise, scaled by a drawn power of ten, on a drawn backend and dtype."""
    dtype = draw(tst.dtypes(complex=True))
    t = draw(tst.tts(backend="numpy", dtype="complex128" if "complex" in dtype else "float64", max_size=4))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    noise = rng.standard_normal(t.shape) + (1j * rng.standard_normal(t.shape) if "complex" in dtype else 0)
    x = t.full() + draw(st.sampled_from([0.0, 1e-4, 1e-1])) * noise
    x = x / np.max(np.abs(x))
    return place(x * scale_of(dtype, draw), draw(tst.backends()), dtype)


eps_values = st.sampled_from([0.0, 1e-8, 1e-3, 1e-1, 0.5])


@given(scaled_dense(), eps_values)
def test_tt_svd_guarantee_at_every_scale(x, eps):
    t, bound = tn.tt_svd(x, eps=eps, return_error=True)
    assert t.dtype == x.dtype
    error = relative_error(t.full(), x)
    slack = rtol(x.dtype) * math.sqrt(x.ndim)  # rounding of the SVDs themselves
    assert bound <= eps + 1e-15
    assert error <= bound * (1 + 1e-6) + slack, (error, bound)
    if double(x.dtype):  # the ranks are those of the same data at scale 1
        assert all(r <= m for r, m in zip(t.ranks[1:-1], min_ranks(normalized_f64(x)[0], eps)))


@given(st.data())
def test_ttm_svd_guarantee_at_every_scale(data):
    row_shape, col_shape = data.draw(tst.ttm_shapes(min_ncores=2, max_ncores=3))
    dtype = data.draw(tst.dtypes(complex=True))
    wide = "complex128" if "complex" in dtype else "float64"
    a = tn.random_ttm(row_shape, col_shape, 2, seed=data.draw(st.integers(0, 99)), dtype=wide).full()
    a = place(a / np.max(np.abs(a)) * scale_of(dtype, data.draw), data.draw(tst.backends()), dtype)
    eps = data.draw(eps_values)
    w, bound = tn.ttm_svd(a, row_shape, col_shape, eps=eps, return_error=True)
    assert bound <= eps + 1e-15
    assert relative_error(w.full(), a) <= bound * (1 + 1e-6) + rtol(dtype) * 2


@st.composite
def scaled_train(draw):
    """``t + t + t`` (rank-deficient) or ``t + u``, with one drawn core scaled by a power of ten and
    another by its inverse's square root: the scale sits unevenly across the cores."""
    dtype = draw(tst.dtypes(complex=True))
    wide = "complex128" if "complex" in dtype else "float64"
    t = draw(tst.tts(backend="numpy", dtype=wide, max_size=4, max_ncores=4))
    u = draw(tst.tts(shape=t.shape, backend="numpy", dtype=wide))
    train = t + t + t if draw(st.booleans()) else t + u
    cores = [c / np.max(np.abs(c)) for c in train.cores]
    cores[draw(st.integers(0, len(cores) - 1))] *= scale_of(dtype, draw)
    return tn.TT(cores).to(draw(tst.backends()), dtype=dtype)


def full_f64(train) -> np.ndarray:
    """The dense tensor of ``train`` in float64 with the cores normalised first (exact), as a pair
    ``(normalised dense, exponent)`` so that values beyond float64's range can be compared."""
    cores, total = [], 0
    for c in train.cores:
        c, e = normalized_f64(c)
        cores.append(c)
        total += e
    return dense_tt(tn.TT(cores)), total


@given(scaled_train(), eps_values)
def test_round_guarantee_at_every_scale(x, eps):
    y, bound = tn.round(x, eps=eps, return_error=True)
    assert y.dtype == x.dtype
    reference, e_ref = full_f64(x)
    approx, e_approx = full_f64(y)
    error = np.linalg.norm(ldexp(approx, e_approx - e_ref) - reference) / np.linalg.norm(reference)
    assert bound <= eps + 1e-15
    # float32 cores rescaled by a power of ten (inexact) carry their own rounding into the reference
    assert error <= bound * (1 + 1e-6) + 10 * rtol(x.dtype) * math.sqrt(x.ndim), (error, bound)
    if double(x.dtype):
        assert all(r <= m for r, m in zip(y.ranks[1:-1], min_ranks(reference, eps)))


@given(scaled_train(), st.data())
def test_orthogonalize_at_every_scale(x, data):
    center = data.draw(st.integers(0, x.ndim - 1))
    y = tn.orthogonalize(x, center=center)
    reference, e_ref = full_f64(x)
    approx, e_approx = full_f64(y)
    error = np.linalg.norm(ldexp(approx, e_approx - e_ref) - reference) / np.linalg.norm(reference)
    assert error <= 10 * rtol(x.dtype) * math.sqrt(x.ndim)
    for k, core in enumerate(y.cores[:center]):  # cores left of the center are left-orthonormal
        m = as_numpy(core).reshape(-1, core.shape[-1])
        np.testing.assert_allclose(
            m.conj().T @ m, np.eye(m.shape[1]), atol=10 * rtol(x.dtype), err_msg=str(k)
        )


# --- norm, dot, sum: the finite answer whenever it is representable, inf when not, never NaN -------
def expected(value_normalized: float, exponent: int, dtype) -> float:
    """The value ``v 2^e`` as ``dtype`` would represent it (inf beyond its range)."""
    finfo = np.finfo(str(dtype).replace("torch.", ""))
    log2 = math.log2(abs(value_normalized)) + exponent if value_normalized else -math.inf
    if log2 >= math.log2(float(finfo.max)):
        return math.copysign(math.inf, value_normalized)
    if log2 < math.log2(float(finfo.smallest_normal)) - 1:
        return math.nan  # deep in the subnormal range: only "tiny" is checked
    return math.ldexp(value_normalized, exponent)


def check_value(actual, value_normalized, exponent, dtype) -> None:
    actual = float(as_numpy(actual))
    assert not math.isnan(actual)
    want = expected(value_normalized, exponent, dtype)
    finfo = np.finfo(str(dtype).replace("torch.", ""))
    if math.isnan(want):
        assert abs(actual) <= 4 * float(finfo.smallest_normal)
    elif math.isinf(want):
        # within rounding of the largest finite value either answer is right
        assert math.isinf(actual) or abs(actual) >= float(finfo.max) * (1 - 1e-3)
        assert math.copysign(1, actual) == math.copysign(1, want)
    else:
        assert actual == pytest.approx(want, rel=20 * rtol(dtype)), (actual, want)


def uneven(draw, dtype, backend, shape=None) -> tn.TT:
    """A train whose cores carry independently drawn scales (their product may leave the range)."""
    t = draw(tst.tts(shape=shape, backend="numpy", dtype="float64", max_ncores=4, max_size=3))
    cores = [c / np.max(np.abs(c)) * scale_of(dtype, draw) for c in t.cores]
    return tn.TT(cores).to(backend, dtype=dtype)


@given(st.data())
def test_norm_dot_sum_at_every_scale(data):
    dtype, backend = data.draw(tst.dtypes()), data.draw(tst.backends())
    t = uneven(data.draw, dtype, backend)
    reference, e = full_f64(t)
    check_value(tn.norm(t), np.linalg.norm(reference), e, t.dtype)
    check_value(tn.sum(t), float(np.sum(reference)), e, t.dtype)
    check_value(tn.dot(t, t), float(np.sum(reference * reference)), 2 * e, t.dtype)
    u = uneven(data.draw, dtype, backend, shape=t.shape)
    reference_u, e_u = full_f64(u)
    check_value(tn.dot(t, u), float(np.sum(reference * reference_u)), e + e_u, t.dtype)


@given(st.data())
def test_complex_norm_and_dot_at_every_scale(data):
    dtype, backend = data.draw(tst.complex_dtypes()), data.draw(tst.backends())
    real = {"complex64": "float32", "complex128": "float64"}[dtype]
    t = data.draw(tst.tts(backend="numpy", dtype="complex128", max_ncores=4, max_size=3))
    z = tn.TT([c / np.max(np.abs(c)) * scale_of(real, data.draw) for c in t.cores]).to(backend, dtype=dtype)
    reference, e = full_f64(z)
    norm = tn.norm(z)
    assert "complex" not in str(norm.dtype)
    top = np.max(np.abs(reference))  # the reference's norm, without squares that under- or overflow
    check_value(norm, top * np.linalg.norm(reference / top), e, real)
    value = np.vdot(reference / top, reference / top) * top * top
    dot = tn.dot(z, z)
    check_value(dot.real, float(value.real), 2 * e, real)  # |z|^2: real, the imaginary part 0 or tiny
    assert not np.isnan(as_numpy(dot.imag))
    assert abs(float(as_numpy(dot.imag))) <= 1e-3 * abs(float(as_numpy(dot.real)))


@given(tst.tts(backend="torch", dtype="complex128", max_ncores=3, max_size=3), st.integers(0, 100))
def test_real_functions_of_complex_trains_have_torchs_gradients(t, seed):
    # finite differences of real losses of complex cores (gradcheck perturbs real and imaginary parts)
    cores = [c.clone().requires_grad_() for c in t.cores]
    u = tn.random_tt(t.shape, 2, seed=seed, dtype="complex128").to("torch")
    losses = [
        lambda *c: tn.norm(tn.TT(list(c))),
        lambda *c: tn.dot(tn.TT(list(c)), tn.TT(list(c))).real,
        lambda *c: tn.dot(u, tn.TT(list(c))).imag,
        lambda *c: tn.sum(tn.TT(list(c)) * tn.conj(tn.TT(list(c)))).real,
        # rounding a sum of distinct terms (no repeated singular values: SVD gradients are defined)
        lambda *c: tn.full(tn.round(tn.TT(list(c)) + u, eps=1e-12)).abs().square().sum(),
    ]
    for loss in losses:
        assert torch.autograd.gradcheck(loss, cores)
    grads = torch.autograd.grad(tn.norm(tn.TT(cores)), cores)
    reference = torch.autograd.grad(torch.linalg.vector_norm(tn.TT(cores).full()), cores)
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


def test_norm_near_the_float32_maximum_is_finite():
    t = tn.random_tt((4, 4, 4), 3, seed=0)
    for backend in ("numpy", "torch"):
        big = (t * (3.0e38 / float(tn.norm(t)))).to(backend, dtype="float32")
        assert float(tn.norm(big)) == pytest.approx(3.0e38, rel=1e-5)
        assert math.isinf(float(tn.dot(big, big)))  # 9e76 overflows: inf, not NaN


def test_dot_with_scale_across_cores_is_not_nan():
    a = tn.random_tt((4, 4, 4), 3, seed=1)
    cores = list(a.cores)
    cores[0], cores[2] = cores[0] * 1e200, cores[2] * 1e-200
    assert float(tn.dot(tn.TT(cores), tn.TT(cores))) == pytest.approx(float(tn.dot(a, a)), rel=1e-12)
    huge = a * 1e200
    assert math.isinf(float(tn.dot(huge, huge)))
    assert float(tn.dot(huge, -huge)) == -math.inf
    assert float(tn.norm(huge)) == pytest.approx(1e200 * float(tn.norm(a)), rel=1e-12)


# --- gradients of norm and dot ---------------------------------------------------------------------
def test_norm_and_dot_gradients_at_zero_are_zero():
    cores = [torch.zeros(1, 3, 2, dtype=torch.float64, requires_grad=True), torch.zeros(2, 3, 1).double()]
    cores[1].requires_grad_()
    zero = tn.TT(cores)
    grads = torch.autograd.grad(tn.norm(zero), cores)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    grads = torch.autograd.grad(tn.dot(zero, zero), cores)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@given(tst.tts(backend="torch", dtype="float64", max_ncores=3, max_size=3), st.integers(-100, 100))
def test_norm_gradient_matches_dense_autograd(t, exponent):
    # +-100: the reference (torch.linalg.vector_norm of the dense tensor) squares without scaling
    cores = [c.clone().requires_grad_() for c in t.cores]
    cores[0] = (cores[0] * 10.0**exponent).detach().requires_grad_()
    grads = torch.autograd.grad(tn.norm(tn.TT(cores)), cores)
    reference = torch.autograd.grad(torch.linalg.vector_norm(tn.TT(cores).full()), cores)
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12 * float(r.abs().max()))


def test_norm_gradient_by_finite_differences():
    t = tn.random_tt((3, 4, 2), (1, 2, 3, 1), seed=0).to("torch")
    cores = [c.clone().requires_grad_() for c in t.cores]
    assert torch.autograd.gradcheck(lambda *c: tn.norm(tn.TT(list(c))), cores)
    assert torch.autograd.gradcheck(lambda *c: tn.sum(tn.TT(list(c))), cores)


# --- double backward through linear: exact, tested against autograd through the dense product --------
@given(st.data())
def test_linear_double_backward_matches_dense(data):
    row_shape, col_shape = data.draw(tst.ttm_shapes(min_ncores=1, max_ncores=3, max_size=3))
    w = tn.random_ttm(row_shape, col_shape, 2, seed=data.draw(st.integers(0, 99))).to("torch")
    cores = [c.clone().requires_grad_() for c in w.cores]
    tokens = data.draw(st.sampled_from([1, 3, 300]))  # different plans: sweep forward or rebuild
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    x = torch.randn(tokens, w.shape[1], dtype=torch.float64, generator=gen, requires_grad=True)
    bias = torch.randn(w.shape[0], dtype=torch.float64, generator=gen, requires_grad=True)
    save_weight = data.draw(st.booleans())

    def penalty(layer):  # a gradient penalty (WGAN-GP style): differentiates the input gradient
        y = torch.tanh(layer(x))
        (grad_x,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        return grad_x.square().sum() + y.sum()

    ours = penalty(lambda v: tn.linear(v, tn.TTM(cores), bias, save_weight=save_weight))
    dense = penalty(lambda v: v @ tn.TTM(cores).full().T + bias)
    torch.testing.assert_close(ours, dense)
    for a, b in zip(
        torch.autograd.grad(ours, [x, bias, *cores]), torch.autograd.grad(dense, [x, bias, *cores])
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_linear_gradgradcheck():
    w = tn.random_ttm((2, 3), (3, 2), 2, seed=0).to("torch")
    cores = [c.clone().requires_grad_() for c in w.cores]
    for tokens in (2, 40):
        x = torch.randn(tokens, 6, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(
            lambda x, b, *c: tn.linear(x, tn.TTM(list(c)), b), (x, bias, *cores)
        )


def test_ttmlinear_hessian_vector_product_matches_dense():
    layer = tn.nn.TTMLinear(6, 4, rank=2, in_shape=(2, 3), out_shape=(2, 2), dtype=torch.float64)
    x = torch.randn(5, 6, dtype=torch.float64)
    params = list(layer.parameters())
    vector = [torch.randn_like(p) for p in params]

    def hvp(forward):
        loss = torch.sin(forward(x)).sum()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        return torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vector)), params)

    ours = hvp(layer)
    dense = hvp(lambda v: torch.nn.functional.linear(v, layer.weight.full(), layer.bias))
    for a, b in zip(ours, dense):
        torch.testing.assert_close(a, b)


# --- real scalars never change a train's dtype; complex ones promote a real train to complex ---------
def scalars(backend: str):
    values = [
        3,
        -2.5,
        np.float64(0.5),
        np.float32(2.0),
        np.int64(4),
        np.array(1.5),
        np.array(2.0, np.float32),
    ]
    if backend == "torch":
        values += [torch.tensor(0.25, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float32)]
    return st.sampled_from(values)


@given(st.data())
def test_scalar_never_changes_the_dtype(data):
    t = data.draw(tst.tts(max_ncores=3))
    alpha = data.draw(scalars(t.backend))
    value = float(alpha)
    for result, factor in (
        (t * alpha, value),
        (alpha * t, value),
        (t / alpha, 1 / value),
        (tn.scale(t, alpha), value),
    ):
        assert result.dtype == t.dtype and result.device == t.device
        assert all(c.dtype == t.dtype for c in result.cores)
        np.testing.assert_allclose(
            as_numpy(result.full()), factor * as_numpy(t.full()), rtol=rtol(t.dtype), atol=1e-30
        )
    assert isinstance(pickle_round_trip(t * alpha), tn.TT)


def pickle_round_trip(t):
    import pickle

    return pickle.loads(pickle.dumps(t))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_complex_scalars_promote_a_real_train_to_complex_of_its_precision(backend, dtype):
    t = tn.random_tt((2, 3), 2, seed=0).to(backend, dtype=dtype)
    wide = {"float32": "complex64", "float64": "complex128"}[dtype]
    values = [1 + 2j, np.complex64(1 - 1j), np.array(0.5j)] + (
        [torch.tensor(1j)] if backend == "torch" else []
    )
    for alpha in values:
        for result, factor in (
            (t * alpha, complex(alpha)),
            (alpha * t, complex(alpha)),
            (t / alpha, 1 / complex(alpha)),
            (tn.scale(t, alpha), complex(alpha)),
            (t + alpha, None),
        ):
            assert tn._backend.dtype_name(result.dtype) == wide
            assert all(tn._backend.dtype_name(c.dtype) == wide for c in result.cores)
            expected = as_numpy(t.full()) + complex(alpha) if factor is None else factor * as_numpy(t.full())
            np.testing.assert_allclose(as_numpy(result.full()), expected, rtol=rtol(dtype), atol=1e-6)


def test_torch_scalar_keeps_its_graph_and_division_by_zero_is_clear():
    t = tn.random_tt((2, 3), 2, seed=0).to("torch", dtype="float32")
    alpha = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(tn.sum(t * alpha), alpha)
    assert float(grad) == pytest.approx(float(tn.sum(t)), rel=1e-5)
    with pytest.raises(ZeroDivisionError, match="by zero"):
        t / 0
    with pytest.raises(TypeError, match="numpy"):
        tn.random_tt((2, 3), 2, seed=0) * torch.tensor(2.0)


# --- half precision is refused by the decompositions, with the function named ---------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: np.ones((4, 4), np.float16),
        lambda: torch.ones(4, 4, dtype=torch.float16),
        lambda: torch.ones(4, 4, dtype=torch.bfloat16),
    ],
)
def test_half_precision_is_refused_with_a_message(make):
    x = make()
    with pytest.raises(TypeError, match="tt_svd: dtype"):
        tn.tt_svd(x, eps=1e-3)
    with pytest.raises(TypeError, match="ttm_svd: dtype"):
        tn.ttm_svd(x, (2, 2), (2, 2))
    t = tn.TT([x.reshape(1, 4, 4)[:, :, :1], x.reshape(4, 4, 1)[:1]])
    for fn, name in ((tn.round, "round"), (tn.orthogonalize, "orthogonalize")):
        with pytest.raises(TypeError, match=f"{name}: dtype"):
            fn(t)


# --- inputs checked where they enter, before any allocation ----------------------------------------
def test_impossible_ranks_are_refused_before_allocating():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"random_tt: ranks .* more than the .* of memory available"):
        tn.random_tt((4, 4, 4), 10**12)
    with pytest.raises(ValueError, match="random_ttm: ranks"):
        tn.random_ttm((4, 4), (4, 4), 10**9)
    assert time.perf_counter() - start < 5  # refused, not attempted (a generous bound, not a benchmark)
    assert tn.random_tt((4, 4, 4), 100).ranks == (1, 100, 100, 1)  # non-minimal but possible: allowed


@given(st.integers(1, 10**6) | st.integers(1, 2**64 - 1))
def test_prime_factors(n):
    factors = tn.shapes.prime_factors(n)
    assert math.prod(factors) == n and factors == sorted(factors)
    for p in factors:
        assert p > 1 and all(p % q for q in range(2, min(math.isqrt(p), 2000) + 1))
    if n <= 10**6:  # against plain trial division
        expected_factors, m, q = [], n, 2
        while q * q <= m:
            while m % q == 0:
                expected_factors.append(q)
                m //= q
            q += 1
        assert factors == expected_factors + ([m] if m > 1 else [])


def test_factorize_of_large_primes_is_fast_and_bounded():
    start = time.perf_counter()
    assert tn.shapes.factorize(2**61 - 1, 3) == (1, 1, 2**61 - 1)
    assert tn.shapes.prime_factors((2**31 - 1) * (2**31 - 19)) == [2**31 - 19, 2**31 - 1]
    assert time.perf_counter() - start < 5  # milliseconds in practice; minutes before the fix
    for bad in (0, -1, 2**64, 2.0, True):
        with pytest.raises(ValueError, match="factorize: n"):
            tn.shapes.factorize(bad, 2)


def test_ttmlinear_refuses_non_tensors_like_nn_linear():
    layer = tn.nn.TTMLinear(6, 4, rank=1, in_shape=(2, 3), out_shape=(2, 2))
    for bad in (np.ones((2, 6), np.float32), [[1.0] * 6]):
        with pytest.raises(TypeError, match=r"TTMLinear: input must be a torch\.Tensor"):
            layer(bad)
    with pytest.raises(TypeError, match="TTEmbedding: indices"):
        tn.nn.TTEmbedding(12, 6, rank=1)(np.array([1, 2]))


# --- found by an adversarial review -------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_norms_just_past_the_float64_maximum_do_not_raise(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 6))
    x = x / np.max(np.abs(x)) * 1e308  # ||x|| ~ 1e309: not representable, every entry is
    xb = place(x, backend, "float64")
    t, bound = tn.tt_svd(xb, eps=0.1, return_error=True)
    assert relative_error(t.full(), xb) <= bound + 1e-12 and np.all(np.isfinite(as_numpy(t.full())))
    w = tn.ttm_svd(xb.reshape(20, 6), (4, 5), (2, 3), eps=0.1)
    assert np.all(np.isfinite(as_numpy(w.full())))
    huge = tn.TT([np.full((1, 2, 1), 1e300), np.full((1, 2, 1), 1e10)]).to(backend)
    for result in (tn.round(huge, eps=0.1), tn.orthogonalize(huge)):
        with np.errstate(over="ignore"):  # the entries are 1e310: the dense tensor is inf, honestly
            assert np.all(np.isinf(as_numpy(result.full())))


def test_the_algebra_ignores_autocast():
    t = tn.random_tt((3, 4, 5), (1, 2, 3, 1), seed=0).to("torch", dtype="float32")
    u = tn.random_tt((3, 4, 5), 2, seed=1).to("torch", dtype="float32")
    a = tn.random_ttm((2, 3), (3, 2), 2, seed=2).to("torch", dtype="float32")
    ops = {
        "full": lambda: tn.full(t),
        "norm": lambda: tn.norm(t),
        "sum": lambda: tn.sum(t),
        "dot": lambda: tn.dot(t, u),
        "hadamard": lambda: tn.full(t * u),
        "matvec": lambda: tn.full(a @ tn.random_tt((3, 2), 2, seed=3).to("torch", dtype="float32")),
        "round": lambda: tn.full(tn.round(t + u, eps=1e-6)),
        "orthogonalize": lambda: tn.full(tn.orthogonalize(t)),
        "tt_svd": lambda: tn.full(tn.tt_svd(tn.full(t), eps=1e-6)),
        "index": lambda: t[1, :, 2].full(),
    }
    for name, op in ops.items():
        expected = op()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = op()
        assert got.dtype == torch.float32, name  # not bf16: autocast is for layers
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("backend", "dtype"), [("numpy", "float16"), ("torch", "float16"), ("torch", "bfloat16")]
)
def test_norm_of_half_precision_trains(backend, dtype):
    t = tn.random_tt((3, 4, 5), 2, seed=0)
    half = t.to(backend, dtype=dtype)
    value = tn.norm(half)
    assert B_dtype(value) == dtype
    wide = half.to(backend, dtype="float32").to("numpy", dtype="float64")  # the same half-precision values
    reference = np.linalg.norm(dense_tt(wide))
    assert float(value) == pytest.approx(reference, rel=1e-2)  # half precision: ~3 digits


def B_dtype(x) -> str:
    return tn._backend.dtype_name(x.dtype)


def test_scalars_of_every_numeric_kind():
    from decimal import Decimal
    from fractions import Fraction

    t = tn.random_tt((2, 3), 2, seed=0, dtype="float32")
    for alpha in (Decimal("2.5"), Fraction(1, 3)):
        scaled = t * alpha
        assert scaled.dtype == t.dtype
        np.testing.assert_allclose(scaled.full(), float(alpha) * t.full(), rtol=1e-6)
    with pytest.raises(ValueError, match="not representable as a float"):
        t * 10**400


def test_shapes_from_numpy_and_checked_mode_sizes():
    assert tn.random_tt(np.array([2, 3]), 2, seed=0).shape == (2, 3)
    with pytest.raises(ValueError, match=r"useful_ranks: mode_sizes\[0\] = -1"):
        tn.shapes.useful_ranks([-1, 2])


def test_ttmlinear_follows_autocast_as_nn_linear_does():
    layer = tn.nn.TTMLinear(12, 8, rank=2, dtype=torch.float64)
    x = torch.randn(3, 12, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.nn.Linear(12, 8, dtype=torch.float64)(x).dtype == torch.float64
        assert layer.float()(x.float()).dtype == torch.bfloat16
    meta = tn.nn.TTMLinear(12, 8, rank=2, device="meta")
    assert meta(torch.randn(3, 12, device="meta")).shape == (3, 8)  # as nn.Linear on the meta device


# --- trains whose norm is far below the product of their cores' scales ----------------------------------
def linear_function_qtt(d: int) -> tn.TT:
    """The rank-2 QTT of f(p) = p on 2^d points: cores [[1, 2^(d-1-j) p_j], [0, 1]] (core scales 2^(d-1-j)).

    Each core is normalised by its own largest entry in rounding; the product of those scales is 2^(d(d-1)/2)
    while the train's norm is about 2^(3d/2): the normalised train's norm underflowed to 0 before the sweeps
    renormalised their running factors (round returned 0 with an error bound of 0).
    """
    cores = []
    for j in range(d):
        core = np.zeros((2, 2, 2))
        for p in range(2):
            core[:, p, :] = [[1.0, 2.0 ** (d - 1 - j) * p], [0.0, 1.0]]
        cores.append(core)
    cores[0], cores[-1] = cores[0][:1], cores[-1][:, :, 1:]
    return tn.TT(cores)


@pytest.mark.parametrize("d", [40, 60, 100])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_round_orthogonalize_reshape_keep_trains_whose_cores_scale_geometrically(d, backend):
    t = linear_function_qtt(d).to(backend)
    norm = float(tn.norm(t))
    # ||f||^2 = sum_p p^2 = (N - 1) N (2N - 1) / 6, N = 2^d
    n = 2.0**d
    assert norm == pytest.approx(math.sqrt((n - 1) * n * (2 * n - 1) / 6), rel=1e-12)
    rounded, bound = tn.round(t, eps=1e-12, return_error=True)
    # the low bits of p are below eps relative to ||f|| past bond ~40: rank 1 there is the right answer
    assert all(r <= s for r, s in zip(rounded.ranks, t.ranks)) and rounded.ranks[1] == 2 and bound <= 1e-12
    # plus the sweeps' own rounding, about d unit roundoffs
    assert float(tn.norm(rounded - t)) <= bound * norm * (1 + 1e-6) + d * 2.2e-16 * norm
    assert float(tn.norm(tn.orthogonalize(t, center=d // 2))) == pytest.approx(norm, rel=1e-12)
    assert float(tn.norm(tn.round_sum([t, t], eps=1e-12))) == pytest.approx(2 * norm, rel=1e-12)
    regrouped = tn.reshape(t, (4,) * (d // 2), eps=1e-10)
    assert float(tn.norm(regrouped)) == pytest.approx(norm, rel=1e-10)
    index = [[1] * d, [0] * (d - 1) + [1]]
    # entries are accurate to the Frobenius bound (relative to the norm ~ N^1.5, not to each entry)
    np.testing.assert_allclose(as_numpy(tn.gather(rounded, index)), [n - 1, 1.0], rtol=0, atol=1e-11 * norm)


# --- warnings name the user's line, whatever path inside the package raised them ---------------------------
def test_warnings_point_at_the_callers_line():
    x = np.random.default_rng(0).standard_normal((4, 4, 4))
    t = tn.random_tt((4, 4, 4), 3, seed=0)
    calls = [
        lambda: tn.tt_svd(x, eps=1e-3, max_rank=1),  # through tt_svd's decorator and its kernels
        lambda: tn.round(t + t, eps=1e-6, max_rank=1),
        lambda: tn.round_sum([t, t], eps=1e-6, max_rank=1),
        lambda: tn.cross(lambda i: np.sin(i.sum(axis=1) * 1.7), (8,) * 4, eps=1e-12, max_rank=1, seed=0),
        lambda: tn.complete(
            np.indices((4, 4, 4)).reshape(3, -1).T, x.ravel(), (4, 4, 4), eps=1e-12, max_rank=1
        ),
    ]
    for call in calls:
        with pytest.warns(UserWarning) as record:
            call()
        assert {w.filename for w in record} == {__file__}, [(w.filename, w.lineno) for w in record]


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
def test_norm_has_exact_second_derivatives(dtype):
    # the gradient used to be attached through a detached factor: first derivatives right, second wrong
    t = tn.random_tt((3, 4, 2), 2, seed=0, dtype=dtype).to("torch")
    cores = [c.clone().requires_grad_() for c in t.cores]
    assert torch.autograd.gradgradcheck(lambda *c: tn.norm(tn.TT(list(c))), cores)
    # Hessian-vector products of ||x||^2 through norm and through dot agree
    directions = [torch.randn_like(c) for c in cores]
    results = []
    for loss in (lambda: tn.norm(tn.TT(cores)) ** 2, lambda: tn.dot(tn.TT(cores), tn.TT(cores)).real):
        grads = torch.autograd.grad(loss(), cores, create_graph=True)
        inner = sum((g.conj() * v).real.sum() for g, v in zip(grads, directions))
        results.append(torch.autograd.grad(inner, cores))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    zero = [torch.zeros_like(c, requires_grad=True) for c in cores]
    (g,) = torch.autograd.grad(tn.norm(tn.TT(zero)), zero[:1], create_graph=True)
    assert torch.all(g == 0) and not torch.isnan(g).any()


# --- products of trains whose scale sits on single cores -------------------------------------------------
def _skewed(train, up, down):
    """``train`` times 10^(up - down), as 10^up on its first core and 10^-down on its last."""
    cores = list(train.cores)
    cores[0], cores[-1] = cores[0] * 10.0**up, cores[-1] * 10.0**-down
    return type(train)(cores)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@given(up=st.integers(150, 300), shift=st.integers(-250, 250))
def test_products_of_skewed_trains_are_finite_when_their_result_is(backend, up, shift):
    # core 0 at 1e200 times core 0 at 1e200 overflowed to inf and met a 1e-300 core: NaN where the result is 1e100
    down = min(2 * up - shift, 300)
    scale = 2 * up - down  # the product's scale, representable by construction
    t = tn.random_tt((3, 4, 2, 3), 2, seed=0)
    eye = tn.eye((3, 4, 2, 3))
    a, b = _skewed(t, up, 0).to(backend), _skewed(t, up, down).to(backend)
    cases = [
        (tn.hadamard(a, b), tn.hadamard(t, t)),
        (tn.matvec(_skewed(eye, up, 0).to(backend), b), t),
        (tn.matmul(_skewed(eye, up, 0).to(backend), _skewed(eye, up, down).to(backend)), eye),
    ]
    for got, reference in cases:
        value = float(tn.norm(got))
        assert math.isfinite(value)
        # relative to the reference's norm, compared on a log scale (the factor 10^scale is exact up to rounding)
        assert math.log10(value) - scale == pytest.approx(math.log10(float(tn.norm(reference))), abs=1e-12)
        index = [[0, 1, 1, 2], [2, 3, 0, 1]]
        expected = as_numpy(tn.gather(reference, index)) if isinstance(reference, tn.TT) else None
        if expected is not None:
            got_entries = as_numpy(tn.gather(got, index)) / 10.0**scale
            np.testing.assert_allclose(got_entries, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())


def test_products_work_under_torch_func_transforms():
    # the scale check reads values, which torch.func's wrapped tensors do not have: skipped under a transform
    t = tn.random_tt((3, 4, 2), 2, seed=0).to("torch")
    c0, c1, c2 = t.cores
    eye = tn.eye((3, 4, 2)).to("torch")

    def loss(c):
        x = tn.TT([c, c1, c2])
        return tn.norm(tn.hadamard(x, t)) + tn.norm(tn.matvec(eye, x)) + tn.norm(tn.matmul(eye, eye))

    grad = torch.func.grad(loss)(c0)
    leaf = c0.clone().requires_grad_(True)
    loss(leaf).backward()
    torch.testing.assert_close(grad, leaf.grad)
    stacked = torch.func.vmap(lambda c: tn.full(tn.hadamard(tn.TT([c, c1, c2]), t)))(
        torch.stack([c0, 2 * c0])
    )
    torch.testing.assert_close(stacked[1], 2 * tn.full(tn.hadamard(t, t)))
