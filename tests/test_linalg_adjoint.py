"""VJP rules of solve and eigsh: the dot-product identity against dense solves, finite differences, and torch
autograd through the solvers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import as_numpy

import tensornet as tn
from tensornet import adjoint
from tensornet.linalg import eigsh, solve

SHAPE = (
    2,
    3,
    2,
)  # small enough for dense references; solutions of full rank (the tangent space is everything)


def operator(seed, *, symmetric):
    b = tn.random_ttm(SHAPE, SHAPE, 2, seed=seed)
    a = tn.add(tn.matmul(b.T, b), tn.eye(SHAPE))
    if not symmetric:
        a = tn.add(a, tn.scale(tn.random_ttm(SHAPE, SHAPE, 1, seed=seed + 50), 0.3))
    return tn.round(a, eps=1e-14)


def like(train, seed):
    """Random cores shaped like ``train``'s (a tangent)."""
    rng = np.random.default_rng(seed)
    return type(train)([rng.standard_normal(tuple(c.shape)) for c in train.cores])


def tangent(train, direction):
    """d/dt train(cores + t direction) at t = 0, densely: the sum over cores of the train with that core replaced."""
    total = 0.0
    for k in range(train.ncores):
        cores = list(train.cores)
        cores[k] = direction.cores[k]
        total = total + as_numpy(type(train)(cores).full())
    return total


def inner(parts_a, parts_b):
    return sum(float(np.sum(as_numpy(p) * as_numpy(q))) for p, q in zip(parts_a, parts_b))


@pytest.mark.parametrize("symmetric", [True, False])
def test_solve_rule_dot_product_identity(symmetric):
    # <J v, w> = <v, J^T w>: J maps a perturbation of A's and b's cores to dx = A^{-1} (db - dA x)
    a, b = operator(1, symmetric=symmetric), tn.random_tt(SHAPE, 2, seed=2)
    x = solve(a, b, tol=1e-13)
    w = tn.random_tt(SHAPE, 2, seed=3)  # the cotangent, a tensor
    da, db = like(a, 4), like(b, 5)
    ad, xd = as_numpy(a.full()), as_numpy(x.full()).ravel()
    jv = np.linalg.solve(ad, tangent(b, db).ravel() - tangent(a, da) @ xd)
    grads_a, grads_b = adjoint.solve(a, b, x, w, tol=1e-13)
    lhs = float(jv @ as_numpy(w.full()).ravel())
    rhs = inner(grads_a, da.cores) + inner(grads_b, db.cores)
    assert lhs == pytest.approx(rhs, rel=1e-9)


def test_solve_rule_finite_differences():
    a, b, c = operator(6, symmetric=False), tn.random_tt(SHAPE, 2, seed=7), tn.random_tt(SHAPE, 2, seed=8)
    da, db = like(a, 9), like(b, 10)

    def loss(t):  # <c, A(t)^{-1} b(t)>, densely
        at = tn.TTM([p + t * q for p, q in zip(a.cores, da.cores)])
        bt = tn.TT([p + t * q for p, q in zip(b.cores, db.cores)])
        return float(as_numpy(c.full()).ravel() @ np.linalg.solve(at.full(), bt.full().ravel()))

    h = 1e-6
    fd = (loss(h) - loss(-h)) / (2 * h)
    grads_a, grads_b = adjoint.solve(a, b, solve(a, b, tol=1e-13), c, tol=1e-13)
    assert inner(grads_a, da.cores) + inner(grads_b, db.cores) == pytest.approx(fd, rel=1e-7)


def test_solve_rule_with_a_real_operator_and_a_complex_b_gives_real_gradients_for_a():
    # promoted to complex inside; a real A's gradient is the real part (torch's rule for real inputs), checked
    # against finite differences of the real loss Re <c, A(t)^{-1} b> along a real direction of A's cores
    a, b = operator(21, symmetric=False), tn.random_tt(SHAPE, 2, seed=22) * (1 + 2j)
    c = tn.random_tt(SHAPE, 2, seed=23) * (0.5 - 1j)
    da = like(a, 24)
    x = solve(a, b, tol=1e-13)
    assert "complex" in str(x.dtype)
    grads_a, grads_b = adjoint.solve(a, b, x, c, tol=1e-13)
    assert not any(np.iscomplexobj(g) for g in grads_a) and all(np.iscomplexobj(g) for g in grads_b)

    def loss(t):
        at = tn.TTM([p + t * q for p, q in zip(a.cores, da.cores)]).full()
        return float(np.real(np.vdot(c.full().ravel(), np.linalg.solve(at, b.full().ravel()))))

    h = 1e-6
    fd = (loss(h) - loss(-h)) / (2 * h)
    assert inner(grads_a, da.cores) == pytest.approx(fd, rel=1e-7)


def test_torch_autograd_through_solve_with_a_real_operator_and_a_complex_b():
    a, b = operator(25, symmetric=False), tn.random_tt(SHAPE, 2, seed=26) * (0.3 + 1j)
    da = like(a, 27)
    at, bt = a.to("torch"), b.to("torch")
    for core in at.cores:
        core.requires_grad_(True)
    x = solve(at, bt, tol=1e-13)
    (x.full().abs() ** 4).sum().backward()
    assert not any(c.grad.is_complex() for c in at.cores)

    def loss(t):
        at_ = tn.TTM([p + t * q for p, q in zip(a.cores, da.cores)]).full()
        return float(np.sum(np.abs(np.linalg.solve(at_, b.full().ravel())) ** 4))

    h = 1e-6
    fd = (loss(h) - loss(-h)) / (2 * h)
    assert inner([c.grad for c in at.cores], da.cores) == pytest.approx(fd, rel=1e-7)


def complex_like(train, seed):
    rng = np.random.default_rng(seed)
    return type(train)(
        [rng.standard_normal(c.shape) + 1j * rng.standard_normal(c.shape) for c in train.cores]
    )


def complex_inner(grads, directions):
    """The directional derivative a gradient in torch's convention gives: Re sum conj(g) d."""
    return sum(float(np.real(np.vdot(as_numpy(g), as_numpy(d)))) for g, d in zip(grads, directions))


def test_complex_solve_and_eigsh_rules_follow_torchs_convention():
    # they returned the conjugate gradient for complex cores (relative error 1.5-1.8 against finite differences)
    a = tn.round(operator(31, symmetric=False) + 0.3j * tn.random_ttm(SHAPE, SHAPE, 1, seed=32), eps=1e-14)
    b, c = (
        complex_like(tn.random_tt(SHAPE, 2, seed=33), 34),
        complex_like(tn.random_tt(SHAPE, 2, seed=35), 36),
    )
    da, db = complex_like(a, 37), complex_like(b, 38)

    def loss(t):  # Re <c, A(t)^{-1} b(t)>
        at = tn.TTM([p + t * q for p, q in zip(a.cores, da.cores)]).full()
        bt = tn.TT([p + t * q for p, q in zip(b.cores, db.cores)]).full().ravel()
        return float(np.real(np.vdot(c.full().ravel(), np.linalg.solve(at, bt))))

    h = 1e-6
    grads_a, grads_b = adjoint.solve(a, b, solve(a, b, tol=1e-13), c, tol=1e-13)
    got = complex_inner(grads_a, da.cores) + complex_inner(grads_b, db.cores)
    assert got == pytest.approx((loss(h) - loss(-h)) / (2 * h), rel=1e-7)

    m = tn.random_ttm(SHAPE, SHAPE, 2, seed=39, dtype="complex128")
    hermitian = tn.round(m + m.H, eps=1e-14)
    _values, vectors = eigsh(hermitian, 2, tol=1e-13)
    dh = complex_like(hermitian, 40)

    def eig_loss(t):  # the eigenvalues of the Hermitian part of H(t): d lambda = v^H dH v is its real part
        full = tn.TTM([p + t * q for p, q in zip(hermitian.cores, dh.cores)]).full()
        w = np.linalg.eigvalsh((full + full.conj().T) / 2)
        return 0.3 * w[0] - 1.1 * w[1]

    grads = adjoint.eigsh(hermitian, vectors, [0.3, -1.1])
    assert complex_inner(grads, dh.cores) == pytest.approx((eig_loss(h) - eig_loss(-h)) / (2 * h), rel=1e-7)


def test_torch_autograd_through_complex_solve_and_eigsh_passes_check_vjp():
    from tensornet.testing import check_vjp

    a = -tn.laplacian((2, 3), like=torch.zeros(1, dtype=torch.float64))
    b = tn.random_tt((2, 3), rank=1, like=torch.zeros(1, dtype=torch.complex128), seed=0)
    check_vjp(lambda x: solve(a, x, tol=1e-13), b)  # a real A with a complex b
    complex_a = tn.round(a + 0.3j * tn.random_ttm((2, 3), (2, 3), 1, seed=3).to("torch"), eps=1e-14)
    check_vjp(lambda m: solve(m, b, tol=1e-13), complex_a)
    m = tn.random_ttm((2, 3), (2, 3), 2, seed=5, dtype="complex128").to("torch")
    check_vjp(lambda m: eigsh(m + m.H, 2, tol=1e-13)[0], m)


def test_eigsh_rule_finite_differences():
    a = operator(11, symmetric=True)
    _values, vectors = eigsh(a, 2, tol=1e-13)
    da = like(a, 12)
    weights = [1.0, -0.5]

    def loss(t):
        m = tn.TTM([p + t * q for p, q in zip(a.cores, da.cores)]).full()
        w = np.linalg.eigvalsh(
            (m + m.T) / 2
        )  # A(t) is not symmetric; its eigenvalues' derivative is v^T dA v
        return weights[0] * w[0] + weights[1] * w[1]

    h = 1e-6
    fd = (loss(h) - loss(-h)) / (2 * h)
    grads = adjoint.eigsh(a, vectors, weights)
    assert inner(grads, da.cores) == pytest.approx(fd, rel=1e-7)


def test_torch_autograd_through_solve_matches_finite_differences():
    a, b = operator(13, symmetric=False), tn.random_tt(SHAPE, 2, seed=14)
    da, db = like(a, 15), like(b, 16)
    at, bt = a.to("torch"), b.to("torch")
    for core in (*at.cores, *bt.cores):
        core.requires_grad_(True)
    x = solve(at, bt, tol=1e-13)
    (x.full() ** 3).sum().backward()  # a nonlinear loss of the solution, through its cores

    def loss(t):
        at_ = tn.TTM([p + t * q for p, q in zip(a.cores, da.cores)]).full()
        bt_ = tn.TT([p + t * q for p, q in zip(b.cores, db.cores)]).full().ravel()
        return float(np.sum(np.linalg.solve(at_, bt_) ** 3))

    h = 1e-6
    fd = (loss(h) - loss(-h)) / (2 * h)
    got = inner([c.grad for c in at.cores], da.cores) + inner([c.grad for c in bt.cores], db.cores)
    assert got == pytest.approx(fd, rel=1e-7)


def test_torch_autograd_through_eigsh_values():
    a = operator(17, symmetric=True)
    at = a.to("torch")
    for core in at.cores:
        core.requires_grad_(True)
    values, vectors = eigsh(at, 2, tol=1e-13)
    assert values.requires_grad and not vectors[0].cores[0].requires_grad
    (values[0] + 2.0 * values[1]).backward()
    expected = adjoint.eigsh(a, [v.to("numpy") for v in vectors], [1.0, 2.0])
    for core, grad in zip(at.cores, expected):
        np.testing.assert_allclose(as_numpy(core.grad), grad, rtol=1e-8, atol=1e-10)


def test_torch_solve_without_grad_builds_no_graph():
    a, b = operator(18, symmetric=True).to("torch"), tn.random_tt(SHAPE, 2, seed=19).to("torch")
    for core in a.cores:
        core.requires_grad_(True)
    with torch.no_grad():
        x = solve(a, b)
    assert not any(c.requires_grad for c in x.cores)


def test_rule_errors():
    a, b = operator(20, symmetric=True), tn.random_tt(SHAPE, 2, seed=21)
    with pytest.raises(ValueError, match=r"adjoint.solve: grad has shape"):
        adjoint.solve(a, b, b, tn.ones((3, 2, 2)))
    with pytest.raises(ValueError, match=r"adjoint.eigsh: 1 cotangents for 2 vectors"):
        adjoint.eigsh(a, [b, b], [1.0])
