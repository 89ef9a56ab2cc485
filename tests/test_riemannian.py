"""Riemannian geometry of fixed-rank trains: the projection against the dense projector built from SVDs of the
unfoldings (no code shared with tensornet), idempotence, tangent arithmetic, the retraction's order, transport,
Riemannian gradients (numpy through tensornet.adjoint, torch through autograd) and Hessian-vector products
against central differences, on numpy and torch; errors for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import as_numpy, torch
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet import adjoint
from tensornet import riemannian as rm
from tensornet.testing import strategies as tst


@st.composite
def points(draw, *, max_ndim=4, max_size=4, max_rank=3, complex_=False):
    """A random TT of full TT rank (generic random cores with ranks within the useful ones)."""
    d = draw(st.integers(1, max_ndim))
    shape = tuple(draw(st.lists(st.integers(2, max_size), min_size=d, max_size=d)))
    ranks = draw(tst.bond_ranks(shape, max_rank=max_rank))
    backend = draw(st.sampled_from(["numpy", "torch"]))
    dtype = draw(st.sampled_from(["float64", "complex128"])) if complex_ else "float64"
    seed = draw(st.integers(0, 2**16))
    x = tn.random_tt(shape, ranks if d > 1 else 1, seed=seed, dtype=dtype)
    return x.to(backend)


def unfolding_projectors(dense, k):
    """Orthogonal projectors onto the column and row spaces of the k-th unfolding (modes < k+1 | modes > k)."""
    shape = dense.shape
    left = math.prod(shape[: k + 1])
    matrix = dense.reshape(left, -1)
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    rank = int(np.sum(s > s[0] * 1e-10))
    u, vh = u[:, :rank], vh[:rank]
    # row-major vectorisation: vec(Y P) = (I (x) P^T) vec(Y), and Y -> Y Vh^H Vh projects onto the row space
    return u @ u.conj().T, (vh.conj().T @ vh).T


def dense_projector(x):
    """P_x = sum_k P_{<k} (x) I (x) P_{>k} - sum_{k<d} P_{<=k} (x) P_{>k}, from the dense tensor's unfoldings."""
    dense = as_numpy(tn.full(x))
    shape, d = dense.shape, dense.ndim
    if d == 1:
        return np.eye(shape[0])
    cols, rows = zip(*(unfolding_projectors(dense, k) for k in range(d - 1)))
    total = np.zeros((dense.size, dense.size), dtype=dense.dtype)
    for k in range(d):
        before = cols[k - 1] if k > 0 else np.ones((1, 1))
        after = rows[k] if k < d - 1 else np.ones((1, 1))
        total += np.kron(np.kron(before, np.eye(shape[k])), after)
        if k < d - 1:
            total -= np.kron(cols[k], rows[k])
    return total


def dense(t):
    return as_numpy(tn.full(t))


def like(x, ranks, seed):
    return tn.random_tt(x.shape, ranks, seed=seed, dtype=x.dtype).to(x.backend)


# --- projection ---------------------------------------------------------------------------------------
@given(points(complex_=True), st.integers(1, 3), st.integers(0, 1000))
def test_project_matches_dense_projector(x, rank, seed):
    z = like(x, rank, seed)
    p = rm.project(x, z)
    expected = (dense_projector(x) @ dense(z).reshape(-1)).reshape(x.shape)
    scale = max(np.abs(expected).max(), np.abs(dense(z)).max())
    np.testing.assert_allclose(dense(p.to_tt()), expected, rtol=0, atol=1e-12 * scale)
    assert p.to_tt().ranks == (1, *(2 * r for r in x.ranks[1:-1]), 1)


@given(points(complex_=True), st.integers(0, 1000))
def test_project_is_idempotent_and_fixes_x(x, seed):
    p = rm.project(x, like(x, 2, seed))
    again = rm.project(x, p.to_tt())
    scale = float(p.norm())
    assert float((again - p).norm()) <= 1e-12 * scale
    own = rm.project(x, x)
    np.testing.assert_allclose(dense(own.to_tt()), dense(x), rtol=0, atol=1e-12 * np.abs(dense(x)).max())
    # a tangent vector given directly is projected as its TT
    assert float((rm.project(x, p) - p).norm()) <= 1e-12 * scale


@given(points(), st.integers(0, 1000))
def test_project_of_a_sum_is_the_sum_of_projections(x, seed):
    a, b = like(x, 2, seed), like(x, 1, seed + 1)
    together = rm.project(x, [a, b, a])
    apart = rm.project(x, a) + rm.project(x, b) + rm.project(x, a)
    assert float((together - apart).norm()) <= 1e-12 * float(together.norm())
    expected = dense_projector(x) @ (2 * dense(a) + dense(b)).reshape(-1)
    np.testing.assert_allclose(
        dense(together.to_tt()).reshape(-1), expected, atol=1e-11 * np.abs(expected).max()
    )


def test_project_is_right_at_extreme_scales():
    x = tn.random_tt((3, 4, 5), 2, seed=0)
    z = tn.random_tt((3, 4, 5), 2, seed=1)
    reference = dense(rm.project(x, z).to_tt())
    for exponent in (-300, 300):
        huge = tn.TT([c * 2.0 ** (exponent / 3) for c in z.cores])  # entries ~2^exponent, cores finite
        p = rm.project(x, huge)
        np.testing.assert_allclose(dense(p.to_tt()) / 2.0**exponent, reference, rtol=1e-12, atol=1e-12)


# --- tangent arithmetic -------------------------------------------------------------------------------
@given(points(complex_=True), st.integers(0, 1000))
def test_tangent_arithmetic_and_inner(x, seed):
    u, v = rm.project(x, like(x, 2, seed)), rm.project(x, like(x, 1, seed + 1))
    combo = u + 2.0 * v - v / 4.0
    np.testing.assert_allclose(
        dense(combo.to_tt()),
        dense(u.to_tt()) + 1.75 * dense(v.to_tt()),
        atol=1e-11 * np.abs(dense(u.to_tt())).max(),
    )
    np.testing.assert_allclose(dense((-u).to_tt()), -dense(u.to_tt()), atol=0)
    expected = np.vdot(dense(u.to_tt()), dense(v.to_tt()))
    got = complex(as_numpy(rm.inner(u, v)))
    assert abs(got - expected) <= 1e-11 * max(1.0, abs(expected), float(u.norm()) * float(v.norm()))
    assert abs(float(u.norm()) - np.linalg.norm(dense(u.to_tt()))) <= 1e-11 * float(u.norm())
    assert complex(as_numpy(u.inner(v))) == got


# --- retraction and transport -------------------------------------------------------------------------
@given(points(max_ndim=4), st.integers(0, 1000))
def test_retract_keeps_ranks_and_is_second_order(x, seed):
    v = rm.project(x, like(x, 2, seed))
    v = v / float(v.norm()) * float(tn.norm(x))
    errors = []
    for h in (1e-2, 5e-3):
        y = rm.retract(x, h * v)
        assert y.ranks == x.ranks
        errors.append(np.linalg.norm(dense(y) - dense(x) - h * dense(v.to_tt())) / float(tn.norm(x)))
    # O(h^2): halving h divides the error by about 4 (3 allows the next order); tiny errors are rounding
    assert errors[1] <= errors[0] / 3 or errors[0] <= 1e-12


def test_retract_of_zero_is_x_and_ranks_survive_cancellation():
    x = tn.random_tt((4, 5, 6), (2, 3), seed=0)
    zero = rm.project(x, x) * 0.0
    np.testing.assert_allclose(dense(rm.retract(x, zero)), dense(x), atol=1e-12)
    y = rm.retract(x, -0.999 * rm.project(x, x))  # x + v = 0.001 x: tiny but of the same ranks
    assert y.ranks == x.ranks
    np.testing.assert_allclose(dense(y), 0.001 * dense(x), atol=1e-14)


@given(points(), st.integers(0, 1000))
def test_transport_is_the_projection_at_the_new_point(x, seed):
    v = rm.project(x, like(x, 2, seed))
    y = rm.retract(x, 0.1 * rm.project(x, like(x, 1, seed + 5)))
    w = rm.transport(x, y, v)
    assert w.point is y
    expected = dense_projector(y) @ dense(v.to_tt()).reshape(-1)
    np.testing.assert_allclose(
        dense(w.to_tt()).reshape(-1), expected, atol=1e-11 * max(1.0, np.abs(expected).max())
    )
    assert float((rm.transport(y, y, w) - w).norm()) <= 1e-12 * float(w.norm()) + 1e-300


# --- gradients ----------------------------------------------------------------------------------------
def squared_distance_numpy(a):
    """f(t) = ||t - a||^2 = <t, t> - 2<a, t> + <a, a> with its core gradients from tensornet.adjoint."""

    def f(t):
        ga, gb = adjoint.dot(t, t)
        _, ha = adjoint.dot(a, t)
        value = float(tn.dot(t - a, t - a))
        return value, [p + q - 2.0 * s for p, q, s in zip(ga, gb, ha)]

    return f


@given(points(), st.integers(0, 1000))
def test_grad_of_squared_distance_is_the_projected_gradient(x, seed):
    # never x's own seed (points() draws up to 2^16): a == x would make the gradient 0
    a = like(x, 3, seed + 2**17)
    if x.backend == "numpy":
        g, value = rm.grad(squared_distance_numpy(a), x, return_value=True)
    else:
        g, value = rm.grad(lambda t: tn.dot(t - a, t - a), x, return_value=True)
    expected = rm.project(x, 2.0 * (x - a))
    assert float((g - expected).norm()) <= 1e-11 * float(expected.norm())
    assert abs(float(value) - float(tn.norm(x - a)) ** 2) <= 1e-10 * float(tn.norm(x - a)) ** 2


def test_grad_of_a_sampled_loss_torch():
    """A completion loss through tn.gather (autograd) has the gradient P_x of the sparse residual tensor."""
    x = tn.random_tt((4, 5, 3, 4), (2, 3, 2), seed=0).to("torch")
    rng = np.random.default_rng(1)
    index = np.stack([rng.integers(0, n, 60) for n in x.shape], axis=1)
    values = torch.tensor(rng.standard_normal(60), dtype=torch.float64)
    g = rm.grad(lambda t: 0.5 * ((tn.gather(t, index) - values) ** 2).sum(), x)
    residual = np.zeros(x.shape)
    np.add.at(residual, tuple(index.T), as_numpy(tn.gather(x, index) - values))
    expected = dense_projector(x) @ residual.reshape(-1)
    np.testing.assert_allclose(dense(g.to_tt()).reshape(-1), expected, atol=1e-12 * np.abs(expected).max())


def test_grad_numpy_and_torch_agree_on_a_quartic():
    x = tn.random_tt((3, 4, 5), 2, seed=3)
    xt = x.to("torch")

    def f_numpy(t):  # f = <t, t>^2: core gradients 2 <t, t> (grad_a + grad_b) of <t, t>
        ga, gb = adjoint.dot(t, t)
        s = float(tn.dot(t, t))
        return s**2, [2.0 * s * (p + q) for p, q in zip(ga, gb)]

    gn = rm.grad(f_numpy, x)
    gt = rm.grad(lambda t: tn.dot(t, t) ** 2, xt)
    for a, b in zip(gn.deltas, gt.deltas):
        np.testing.assert_allclose(as_numpy(a), as_numpy(b), atol=1e-10 * float(gt.norm()))
    # the Euclidean gradient 4 <x, x> x is in the tangent space (x is): the Riemannian one equals it
    np.testing.assert_allclose(dense(gn.to_tt()), 4 * float(tn.dot(x, x)) * dense(x), rtol=1e-10)


# --- Hessian-vector products --------------------------------------------------------------------------
def central_difference(f, x, v, h=1e-5):
    """P_x (grad f(R_x(h v)) - grad f(R_x(-h v))) / 2h: the definition, along another curve than hess_vec's."""

    def field(y):
        return rm.project(x, rm.grad(f, y).to_tt())

    return (field(rm.retract(x, h * v)) - field(rm.retract(x, -h * v))) / (2 * h)


@pytest.mark.parametrize(
    "shape,ranks", [((4, 5, 6), (2, 3)), ((3, 3, 3, 3), (2, 3, 2)), ((5,), 1), ((4, 6), 2)]
)
def test_hess_vec_torch_against_central_differences(shape, ranks):
    x = tn.random_tt(shape, ranks, seed=0).to("torch")
    a = tn.random_tt(shape, 3, seed=1).to("torch")
    v = rm.project(x, tn.random_tt(shape, 2, seed=2).to("torch"))
    w = rm.project(x, tn.random_tt(shape, 2, seed=3).to("torch"))
    for f in (lambda t: tn.dot(t - a, t - a), lambda t: tn.dot(t, a) ** 2 + tn.dot(t, t) * tn.dot(t, t)):
        h = rm.hess_vec(f, x, v)
        fd = central_difference(f, x, v)
        assert float((h - fd).norm()) <= 1e-7 * float(fd.norm())
        # the Riemannian Hessian is self-adjoint
        left, right = float(rm.inner(h, w)), float(rm.inner(v, rm.hess_vec(f, x, w)))
        assert abs(left - right) <= 1e-10 * max(1.0, abs(left))


def test_hess_vec_has_the_curvature_term():
    """For ||x - a||^2 the projected Euclidean Hessian is 2v; the Riemannian Hessian differs by the curvature."""
    x = tn.random_tt((4, 5, 6), 2, seed=0).to("torch")
    a = tn.random_tt((4, 5, 6), 3, seed=1).to("torch")
    v = rm.project(x, tn.random_tt((4, 5, 6), 2, seed=2).to("torch"))
    h = rm.hess_vec(lambda t: tn.dot(t - a, t - a), x, v)
    assert float((h - 2.0 * v).norm()) > 0.1 * float(h.norm())
    # at a = x (a critical point with zero gradient) the curvature term vanishes
    h0 = rm.hess_vec(lambda t: tn.dot(t - x, t - x), x, v)
    assert float((h0 - 2.0 * v).norm()) <= 1e-10 * float(v.norm())


def test_hess_vec_numpy_matches_torch():
    x = tn.random_tt((4, 5, 6), (2, 3), seed=0)
    a = tn.random_tt((4, 5, 6), 3, seed=1)
    v = rm.project(x, tn.random_tt((4, 5, 6), 2, seed=2))
    hn = rm.hess_vec(squared_distance_numpy(a), x, v)
    xt, at = x.to("torch"), a.to("torch")
    vt = rm.project(xt, tn.random_tt((4, 5, 6), 2, seed=2).to("torch"))
    ht = rm.hess_vec(lambda t: tn.dot(t - at, t - at), xt, vt)
    # numpy takes a central difference: accurate to ~u^(2/3) relative
    for p, q in zip(hn.deltas, ht.deltas):
        np.testing.assert_allclose(as_numpy(p), as_numpy(q), atol=1e-8 * float(ht.norm()))


# --- errors -------------------------------------------------------------------------------------------
def test_errors_name_the_function_and_the_fix():
    x = tn.random_tt((3, 4, 5), 2, seed=0)
    with pytest.raises(TypeError, match="project: x must be a tensornet TT"):
        rm.project(np.zeros((3, 4, 5)), x)
    with pytest.raises(ValueError, match=r"does not have full TT rank.*tn.round"):
        big = tn.random_tt((4, 5, 6), 2, seed=0)
        rm.project(big + big, big)  # ranks 4 but unfolding ranks 2
    with pytest.raises(ValueError, match="more than its unfolding can have"):
        rm.project(tn.random_tt((2, 2, 2), 3, seed=0), tn.random_tt((2, 2, 2), 1, seed=0))
    with pytest.raises(ValueError, match="TT shapes differ"):
        rm.project(x, tn.random_tt((3, 4, 6), 2, seed=1))
    with pytest.raises(TypeError, match="non-empty sequence"):
        rm.project(x, [])
    with pytest.raises(TypeError, match="z is complex but x is real"):
        rm.project(x, x.to(dtype="complex128"))
    # a wider z is refused, not narrowed to x's dtype (it was: project(complex64 x, float64 z) was complex64)
    with pytest.raises(
        TypeError, match=r"project: x is complex64 but z is float64; .* x.to\(dtype='complex128'\)"
    ):
        rm.project(x.to(dtype="complex64"), x)
    with pytest.raises(TypeError, match=r"project: operands have different dtypes \(float32 and float64\)"):
        rm.project(x.to(dtype="float32"), x)
    assert (
        rm.project(x.to(dtype="complex128"), x).to_tt().dtype == x.to(dtype="complex128").dtype
    )  # same width
    # transport's errors name transport and its arguments (they said "project: x ... z")
    with pytest.raises(TypeError, match=r"transport: v is complex but y is real"):
        xc = x.to(dtype="complex128")
        rm.transport(xc, x, rm.project(xc, xc))
    y = tn.random_tt((3, 4, 5), 2, seed=1)
    u, v = rm.project(x, y), rm.project(y, x)
    with pytest.raises(ValueError, match=r"different points.*transport"):
        u + v
    with pytest.raises(ValueError, match="different points"):
        rm.inner(u, v)
    with pytest.raises(ValueError, match="retract: v is a tangent vector at another point"):
        rm.retract(y, u)
    with pytest.raises(TypeError, match="scalar must be a number or a 0-d array, got str"):
        u * "2"
    with pytest.raises(TypeError, match="complex scalar cannot scale a real"):
        u * 1j
    with pytest.raises(TypeError, match="truth value"):
        bool(u)
    with pytest.raises(AttributeError, match="immutable"):
        u.foo = 1
    with pytest.raises(TypeError, match=r"numpy has no reverse mode.*\(value, core_grads\)"):
        rm.grad(lambda t: float(tn.dot(t, t)), x)
    with pytest.raises(ValueError, match="core gradients of shapes"):
        rm.grad(lambda t: (1.0, [c for c in x.cores]), x)
    with pytest.raises(TypeError, match="f must be callable"):
        rm.grad(3, x)
    with pytest.raises(TypeError, match="complex value"):
        rm.grad(lambda t: tn.dot(t, t) * 1j, x.to("torch"))
    with pytest.raises(TypeError, match="complex trains are not supported"):
        xc = x.to(dtype="complex128")
        rm.hess_vec(lambda t: tn.norm(t), xc, rm.project(xc, xc))
    with pytest.raises(ValueError, match="hess_vec: v is not a tangent vector at x"):
        rm.hess_vec(lambda t: tn.dot(t, t), y, u)
    with pytest.raises(TypeError, match=r"transport: v must be a tensornet.riemannian.Tangent"):
        rm.transport(x, y, x)


def test_import_does_not_need_torch():
    import subprocess
    import sys

    code = "import sys, tensornet as tn; tn.riemannian; tn.complete; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_scaling_a_tangent_vector_by_any_real_scalar_keeps_its_dtype(backend):
    # a numpy float64 scalar turned a float32 vector into float64 deltas; a 0-d numpy array was refused on torch
    x = tn.random_tt((3, 4, 5), 2, seed=0, dtype="float32").to(backend)
    v = rm.project(x, x)
    for alpha in (2.0, np.float64(2.0), np.array(2.0), np.float32(2.0)):
        w = v * alpha
        assert w.dtype == v.dtype
        np.testing.assert_allclose(as_numpy(w.to_tt().full()), 2.0 * as_numpy(v.to_tt().full()), rtol=1e-6)
