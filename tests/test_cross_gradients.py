"""Gradients through ``apply`` and ``cross``: the returned train is the cross interpolant at its own index sets,
built from ``f``'s values by differentiable operations, so a loss of it has that train's exact gradient with
respect to the input trains' cores and to anything ``f`` closes over. Before, the values were detached and
such gradients were silently dropped."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import as_numpy, torch
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet.testing import strategies as tst

FUNCTIONS = {
    "exp": (torch.exp, np.exp),
    "sin": (torch.sin, np.sin),
    "square plus one": (lambda v: v * v + 1.0, lambda v: v * v + 1.0),
}


def leaves(train):
    """The train's cores as fresh leaves that require grad (and the train built on them)."""
    cores = [c.detach().clone().requires_grad_(True) for c in train.cores]
    return type(train)(cores), cores


@given(
    tst.tts(backend="torch", dtype="float64", max_ncores=3, max_size=4, max_rank=2, std=0.5),
    st.sampled_from(sorted(FUNCTIONS)),
    st.integers(0, 2**16),
)
def test_apply_gradient_matches_the_dense_gradient(t, name, seed):
    f, _ = FUNCTIONS[name]
    x, cores = leaves(t)
    weights = torch.randn(t.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = tn.apply(f, x, eps=1e-12, seed=seed)
    assert all(c.requires_grad for c in y.cores)
    grads = torch.autograd.grad((tn.full(y) * weights).sum(), cores)
    reference, ref_cores = leaves(t)
    expected = torch.autograd.grad((f(tn.full(reference)) * weights).sum(), ref_cores)
    for g, e in zip(grads, expected):
        # the interpolant reproduces f at every entry of these small trains (to ~1e-13), and so its
        # derivative; 1e-7 leaves room for the pivots' conditioning
        assert float((g - e).norm()) <= 1e-7 * max(float(e.norm()), 1.0)


def test_apply_gradient_is_exact_for_the_returned_train():
    t = tn.random_tt((4, 3, 5), 2, seed=3, std=0.5).to("torch")
    x, _ = leaves(t)
    flat = torch.cat([c.detach().reshape(-1) for c in x.cores]).requires_grad_(True)
    shapes = [c.shape for c in x.cores]

    def returned(parameters):
        cores, start = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            cores.append(parameters[start : start + size].reshape(shape))
            start += size
        return tn.full(tn.apply(torch.sin, tn.TT(cores), eps=1e-12, seed=1)).reshape(-1)

    # finite differences of the whole apply (the search included) against the returned train's gradient
    assert torch.autograd.gradcheck(returned, (flat,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_apply_of_the_identity_reproduces_the_train_and_its_gradient():
    x, cores = leaves(tn.random_tt((5, 4, 6, 3), 3, seed=2).to("torch"))
    y = tn.apply(lambda v: v, x, eps=1e-12, seed=0)
    assert float((tn.full(y) - tn.full(x)).detach().norm() / tn.full(x).detach().norm()) < 1e-12
    got = torch.autograd.grad(tn.full(y).square().sum(), cores)
    want = torch.autograd.grad(tn.full(x).square().sum(), cores)
    for g, w in zip(got, want):
        assert float((g - w).norm() / w.norm()) < 1e-10


def test_apply_of_several_trains_and_of_a_ttm():
    x, xc = leaves(tn.random_tt((4, 4, 4), 2, seed=4, std=0.5).to("torch"))
    u, uc = leaves(tn.random_tt((4, 4, 4), 2, seed=5, std=0.5).to("torch"))
    y = tn.apply(lambda a, b: a * torch.exp(b), x, u, eps=1e-12, seed=0)
    grads = torch.autograd.grad(tn.full(y).sum(), [*xc, *uc])
    rx, rxc = leaves(x)
    ru, ruc = leaves(u)
    expected = torch.autograd.grad((tn.full(rx) * torch.exp(tn.full(ru))).sum(), [*rxc, *ruc])
    for g, e in zip(grads, expected):
        assert float((g - e).norm()) <= 1e-8 * float(e.norm())
    a, ac = leaves(tn.random_ttm((2, 3), (3, 2), 2, seed=6, std=0.5).to("torch"))
    b = tn.apply(torch.exp, a, eps=1e-12, seed=0)
    assert isinstance(b, tn.TTM) and b.row_shape == (2, 3)
    got = torch.autograd.grad(tn.full(b).sum(), ac)
    ra, rac = leaves(a)
    want = torch.autograd.grad(torch.exp(tn.full(ra)).sum(), rac)
    for g, w in zip(got, want):
        assert float((g - w).norm()) <= 1e-8 * float(w.norm())


def test_cross_is_differentiable_in_the_parameters_f_closes_over():
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def f(index):
        return torch.sin(a * index.sum(dim=1).to(torch.float64) / 10)

    q, error = tn.cross(
        f, (8,) * 6, eps=1e-10, like=torch.zeros(1, dtype=torch.float64), seed=0, return_error=True
    )
    assert error <= 1e-10 and q.ranks == (1, 2, 2, 2, 2, 2, 1)
    index = torch.randint(0, 8, (50, 6), generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(tn.gather(q, index).sum(), a)
    s = index.sum(dim=1).to(torch.float64) / 10
    expected = (torch.cos(a.detach() * s) * s).sum()
    assert abs(float(grad) - float(expected)) <= 1e-9 * abs(float(expected))


def test_a_graph_with_a_numpy_result_is_refused():
    a = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    with pytest.raises(TypeError, match=r"cross: f returned values that require grad.*like="):
        tn.cross(lambda i: a * torch.as_tensor(i).sum(dim=1).to(torch.float64), (3, 3), eps=1e-8)


def test_no_graph_without_gradients():
    x, _ = leaves(tn.random_tt((4, 4), 2, seed=1).to("torch"))
    with torch.no_grad():
        y = tn.apply(torch.exp, x, seed=0)
    assert not any(c.requires_grad for c in y.cores)
    z = tn.apply(torch.exp, tn.random_tt((4, 4), 2, seed=1).to("torch"), seed=0)
    assert not any(c.requires_grad for c in z.cores)
    np.testing.assert_allclose(as_numpy(y.full()), as_numpy(z.full()), rtol=1e-12)


def test_float32_trains_get_float32_differentiable_results():
    x, cores = leaves(tn.random_tt((4, 5, 3), 2, seed=7, std=0.5).to("torch", dtype="float32"))
    y = tn.apply(torch.exp, x, eps=1e-6, seed=0)
    assert y.dtype == torch.float32 and all(c.requires_grad for c in y.cores)
    grads = torch.autograd.grad(tn.full(y).sum(), cores)
    ref, ref_cores = leaves(x)
    expected = torch.autograd.grad(torch.exp(tn.full(ref)).sum(), ref_cores)
    for g, e in zip(grads, expected):
        assert float((g - e).norm()) <= 1e-4 * float(e.norm())  # float32 values and gathers


def test_complex_apply_gradient_matches_the_dense_gradient():
    z, cores = leaves(tn.random_tt((4, 3, 5), 2, seed=8, std=0.5, dtype="complex128").to("torch"))
    y = tn.apply(torch.exp, z, eps=1e-12, seed=0)
    grads = torch.autograd.grad(tn.full(y).abs().square().sum(), cores)
    reference, ref_cores = leaves(z)
    expected = torch.autograd.grad(torch.exp(tn.full(reference)).abs().square().sum(), ref_cores)
    for g, e in zip(grads, expected):
        assert float((g - e).abs().norm()) <= 1e-8 * float(e.abs().norm())
