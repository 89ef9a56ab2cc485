"""tensornet.linalg: solve and eigsh against dense references and closed forms, on numpy and torch; the stopping
rule, caps, stagnation and warnings; clear errors for bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import as_numpy, gpu
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet.linalg import ConvergenceWarning, eigsh, heisenberg, solve

BACKENDS = ["numpy", "torch"]


def spd(shape, rank, seed, *, backend="numpy", dtype="float64"):
    """``B^T B + I`` for a random TTM B (symmetric positive definite), rounded to its true rank."""
    b = tn.random_ttm(shape, shape, rank, seed=seed)
    a = tn.round(tn.add(tn.matmul(b.T, b), tn.eye(shape)), eps=1e-14)
    return a.to(backend, dtype=dtype)


def dense_residual(a, x, b):
    ad, xd, bd = as_numpy(a.full()), as_numpy(x.full()).ravel(), as_numpy(b.full()).ravel()
    return np.linalg.norm(ad @ xd - bd) / np.linalg.norm(bd)


# --- solve -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_solve_matches_dense(backend, symmetric):
    shape = (3, 4, 2, 3)
    a = spd(shape, 2, seed=1)
    if not symmetric:  # a non-symmetric, still well-conditioned operator
        a = tn.round(tn.add(a, tn.scale(tn.random_ttm(shape, shape, 2, seed=7), 0.2)), eps=1e-14)
    b = tn.random_tt(shape, 3, seed=2)
    a, b = a.to(backend), b.to(backend)
    x, info = solve(a, b, tol=1e-10, return_info=True)
    assert x.backend == backend and x.dtype == b.dtype
    assert info.converged and info.residual <= 1e-10 and info.symmetric == symmetric
    assert dense_residual(a, x, b) <= 1e-10 * 1.01
    exact = np.linalg.solve(as_numpy(a.full()), as_numpy(b.full()).ravel())
    np.testing.assert_allclose(as_numpy(x.full()).ravel(), exact, atol=1e-8 * np.abs(exact).max())


@given(seed=st.integers(0, 10_000), rank=st.integers(1, 3), tol=st.sampled_from([1e-4, 1e-7, 1e-10]))
def test_solve_random_spd_meets_tol(seed, rank, tol):
    # hypothesis over A = B^T B + I: the contract is the TT-form residual, checked here densely
    shape = (2, 3, 3, 2)
    a = spd(shape, rank, seed)
    b = tn.random_tt(shape, 2, seed=seed + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # the contract: no warning means tol was met
        x = solve(a, b, tol=tol)
    assert dense_residual(a, x, b) <= tol * 1.01


def test_solve_numpy_and_torch_agree():
    shape = (4, 3, 4)
    a, b = spd(shape, 2, seed=3), tn.random_tt(shape, 2, seed=4)
    x_np = solve(a, b, tol=1e-11)
    x_torch = solve(a.to("torch"), b.to("torch"), tol=1e-11)
    np.testing.assert_allclose(as_numpy(x_torch.full()), as_numpy(x_np.full()), atol=1e-9)


def test_solve_float32():
    shape = (3, 3, 3)
    a, b = spd(shape, 2, seed=5, dtype="float32"), tn.random_tt(shape, 2, seed=6).to(dtype="float32")
    x = solve(a, b, tol=1e-5)
    assert x.dtype == np.float32
    assert dense_residual(a, x, b) <= 1e-5 * 1.01


def test_solve_laplacian_large_krylov_path():
    # 16^6 = 1.7e7 unknowns: the local systems exceed the dense switch, CG with the Kronecker-sum preconditioner
    a, b = tn.scale(tn.laplacian((16,) * 6), -1.0), tn.ones((16,) * 6)
    x, info = solve(a, b, tol=1e-8, return_info=True)
    assert info.converged and info.krylov > 0
    residual = float(tn.norm(tn.matvec(a, x) - b) / tn.norm(b))  # independent check in TT form
    assert residual <= 1e-8 * 1.01
    assert info.residual == pytest.approx(residual, rel=1e-6)  # what the contract reports is what x has


def test_solve_x0_is_used_and_not_modified():
    shape = (3, 4, 3)
    a, b = spd(shape, 2, seed=8), tn.random_tt(shape, 2, seed=9)
    exact = solve(a, b, tol=1e-12)
    before = [np.array(c) for c in exact.cores]
    x, info = solve(a, b, tol=1e-10, x0=exact, return_info=True)
    assert info.passes == 1  # started at the solution: one pass confirms it
    assert dense_residual(a, x, b) <= 1e-10
    assert all(np.array_equal(p, q) for p, q in zip(before, exact.cores))


def test_solve_zero_rhs_gives_zero():
    a = spd((2, 3), 1, seed=1)
    x = solve(a, tn.zeros((2, 3)))
    assert float(tn.norm(x)) == 0.0


def test_solve_one_core():
    a = spd((7,), 1, seed=2)
    b = tn.random_tt((7,), 1, seed=3)
    x = solve(a, b, tol=1e-12)
    assert dense_residual(a, x, b) <= 1e-12


@pytest.mark.parametrize("scale", [1e-150, 1e150])
def test_solve_at_extreme_scales(scale):
    shape = (3, 3, 3)
    a, b = spd(shape, 2, seed=4), tn.random_tt(shape, 2, seed=5)
    x = solve(tn.scale(a, scale), b, tol=1e-10)
    reference = solve(a, b, tol=1e-10)
    np.testing.assert_allclose(as_numpy(x.full()) * scale, as_numpy(reference.full()), rtol=1e-8, atol=0)


def test_solve_max_rank_caps_and_warns():
    shape = (4,) * 5
    a, b = tn.scale(tn.laplacian(shape), -1.0), tn.random_tt(shape, 3, seed=1)
    with pytest.warns(ConvergenceWarning, match=r"max_rank capped the ranks") as record:
        x, info = solve(a, b, tol=1e-12, max_rank=2, return_info=True)
    assert x.largest_rank <= 2 and info.capped and not info.converged
    achieved = float(str(record[0].message).split("= ")[1].split(" >")[0])
    assert achieved == pytest.approx(dense_residual(a, x, b), rel=1e-3)


def test_solve_max_sweeps_warns():
    shape = (8,) * 6
    a, b = tn.scale(tn.laplacian(shape), -1.0), tn.random_tt(shape, 4, seed=2)
    with pytest.warns(ConvergenceWarning, match=r"max_sweeps=1 passes were not enough"):
        _, info = solve(a, b, tol=1e-12, max_sweeps=1, return_info=True)
    assert info.passes == 1 and not info.converged


def qtt_poisson(level):
    """-u'' = 1 on 2^level interior points of (0, 1): the h-scaled QTT system and x(1 - x)/2 at the points."""
    n = 2**level
    h = 1.0 / (n + 1)
    a = tn.scale(tn.laplacian(n, step=h, qtt=True), -1.0)
    return a, tn.ones((2,) * level), h


def exact_at(t, h, count=2000, seed=0):
    """max |t - x(1 - x)/2| on random points of the QTT t (gathered, independent of any TT arithmetic)."""
    level = t.ncores
    rng = np.random.default_rng(seed)
    index = rng.integers(0, 2, size=(count, level))
    x = (index @ (2.0 ** np.arange(level - 1, -1, -1)) + 1.0) * h
    return float(np.max(np.abs(as_numpy(tn.gather(t, index)) - x * (1 - x) / 2)))


def test_solve_qtt_poisson_against_exact_solution():
    # on 2^12 points cond(A) ~ 7e6: the exact solution's own residual is ~1e-9, so ask for 1e-8
    a, b, h = qtt_poisson(12)
    x = solve(a, b, tol=1e-8)
    assert x.largest_rank <= 6  # the solution x(1 - x)/2 has QTT rank 3
    assert exact_at(x, h) <= 1e-9


def test_solve_stagnation_stops_early_and_warns():
    # cond(A) ~ 1.7e11 on 2^20 points: the exact solution's residual is ~1e-4, so tol = 1e-10 is unreachable
    a, b, h = qtt_poisson(20)
    with pytest.warns(ConvergenceWarning, match=r"stopped falling") as record:
        x, info = solve(a, b, tol=1e-10, max_sweeps=50, return_info=True)
    assert info.stagnated and info.passes < 50
    assert "residual" in str(record[0].message)
    assert exact_at(x, h) <= 1e-3 * 0.125  # still an approximate solution (max of x(1-x)/2 is 1/8)


# --- eigsh -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_eigsh_matches_dense(backend, k):
    shape = (2, 3, 2, 3)
    a = spd(shape, 2, seed=11, backend=backend)
    values, vectors = eigsh(a, k, tol=1e-12)
    reference = np.linalg.eigvalsh(as_numpy(a.full()))[:k]
    np.testing.assert_allclose(as_numpy(values), reference, rtol=1e-9)
    gram = np.array([[float(tn.dot(u, v)) for v in vectors] for u in vectors])
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-10)
    ad = as_numpy(a.full())
    for value, v in zip(as_numpy(values), vectors):
        vd = as_numpy(v.full()).ravel()
        assert np.linalg.norm(ad @ vd - value * vd) <= 1e-5 * np.linalg.norm(ad)


def test_eigsh_largest():
    a = spd((3, 3, 3), 2, seed=12)
    values, _ = eigsh(a, 3, which="LA", tol=1e-12)
    reference = np.linalg.eigvalsh(as_numpy(a.full()))[-3:]
    np.testing.assert_allclose(as_numpy(values), reference, rtol=1e-9)  # ascending, the largest three


def test_eigsh_indefinite_heisenberg_matches_dense():
    values, _vectors = eigsh(heisenberg(8), 3, tol=1e-12)
    reference = np.linalg.eigvalsh(as_numpy(heisenberg(8).full()))[:3]
    np.testing.assert_allclose(as_numpy(values), reference, rtol=1e-9)


def test_eigsh_heisenberg_16_literature_energy():
    # exact diagonalisation value of the open S=1/2 chain, L = 16 (also quimb's DMRG2 result)
    values, _ = eigsh(heisenberg(16), tol=1e-10)
    assert float(values[0]) == pytest.approx(-6.911737145574, abs=2e-9)


@pytest.mark.parametrize(("n", "d"), [(32, 8), (16, 12)])
def test_eigsh_laplacian_closed_form(n, d):
    # the lowest eigenvalue of -Laplacian on n^d points is d * 4 sin^2(pi / (2 (n + 1))); tol is relative to
    # max(|lambda|, ||A||_F / sqrt(N)), the RMS eigenvalue when the wanted one is small
    a = tn.scale(tn.laplacian((n,) * d), -1.0)
    values, vectors, info = eigsh(a, tol=1e-12, return_info=True)
    exact = d * 4 * math.sin(math.pi / (2 * (n + 1))) ** 2
    scale = max(exact, float(tn.norm(a)) / math.sqrt(float(n) ** d))
    assert abs(float(values[0]) - exact) <= 1e-12 * scale
    assert info.converged and vectors[0].largest_rank <= 8  # the eigenvector has rank 1


def test_eigsh_numpy_and_torch_agree():
    a = spd((3, 2, 3), 2, seed=13)
    v_np, _ = eigsh(a, 2, tol=1e-12)
    v_torch, vec_torch = eigsh(a.to("torch"), 2, tol=1e-12)
    assert isinstance(v_torch, torch.Tensor) and vec_torch[0].backend == "torch"
    np.testing.assert_allclose(as_numpy(v_torch), as_numpy(v_np), rtol=1e-10)


def test_eigsh_x0_block():
    a = spd((3, 3, 3), 2, seed=14)
    _, vectors = eigsh(a, 2, tol=1e-12)
    values, _, info = eigsh(a, 2, tol=1e-10, x0=vectors, return_info=True)
    assert info.passes <= 2
    np.testing.assert_allclose(as_numpy(values), np.linalg.eigvalsh(as_numpy(a.full()))[:2], rtol=1e-9)


def test_eigsh_max_sweeps_warns():
    with pytest.warns(ConvergenceWarning, match=r"not converged after 1 passes"):
        eigsh(heisenberg(12), tol=1e-12, max_sweeps=1)


# --- errors ------------------------------------------------------------------------------------------------
A3 = tn.eye((2, 3))
B3 = tn.ones((2, 3))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: solve(B3, B3), TypeError, r"solve: A must be a tensornet TTM"),
        (lambda: solve(A3, A3), TypeError, r"solve: b must be a tensornet TT"),
        (lambda: solve(tn.random_ttm((2, 3), (3, 2), 1), B3), ValueError, r"solve: A must be square"),
        (
            lambda: solve(A3, tn.ones((3, 2))),
            ValueError,
            r"solve: b has shape \(3, 2\) but A has col_shape \(2, 3\)",
        ),
        (lambda: solve(A3, B3, tol=-1e-8), ValueError, r"solve: tol must be a finite relative tolerance"),
        (lambda: solve(A3, B3, tol=0.0), ValueError, r"0 < tol < 1"),
        (lambda: solve(A3, B3, tol=float("nan")), ValueError, r"tol must be"),
        (lambda: solve(A3, B3, tol=True), TypeError, r"tol must be a real number"),
        (lambda: solve(A3, B3, x0=tn.ones((3, 2))), ValueError, r"x0 has shape"),
        (lambda: solve(A3, B3, max_rank=0), ValueError, r"max_rank must be >= 1"),
        (lambda: solve(A3, B3, max_sweeps=0), ValueError, r"max_sweeps must be >= 1"),
        (lambda: solve(A3, B3, return_info=1), TypeError, r"return_info must be True or False"),
        (lambda: solve(A3, B3.to("torch")), TypeError, r"different backends"),
        (
            lambda: solve(A3, B3.to(dtype="float32")),
            TypeError,
            r"solve: A is float64 but b is float32; give them one precision, e.g. b.to\(dtype='float64'\)",
        ),
        (
            lambda: solve(A3.to(dtype="complex128"), B3, x0=B3.to(dtype="complex64")),
            TypeError,
            r"solve: A is complex128 but x0 is complex64; .* x0.to\(dtype='complex128'\)",
        ),
        (
            lambda: eigsh(A3, 1, x0=[B3.to(dtype="float32")]),
            TypeError,
            r"eigsh: A is float64 but x0\[0\] is float32",
        ),
        (lambda: eigsh(A3, 0), ValueError, r"eigsh: k must be >= 1"),
        (lambda: eigsh(A3, 7), ValueError, r"k = 7 exceeds the dimension of A, 6"),
        (lambda: eigsh(A3, 1, which="SM"), ValueError, r"which must be 'SA'"),
        (lambda: eigsh(tn.random_ttm((2, 3), (2, 3), 2, seed=0)), ValueError, r"A is not symmetric"),
        (lambda: eigsh(A3, 2, x0=[B3]), ValueError, r"x0 has 1 vectors but k = 2"),
        (lambda: eigsh(A3, 1, x0=B3.full()), TypeError, r"x0 must be a TT or a sequence"),
        (lambda: eigsh(tn.random_ttm((2, 3), (3, 2), 1)), ValueError, r"eigsh: A must be square"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_solve_rejects_nan():
    a = tn.TTM([np.full((1, 2, 2, 1), np.nan)])
    with pytest.raises(ValueError, match=r"solve: .*NaN or inf"):
        solve(a, tn.ones((2,)))


# --- devices ---------------------------------------------------------------------------------------------
@gpu
def test_solve_and_eigsh_on_cuda():
    a = spd((4, 4, 4), 2, seed=1).to("torch", device="cuda")
    b = tn.random_tt((4, 4, 4), 2, seed=2).to("torch", device="cuda")
    x = solve(a, b, tol=1e-10)
    assert x.device.type == "cuda"
    assert dense_residual(a, x, b) <= 1e-10 * 1.01
    values, vectors = eigsh(a, 2, tol=1e-10)
    assert values.device.type == "cuda" and vectors[0].device.type == "cuda"


def test_eigsh_float32():
    a = spd((3, 3, 3), 2, seed=15, dtype="float32")
    values, vectors = eigsh(a, 2, tol=1e-5)
    assert values.dtype == np.float32 and vectors[0].dtype == np.float32
    reference = np.linalg.eigvalsh(as_numpy(a.full()))[:2]
    np.testing.assert_allclose(as_numpy(values), reference, rtol=1e-4)  # float32: ~1e-7 u times the spread


# --- complex operators ------------------------------------------------------------------------------------
def hermitian_pd(shape, rank, seed, *, backend="numpy"):
    """``B^H B + I`` for a random complex TTM B (Hermitian positive definite), rounded."""
    b = tn.random_ttm(shape, shape, rank, seed=seed, dtype="complex128")
    return tn.round(b.H @ b + tn.eye(shape, dtype="complex128"), eps=1e-14).to(backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hermitian", [True, False])
def test_complex_solve_matches_dense(backend, hermitian):
    shape = (3, 4, 3)
    a = hermitian_pd(shape, 2, seed=3, backend=backend)
    if not hermitian:  # complex symmetric, not Hermitian: a non-symmetric solve
        a = tn.round(a + 0.3j * tn.random_ttm(shape, shape, 1, seed=9).to(backend), eps=1e-14)
    b = tn.random_tt(shape, 2, seed=4, dtype="complex128").to(backend)
    x = solve(a, b, tol=1e-10)
    assert "complex" in str(x.dtype)
    assert dense_residual(a, x, b) <= 1e-10 * 1.01
    exact = np.linalg.solve(as_numpy(a.full()), as_numpy(b.full()).ravel())
    np.testing.assert_allclose(as_numpy(x.full()).ravel(), exact, atol=1e-8 * np.abs(exact).max())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3])
def test_hermitian_eigsh_matches_eigh(backend, k):
    shape = (3, 4, 3)
    b = tn.random_ttm(shape, shape, 2, seed=5, dtype="complex128")
    h = tn.round(b + b.H, eps=1e-14).to(backend)
    values, vectors = eigsh(h, k=k, tol=1e-12)
    dense = as_numpy(h.full())
    expected = np.linalg.eigvalsh(dense)[:k]
    assert not np.iscomplexobj(as_numpy(values))  # a Hermitian operator's eigenvalues are real
    np.testing.assert_allclose(as_numpy(values), expected, atol=1e-9 * np.abs(expected).max())
    gram = np.array([[complex(as_numpy(tn.dot(u, v))) for v in vectors] for u in vectors])
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-9)
    for value, vector in zip(as_numpy(values), vectors):
        residual = dense @ as_numpy(vector.full()).ravel() - value * as_numpy(vector.full()).ravel()
        assert np.linalg.norm(residual) <= 1e-6 * np.abs(expected).max()


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    seed=st.integers(0, 10_000),
    which=st.sampled_from(["b", "x0", "both"]),
    factor=st.sampled_from([1j, 1 + 2j, -0.5 + 1e-3j]),
    symmetric=st.booleans(),
)
def test_a_real_operator_with_a_complex_vector_solves_in_complex(backend, seed, which, factor, symmetric):
    # a real A with a complex b or x0 is promoted to complex (it returned wrong answers, relative error 1.2)
    shape = (3, 2, 3)
    a = spd(shape, 2, seed)
    if not symmetric:
        a = tn.round(tn.add(a, tn.scale(tn.random_ttm(shape, shape, 2, seed=seed + 7), 0.2)), eps=1e-14)
    b = tn.random_tt(shape, 2, seed=seed + 1)
    b_given = b * factor if which in ("b", "both") else b
    x0 = tn.random_tt(shape, 2, seed=seed + 2) * factor if which in ("x0", "both") else None
    a, b_given = a.to(backend), b_given.to(backend)
    x0 = None if x0 is None else x0.to(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        x = solve(a, b_given, tol=1e-10, x0=x0)
    assert x.dtype == b_given.dtype if which != "x0" else "complex" in str(x.dtype)
    exact = np.linalg.solve(as_numpy(a.full()), as_numpy(b_given.full()).ravel())
    np.testing.assert_allclose(as_numpy(x.full()).ravel(), exact, atol=1e-8 * np.abs(exact).max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_with_complex64_solves_in_complex128(backend):
    # numpy's promotion, as the rest of the algebra: float64 with complex64 is complex128 (it was refused)
    shape = (3, 2, 3)
    a, b = (
        spd(shape, 2, 3).to(backend),
        (tn.random_tt(shape, 2, seed=4) * (1 - 1j)).to(backend, dtype="complex64"),
    )
    x = solve(a, b, tol=1e-10)
    assert "complex128" in str(x.dtype)
    # the reference from b's cores widened first, as solve widens them (b.full() in complex64 is coarser)
    exact = np.linalg.solve(as_numpy(a.full()), as_numpy(b.to(dtype="complex128").full()).ravel())
    np.testing.assert_allclose(as_numpy(x.full()).ravel(), exact, atol=1e-8 * np.abs(exact).max())
    values, _ = eigsh(a, 1, tol=1e-10, x0=[b])
    np.testing.assert_allclose(as_numpy(values), np.linalg.eigvalsh(as_numpy(a.full()))[:1], rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1e200, 1e300, 1e-300])
def test_eigsh_at_extreme_scales_is_exact_and_quiet(backend, scale):
    # at 1e200 it gave the values but ~100 numpy overflow warnings and a false "not converged" warning
    a = (tn.laplacian((4, 4, 4)) * scale).to(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, vectors = eigsh(a, 2, tol=1e-10)
    reference = np.linalg.eigvalsh(as_numpy(tn.laplacian((4, 4, 4)).full()))[:2] * scale
    np.testing.assert_allclose(as_numpy(values), reference, rtol=1e-12)
    assert all(abs(float(tn.norm(v)) - 1.0) < 1e-12 for v in vectors)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_real_operator_with_complex_starts_finds_its_eigenpairs(backend):
    # a real symmetric A with complex x0: A is taken as complex Hermitian (it returned -0.005 for -10.85)
    shape = (4, 4, 4)
    a = tn.laplacian(shape).to(backend)
    starts = [(tn.random_tt(shape, 2, seed=s) * (1 + 2j)).to(backend) for s in (1, 2)]
    values, vectors = eigsh(a, 2, tol=1e-10, x0=starts)
    expected = np.linalg.eigvalsh(as_numpy(a.full()))[:2]
    np.testing.assert_allclose(as_numpy(values), expected, rtol=1e-9)
    dense = as_numpy(a.full())
    for value, vector in zip(as_numpy(values), vectors):
        v = as_numpy(vector.full()).ravel()
        assert np.linalg.norm(dense @ v - value * v) <= 1e-5 * abs(value)


def test_a_complex_symmetric_operator_is_not_hermitian():
    b = tn.random_ttm((3, 4), (3, 4), 2, seed=0, dtype="complex128")
    with pytest.raises(ValueError, match=r"eigsh: A is not Hermitian: \|\|A - A\^H\|\|_F"):
        eigsh(b + b.T)
