"""The core additions behind tensornet.linalg (the QTT Laplacian, TTM reshape, matvec rounded to eps) and the
operators of tensornet.linalg (Heisenberg chain, closed-form inverse Laplacian), against dense references."""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import as_numpy, dense_ttm
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet.linalg import heisenberg, laplacian_inverse
from tensornet.testing import strategies as tst


# --- QTT Laplacian -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2,), (4,), (16,), (4, 8), (2, 4, 8), (8, 2, 4)])
@pytest.mark.parametrize("step", [1.0, 0.25])
def test_qtt_laplacian_is_the_laplacian(shape, step):
    qtt = tn.laplacian(shape, step=step, qtt=True)
    bits = sum(int(math.log2(n)) for n in shape)
    assert qtt.row_shape == qtt.col_shape == (2,) * bits
    assert qtt.largest_rank <= (3 if len(shape) == 1 else 5)
    np.testing.assert_array_equal(dense_ttm(qtt), dense_ttm(tn.laplacian(shape, step=step)))


def test_qtt_laplacian_is_rank_3_on_a_million_points():
    qtt = tn.laplacian(2**20, qtt=True)
    assert qtt.ranks == (1, *([3] * 19), 1)
    # one row of the Laplacian: (L u)[i] for u = delta at i, by gathering entries of L @ e_i
    i = 12345
    e = tn.delta((2,) * 20, [int(c) for c in np.binary_repr(i, 20)])
    column = tn.matvec(qtt, e)
    near = [[int(c) for c in np.binary_repr(j, 20)] for j in (i - 1, i, i + 1, i + 2)]
    np.testing.assert_array_equal(as_numpy(tn.gather(column, near)), [1.0, -2.0, 1.0, 0.0])


def test_qtt_laplacian_errors():
    with pytest.raises(
        ValueError,
        match=r"laplacian: qtt=True needs every mode size to be a power of two >= 2, but mode 1 has size 6",
    ):
        tn.laplacian((4, 6), qtt=True)
    with pytest.raises(TypeError, match=r"laplacian: qtt must be True or False"):
        tn.laplacian((4,), qtt="yes")


# --- TTM reshape -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rows", "cols", "new"),
    [
        ((4, 6), (4, 6), (2, 2, 2, 3)),  # split both, one shape for a square TTM
        ((2, 2, 2, 3), (2, 2, 2, 3), (4, 6)),  # merge
        ((4, 6), (2, 3), ((2, 2, 6), (2, 1, 3))),  # rows and columns split at the same places
        ((8,), (8,), (2, 4)),
        ((3, 4), (5, 2), ((12,), (10,))),
    ],
)
def test_ttm_reshape_is_exact(rows, cols, new):
    a = tn.random_ttm(rows, cols, 3, seed=1)
    result = tn.reshape(a, new)
    new_rows, new_cols = (new, new) if isinstance(new[0], int) else new
    assert result.row_shape == tuple(new_rows) and result.col_shape == tuple(new_cols)
    np.testing.assert_allclose(dense_ttm(result), dense_ttm(a), atol=1e-12 * np.abs(dense_ttm(a)).max())


@given(a=tst.ttms(row_shape=(4, 4, 4), col_shape=(4, 4, 4), max_rank=4), eps=st.sampled_from([1e-1, 1e-3]))
def test_ttm_reshape_with_eps_meets_it(a, eps):
    result = tn.reshape(a, (2,) * 6, eps=eps)
    dense = dense_ttm(a)
    error = np.linalg.norm(dense_ttm(result) - dense)
    assert error <= eps * np.linalg.norm(dense) * (1 + 1e-6) + 1e-12


def test_ttm_reshape_errors():
    a = tn.random_ttm((4, 6), (4, 6), 2, seed=0)
    with pytest.raises(ValueError, match=r"reshape: new core 0 cuts the rows and the columns"):
        tn.reshape(a, ((2, 12), (8, 3)))  # rows cut inside old core 0, columns reach into core 1
    b = tn.random_ttm((4, 6), (2, 3), 2, seed=0)
    with pytest.raises(ValueError, match=r"needs shape=\(row_shape, col_shape\)"):
        tn.reshape(b, (2, 2, 2, 3))
    with pytest.raises(ValueError, match=r"has 3 modes but the column shape"):
        tn.reshape(a, ((2, 2, 6), (4, 6)))
    with pytest.raises(ValueError, match=r"the new row shape \(5, 5\) has 25 entries"):
        tn.reshape(a, ((5, 5), (4, 6)))


# --- matvec rounded to eps ---------------------------------------------------------------------------------
@contextlib.contextmanager
def forced(route):
    """matvec(eps=) on one route: the product formed and rounded (the default where it fits), or the sketch."""
    from tensornet import _matvec_round

    before = _matvec_round.SKETCH_ONLY_IF_TOO_LARGE
    _matvec_round.SKETCH_ONLY_IF_TOO_LARGE = route == "formed"
    try:
        yield
    finally:
        _matvec_round.SKETCH_ONLY_IF_TOO_LARGE = before


ROUTES = pytest.mark.parametrize("route", ["formed", "sketch"])


@ROUTES
@given(
    a=tst.ttms(row_shape=(3, 2, 3, 2), col_shape=(2, 3, 2, 3), max_rank=4),
    x=tst.tts(shape=(2, 3, 2, 3), max_rank=4, backend="numpy"),
    eps=st.sampled_from([0.3, 1e-2, 1e-6, 1e-12]),
)
def test_matvec_eps_meets_the_round_guarantee(route, a, x, eps):
    x = x.to(a.backend, dtype=a.dtype)
    exact = as_numpy(a.full()) @ as_numpy(x.full()).ravel()
    with forced(route):
        result = tn.matvec(a, x, eps=eps)
    error = np.linalg.norm(as_numpy(result.full()).ravel() - exact)
    slack = 1e-4 if "float32" in str(a.dtype) else 1e-12  # the rounding of the arithmetic itself
    assert error <= (eps + slack) * np.linalg.norm(exact) + 1e-30
    assert result.largest_rank <= tn.round(tn.matvec(a, x), eps=eps).largest_rank + 1


def test_matvec_eps_sketch_route_is_taken_and_certified(monkeypatch):
    from tensornet import _matvec_round

    monkeypatch.setattr(_matvec_round, "SKETCH_ONLY_IF_TOO_LARGE", False)
    frames, formed = [], []
    frame, form = _matvec_round._frame, _matvec_round._formed
    monkeypatch.setattr(_matvec_round, "_frame", lambda *args: frames.append(1) or frame(*args))
    monkeypatch.setattr(_matvec_round, "_formed", lambda *args: formed.append(1) or form(*args))
    shape = (4,) * 6
    # six copies of a rank-2 operator: stored rank 12, true rank 2, so the product (stored rank 24) has rank <= 4
    # and a sketch of rank 10 captures it: the certified bound holds without forming the product
    b = tn.random_ttm(shape, shape, 2, seed=1)
    a = b
    for _ in range(5):
        a = a + b
    x = tn.random_tt(shape, 2, seed=2)
    reference = tn.matvec(a, x)
    for eps in (1e-2, 1e-8):
        result = tn.matvec(a, x, eps=eps)
        assert float(tn.norm(result - reference)) <= eps * float(tn.norm(reference))
        assert result.largest_rank <= 4
    assert frames and not formed
    # a random rank-12 operator: the product's rank is near 24, the sketch misses eps and the product is formed
    a = tn.random_ttm(shape, shape, 12, seed=3)
    reference = tn.matvec(a, x)
    result = tn.matvec(a, x, eps=1e-8)
    assert float(tn.norm(result - reference)) <= 1e-8 * float(tn.norm(reference))
    assert formed


def test_matvec_eps_forms_the_product_where_it_fits():
    from tensornet import _matvec_round

    shape = (3,) * 4
    a, x = tn.random_ttm(shape, shape, 5, seed=3), tn.random_tt(shape, 2, seed=4)
    assert _matvec_round._fits(list(a.cores), list(x.cores))


def test_matvec_max_rank_warns_with_the_bound():
    shape = (3,) * 5
    a, x = tn.random_ttm(shape, shape, 3, seed=3), tn.random_tt(shape, 3, seed=4)
    with pytest.warns(tn.RankCapWarning, match=r"matvec: max_rank kept the result from meeting eps=1e-10"):
        result = tn.matvec(a, x, eps=1e-10, max_rank=2)
    assert result.largest_rank <= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tn.matvec(a, x, max_rank=2).largest_rank <= 2  # no eps: nothing to warn about


@ROUTES
def test_matvec_eps_zero_product_and_scales(route):
    shape = (2, 3, 2)
    a, x = tn.random_ttm(shape, shape, 2, seed=5), tn.random_tt(shape, 2, seed=6)
    with forced(route):
        assert float(tn.norm(tn.matvec(a, tn.zeros(shape), eps=1e-8))) == 0.0
    for scale in (1e-200, 1e200):
        with forced(route):
            big = tn.matvec(tn.scale(a, scale), x, eps=1e-10)
        reference = tn.matvec(a, x)
        assert float(tn.norm(tn.scale(big, 1 / scale) - reference)) <= 1e-9 * float(tn.norm(reference))


@ROUTES
def test_matvec_eps_torch_matches_numpy(route):
    shape = (3, 3, 3)
    a, x = tn.random_ttm(shape, shape, 3, seed=7), tn.random_tt(shape, 3, seed=8)
    with forced(route):
        y_np = tn.matvec(a, x, eps=1e-6)
        y_torch = tn.matvec(a.to("torch"), x.to("torch"), eps=1e-6)
    assert y_torch.backend == "torch"
    np.testing.assert_allclose(
        as_numpy(y_torch.full()), as_numpy(y_np.full()), atol=1e-5 * float(tn.norm(y_np))
    )


def test_matvec_eps_errors():
    a, x = tn.eye((2, 2)), tn.ones((2, 2))
    with pytest.raises(ValueError, match=r"matvec: eps must be finite and >= 0"):
        tn.matvec(a, x, eps=-1.0)
    with pytest.raises(ValueError, match=r"matvec: max_rank must be >= 1"):
        tn.matvec(a, x, max_rank=0)
    with pytest.raises(ValueError, match=r"matvec: A has col_shape \(2, 2\) but x has shape \(4,\)"):
        tn.matvec(a, tn.ones((4,)), eps=1e-3)


# --- operators ---------------------------------------------------------------------------------------------
def test_heisenberg_matches_dense_sum_of_bond_terms():
    sz = np.diag([0.5, -0.5])
    sx = np.array([[0.0, 0.5], [0.5, 0.0]])
    sy = np.array([[0.0, -0.5j], [0.5j, 0.0]])
    sites, j, delta, h = 5, 1.3, 0.7, 0.4

    def site_op(op, i):
        return np.kron(np.kron(np.eye(2**i), op), np.eye(2 ** (sites - i - 1)))

    dense = np.zeros((2**sites, 2**sites), dtype=complex)
    for i in range(sites - 1):
        for op, c in ((sx, j), (sy, j), (sz, j * delta)):
            dense += c * site_op(op, i) @ site_op(op, i + 1)
    for i in range(sites):
        dense -= h * site_op(sz, i)
    chain = heisenberg(sites, coupling=j, anisotropy=delta, field=h)
    assert chain.ranks == (1, 5, 5, 5, 5, 1)
    np.testing.assert_allclose(dense_ttm(chain), dense.real, atol=1e-14)
    assert np.abs(dense.imag).max() == 0


def test_heisenberg_errors():
    with pytest.raises(ValueError, match=r"heisenberg: sites must be >= 2"):
        heisenberg(1)
    with pytest.raises(TypeError, match=r"heisenberg: coupling must be a finite real number"):
        heisenberg(4, coupling=float("nan"))


@pytest.mark.parametrize("size", [1, 5, 8])
def test_laplacian_inverse_dense(size):
    inverse = laplacian_inverse(size, step=0.3)
    np.testing.assert_allclose(
        as_numpy(inverse.full()) @ as_numpy(tn.laplacian(size, step=0.3).full()), np.eye(size), atol=1e-12
    )


@pytest.mark.parametrize("level", [1, 2, 3, 6])
def test_laplacian_inverse_qtt(level):
    n = 2**level
    inverse = laplacian_inverse(n, step=0.5, qtt=True)
    assert inverse.largest_rank <= 5
    product = dense_ttm(inverse) @ dense_ttm(tn.laplacian(n, step=0.5, qtt=True))
    np.testing.assert_allclose(product, np.eye(n), atol=1e-10)


@pytest.mark.parametrize("level", [20, 40])
def test_poisson_by_the_qtt_inverse_to_working_precision(level):
    # -u'' = 1 on 2^level interior points: u = x(1 - x)/2 exactly at the grid points; the residual of any
    # representation of it is ~cond u (1e-4 at 2^20, 1e8 at 2^40), the error of u from the inverse ~1e-14
    n = 2**level
    h = 1.0 / (n + 1)
    u = tn.scale(tn.matvec(laplacian_inverse(n, step=h, qtt=True), tn.ones((2,) * level), eps=1e-13), -1.0)
    assert u.largest_rank <= 3
    rng = np.random.default_rng(0)
    index = rng.integers(0, 2, size=(4000, level))
    x = (index.astype(float) @ (2.0 ** np.arange(level - 1, -1, -1)) + 1.0) * h
    expected = x * (1 - x) / 2
    np.testing.assert_allclose(as_numpy(tn.gather(u, index)), expected, rtol=1e-11, atol=1e-14)


def test_laplacian_inverse_errors():
    with pytest.raises(
        ValueError, match=r"laplacian_inverse: qtt=True needs a power of two >= 2, got size 6"
    ):
        laplacian_inverse(6, qtt=True)
    with pytest.raises(ValueError, match=r"laplacian_inverse: step must be > 0"):
        laplacian_inverse(4, step=-1.0)
    with pytest.raises(ValueError, match=r"laplacian_inverse: size must be >= 1"):
        laplacian_inverse(0)


def test_constructors_and_reshape_on_torch():
    like = torch.zeros(1, dtype=torch.float32)
    qtt = tn.laplacian((4, 8), step=0.5, qtt=True, like=like)
    assert qtt.backend == "torch" and qtt.dtype == torch.float32
    np.testing.assert_allclose(as_numpy(qtt.full()), dense_ttm(tn.laplacian((4, 8), step=0.5)), atol=1e-5)
    back = tn.reshape(qtt, (4, 8))
    assert back.backend == "torch"
    np.testing.assert_allclose(as_numpy(back.full()), dense_ttm(tn.laplacian((4, 8), step=0.5)), atol=1e-5)
    chain = heisenberg(4, like=like)
    assert chain.backend == "torch"
    np.testing.assert_allclose(as_numpy(chain.full()), dense_ttm(heisenberg(4)), atol=1e-6)
    inverse = laplacian_inverse(8, qtt=True, like=torch.zeros(1, dtype=torch.float64))
    np.testing.assert_allclose(
        as_numpy(inverse.full()), dense_ttm(laplacian_inverse(8, qtt=True)), atol=1e-12
    )
