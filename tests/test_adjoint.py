"""Adjoint rules: the dot-product identity <J v, w> = <v, J^T w> on numpy and torch in float32/float64,
and finite differences in float64. J v is computed from the forward ops alone: every op here is
multilinear in its arguments, so J v is the sum over arguments of the op with that argument replaced by
its tangent (and, independently, a central difference)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import as_numpy
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet import _backend as B
from tensornet import adjoint
from tensornet.testing import strategies as tst

TOL = {"float32": 2e-4, "float64": 1e-10}


def _like(train, seed):
    """Random cores shaped like ``train``'s, same backend/dtype (a tangent or cotangent)."""
    rng = np.random.default_rng(seed)
    cores = [rng.standard_normal(tuple(c.shape)) for c in train.cores]
    return type(train)(cores).to(train.backend, dtype=train.dtype)


def _random_array(shape, like, seed):
    return tn._backend.asarray_like(np.random.default_rng(seed).standard_normal(shape), like)


def _inner(parts_a, parts_b):
    return sum(float(np.sum(as_numpy(a) * as_numpy(b))) for a, b in zip(parts_a, parts_b))


def _norm(parts):
    return float(np.sqrt(sum(np.sum(as_numpy(p) ** 2) for p in parts)))


def _check_identity(jv, w, v, jtw, dtype):
    lhs, rhs = _inner(jv, w), _inner(v, jtw)
    scale = _norm(jv) * _norm(w) + _norm(v) * _norm(jtw)
    assert abs(lhs - rhs) <= TOL[dtype] * max(scale, 1e-300), (lhs, rhs, scale)


def _replace(train, k, core):
    cores = list(train.cores)
    cores[k] = core
    return type(train)(cores)


def _jvp_multilinear(f, args, tangents, *, corewise=False):
    """J v of a function multilinear in each core of each train argument (lists of result parts); with
    ``corewise`` result core k is bilinear in the arguments' cores k (matvec, matmul, hadamard), so each
    argument is replaced as a whole."""
    total = None
    for i, (arg, tangent) in enumerate(zip(args, tangents)):
        if isinstance(arg, (tn.TT, tn.TTM)) and not corewise:
            for k in range(arg.ncores):
                replaced = list(args)
                replaced[i] = _replace(arg, k, tangent.cores[k])
                part = f(*replaced)
                total = part if total is None else [t + p for t, p in zip(total, part)]
        else:
            replaced = list(args)
            replaced[i] = tangent
            part = f(*replaced)
            total = part if total is None else [t + p for t, p in zip(total, part)]
    return total


def _params(args):
    out = []
    for a in args:
        out.extend(a.cores if isinstance(a, (tn.TT, tn.TTM)) else [a])
    return out


SMALL = dict(max_ncores=3, max_size=3, max_rank=3)


@given(tst.tts(**SMALL), st.integers(0, 2**16))
def test_full_identity(t, seed):
    v = _like(t, seed)
    w = _random_array(t.shape, t.cores[0], seed + 1)
    jv = _jvp_multilinear(lambda x: [tn.full(x)], [t], [v])
    _check_identity(jv, [w], v.cores, adjoint.full(t, w), tn._backend.dtype_name(t.dtype))


@given(tst.ttms(**SMALL), st.integers(0, 2**16))
def test_full_ttm_identity(a, seed):
    v = _like(a, seed)
    w = _random_array(a.shape, a.cores[0], seed + 1)
    jv = _jvp_multilinear(lambda x: [tn.full(x)], [a], [v])
    _check_identity(jv, [w], v.cores, adjoint.full(a, w), tn._backend.dtype_name(a.dtype))


@given(st.data(), st.integers(0, 2**16))
def test_dot_identity(data, seed):
    a = data.draw(tst.tts(**SMALL))
    b = data.draw(
        tst.tts(shape=a.shape, max_rank=3, backend=a.backend, dtype=tn._backend.dtype_name(a.dtype))
    )
    va, vb = _like(a, seed), _like(b, seed + 1)
    g = 0.7
    jv = _jvp_multilinear(lambda x, y: [tn.dot(x, y)], [a, b], [va, vb])
    ga, gb = adjoint.dot(a, b, g)
    _check_identity(jv, [g], [*va.cores, *vb.cores], [*ga, *gb], tn._backend.dtype_name(a.dtype))


@given(st.data(), st.integers(0, 2**16))
def test_hadamard_identity(data, seed):
    a = data.draw(tst.ttms(**SMALL))
    b = data.draw(
        tst.ttms(
            row_shape=a.row_shape,
            col_shape=a.col_shape,
            max_rank=2,
            backend=a.backend,
            dtype=tn._backend.dtype_name(a.dtype),
        )
    )
    va, vb = _like(a, seed), _like(b, seed + 1)
    out = tn.hadamard(a, b)
    w = _like(out, seed + 2)
    jv = _jvp_multilinear(lambda x, y: list(tn.hadamard(x, y).cores), [a, b], [va, vb], corewise=True)
    ga, gb = adjoint.hadamard(a, b, w)
    _check_identity(jv, w.cores, [*va.cores, *vb.cores], [*ga, *gb], tn._backend.dtype_name(a.dtype))


@given(st.data(), st.integers(0, 2**16))
def test_matvec_identity(data, seed):
    a = data.draw(tst.ttms(**SMALL))
    x = data.draw(
        tst.tts(shape=a.col_shape, max_rank=3, backend=a.backend, dtype=tn._backend.dtype_name(a.dtype))
    )
    va, vx = _like(a, seed), _like(x, seed + 1)
    w = _like(tn.matvec(a, x), seed + 2)
    jv = _jvp_multilinear(lambda p, q: list(tn.matvec(p, q).cores), [a, x], [va, vx], corewise=True)
    ga, gx = adjoint.matvec(a, x, w)
    _check_identity(jv, w.cores, [*va.cores, *vx.cores], [*ga, *gx], tn._backend.dtype_name(a.dtype))


@given(st.data(), st.integers(0, 2**16))
def test_matmul_identity(data, seed):
    a = data.draw(tst.ttms(**SMALL))
    b = data.draw(
        tst.ttms(
            row_shape=a.col_shape,
            max_size=3,
            max_rank=2,
            backend=a.backend,
            dtype=tn._backend.dtype_name(a.dtype),
        )
    )
    va, vb = _like(a, seed), _like(b, seed + 1)
    w = _like(tn.matmul(a, b), seed + 2)
    jv = _jvp_multilinear(lambda p, q: list(tn.matmul(p, q).cores), [a, b], [va, vb], corewise=True)
    ga, gb = adjoint.matmul(a, b, w)
    _check_identity(jv, w.cores, [*va.cores, *vb.cores], [*ga, *gb], tn._backend.dtype_name(a.dtype))


@given(tst.ttms(max_ncores=3, max_size=3, max_rank=3), st.integers(1, 9), st.integers(0, 2**16))
def test_linear_identity(w_train, tokens, seed):
    rows, cols = w_train.shape
    x = _random_array((tokens, cols), w_train.cores[0], seed)
    vx = _random_array((tokens, cols), w_train.cores[0], seed + 1)
    vw = _like(w_train, seed + 2)
    gy = _random_array((tokens, rows), w_train.cores[0], seed + 3)
    jv = _jvp_multilinear(lambda p, q: [tn.linear(p, q)], [x, w_train], [vx, vw])
    gx, gcores = adjoint.linear(x, w_train, gy)
    _check_identity(jv, [gy], [vx, *vw.cores], [gx, *gcores], tn._backend.dtype_name(w_train.dtype))


# --- finite differences (float64, numpy) ------------------------------------------------------------
def _shifted(args, tangents, h):
    out = []
    for a, t in zip(args, tangents):
        if isinstance(a, (tn.TT, tn.TTM)):
            out.append(type(a)([c + h * d for c, d in zip(a.cores, t.cores)]))
        else:
            out.append(a + h * t)
    return out


def _check_finite_difference(f, args, tangents, cotangent_parts, vjp_parts):
    h = 1e-5
    plus, minus = f(*_shifted(args, tangents, h)), f(*_shifted(args, tangents, -h))
    fd = [(p - m) / (2 * h) for p, m in zip(plus, minus)]
    lhs = _inner(fd, cotangent_parts)
    rhs = _inner(_params(tangents), vjp_parts)
    assert abs(lhs - rhs) <= 1e-6 * (_norm(fd) * _norm(cotangent_parts) + 1e-12), (lhs, rhs)


NUMPY64 = dict(backend="numpy", dtype="float64")


@given(tst.ttms(max_ncores=3, max_size=3, max_rank=3, **NUMPY64), st.integers(1, 6), st.integers(0, 2**16))
def test_linear_finite_differences(w_train, tokens, seed):
    rows, cols = w_train.shape
    rng = np.random.default_rng(seed)
    x, vx, gy = (
        rng.standard_normal((tokens, cols)),
        rng.standard_normal((tokens, cols)),
        rng.standard_normal((tokens, rows)),
    )
    vw = _like(w_train, seed + 1)
    gx, gcores = adjoint.linear(x, w_train, gy)
    _check_finite_difference(lambda p, q: [tn.linear(p, q)], [x, w_train], [vx, vw], [gy], [gx, *gcores])


@given(tst.tts(max_ncores=3, max_size=3, max_rank=3, **NUMPY64), st.integers(0, 2**16))
def test_full_and_dot_finite_differences(t, seed):
    v, u = _like(t, seed), _like(t, seed + 1)
    w = np.random.default_rng(seed).standard_normal(t.shape)
    _check_finite_difference(lambda x: [tn.full(x)], [t], [v], [w], adjoint.full(t, w))
    ga, gb = adjoint.dot(t, u, 1.0)
    _check_finite_difference(lambda x, y: [tn.dot(x, y)], [t, u], [v, _like(u, seed + 2)], [1.0], [*ga, *gb])


@given(tst.ttms(max_ncores=3, max_size=3, max_rank=2, **NUMPY64), st.integers(0, 2**16))
def test_matvec_matmul_hadamard_finite_differences(a, seed):
    x = tn.random_tt(a.col_shape, 2, seed=seed)
    b = tn.random_ttm(a.col_shape, a.row_shape, 2, seed=seed + 1)
    for op, rule, second in (
        (tn.matvec, adjoint.matvec, x),
        (tn.matmul, adjoint.matmul, b),
        (tn.hadamard, adjoint.hadamard, _like(a, seed + 5)),
    ):
        w = _like(op(a, second), seed + 2)
        grads = rule(a, second, w)
        _check_finite_difference(
            lambda p, q, op=op: list(op(p, q).cores),
            [a, second],
            [_like(a, seed + 3), _like(second, seed + 4)],
            w.cores,
            [*grads[0], *grads[1]],
        )


# --- against torch autograd and bad input -------------------------------------------------------------
def test_linear_adjoint_matches_torch_autograd_for_both_backward_strategies():
    import torch

    from tensornet import _linear

    w = tn.random_ttm((3, 2, 4), (2, 4, 3), 3, seed=3).to("torch", dtype="float64")
    cores = [c.clone().requires_grad_() for c in w.cores]
    x = torch.randn(2, 5, 24, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(2, 5, 24, dtype=torch.float64)
    (x @ tn.TTM(cores).full().T).backward(gy)
    gx, gcores = adjoint.linear(x.detach(), w, gy)
    np.testing.assert_allclose(as_numpy(gx), as_numpy(x.grad), rtol=1e-10, atol=1e-10)
    for strategy in ("dense", "sweep"):
        sx, scores = _linear.linear_backward(
            x.detach().reshape(10, 24), w.cores, gy.reshape(10, 24), strategy
        )
        np.testing.assert_allclose(as_numpy(sx).reshape(2, 5, 24), as_numpy(x.grad), rtol=1e-10, atol=1e-10)
        for g, c in zip(scores, cores):
            np.testing.assert_allclose(as_numpy(g), as_numpy(c.grad), rtol=1e-10, atol=1e-10)
    for g, c in zip(gcores, cores):
        np.testing.assert_allclose(as_numpy(g), as_numpy(c.grad), rtol=1e-10, atol=1e-10)


def test_adjoint_rejects_mismatched_cotangents():
    a = tn.random_ttm((2, 3), (3, 2), 2, seed=0)
    x = tn.random_tt((3, 2), 2, seed=1)
    with pytest.raises(ValueError, match="cotangent core 0 has shape"):
        adjoint.matvec(a, x, [np.ones((1, 2, 9)), np.ones((4, 3, 1))])
    with pytest.raises(ValueError, match="cotangent has 1 cores"):
        adjoint.matvec(a, x, [np.ones((1, 2, 4))])
    with pytest.raises(ValueError, match="grad has shape"):
        adjoint.full(a, np.ones((6, 5)))
    with pytest.raises(ValueError, match="x must end in N"):
        adjoint.linear(np.ones((2, 5)), a, np.ones((2, 6)))
    with pytest.raises(TypeError, match="must be a tensornet TTM"):
        adjoint.linear(np.ones((2, 6)), x, np.ones((2, 6)))


# --- complex trains: the numpy rules against torch's autograd (its convention for complex gradients) ----
def _torch_leaves(train):
    cores = [c.clone().requires_grad_(True) for c in train.to("torch").cores]
    return type(train)(cores), cores


def _complex_cotangent(shapes, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) + 1j * rng.standard_normal(s) for s in shapes]


def _real_loss(cotangents, outputs):
    """``Re <y_bar, y>``: the real loss whose gradient with respect to y is y_bar in torch's convention."""
    import torch

    return sum(torch.real((torch.as_tensor(g).conj() * y).sum()) for g, y in zip(cotangents, outputs))


def _assert_grads(numpy_grads, leaves):
    for g, leaf in zip(numpy_grads, leaves):
        expected = as_numpy(leaf.grad)
        got = as_numpy(g)
        assert got.shape == expected.shape and np.iscomplexobj(got) == np.iscomplexobj(expected)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-11 * max(1.0, np.abs(expected).max()))


complex_or_real = st.sampled_from(["complex128", "float64"])


@given(st.data())
def test_complex_rules_match_torch_autograd(data):
    kind_a, kind_b = data.draw(complex_or_real), data.draw(st.sampled_from(["complex128"]))
    a = data.draw(tst.tts(dtype=kind_a, backend="numpy", **SMALL))
    b = data.draw(tst.tts(shape=a.shape, dtype=kind_b, backend="numpy", **SMALL))
    seed = data.draw(st.integers(0, 1000))
    # full: a dense complex cotangent
    (g,) = _complex_cotangent([a.shape], seed)
    ta, leaves = _torch_leaves(b)
    _real_loss([g], [tn.full(ta)]).backward()
    _assert_grads(adjoint.full(b, g), leaves)
    # dot, conjugate-linear in its first argument, with a complex cotangent (a real argument: real grads)
    gbar = complex(*np.random.default_rng(seed).standard_normal(2))
    (ta, la), (tb, lb) = _torch_leaves(a), _torch_leaves(b)
    _real_loss([np.array(gbar)], [tn.dot(ta, tb)]).backward()
    grads_a, grads_b = adjoint.dot(a, b, gbar)
    _assert_grads(grads_a + grads_b, la + lb)
    # hadamard: cotangent cores shaped like the result's
    result = a * b
    gy = _complex_cotangent([c.shape for c in result.cores], seed + 1)
    (ta, la), (tb, lb) = _torch_leaves(a), _torch_leaves(b)
    _real_loss(gy, (ta * tb).cores).backward()
    grads_a, grads_b = adjoint.hadamard(a, b, gy)
    _assert_grads(grads_a + grads_b, la + lb)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_gradients_have_their_cores_dtype_when_precisions_mix(backend):
    # a complex64 train with a float64 one computes in complex128; each gradient comes back in its core's dtype
    # (the complex64 train's gradients were complex128)
    a = tn.random_tt((3, 4, 2), 2, seed=0, dtype="complex64").to(backend)
    b = tn.random_tt((3, 4, 2), 2, seed=1).to(backend)
    m = tn.random_ttm((3, 4, 2), (3, 4, 2), 2, seed=2).to(backend)
    grads_a, grads_b = adjoint.dot(a, b, 1.0 + 0.5j)
    assert {B.dtype_name(g.dtype) for g in grads_a} == {"complex64"}
    assert {B.dtype_name(g.dtype) for g in grads_b} == {"float64"}
    result = m @ a
    cotangent = [np.ones(tuple(c.shape), dtype=complex) for c in result.cores]
    grads_m, grads_x = adjoint.matvec(m, a, [B.to_backend(g, backend) for g in cotangent])
    assert {B.dtype_name(g.dtype) for g in grads_m} == {"float64"}
    assert {B.dtype_name(g.dtype) for g in grads_x} == {"complex64"}


@given(st.data())
def test_complex_product_rules_match_torch_autograd(data):
    kind = data.draw(complex_or_real)
    a = data.draw(tst.ttms(dtype="complex128", backend="numpy", max_ncores=3, max_size=3, max_rank=2))
    x = data.draw(tst.tts(shape=a.col_shape, dtype=kind, backend="numpy", **SMALL))
    b = data.draw(tst.ttms(row_shape=a.col_shape, dtype=kind, backend="numpy", max_size=3, max_rank=2))
    seed = data.draw(st.integers(0, 1000))
    for rule, other in ((adjoint.matvec, x), (adjoint.matmul, b)):
        result = a @ other
        gy = _complex_cotangent([c.shape for c in result.cores], seed)
        (ta, la), (to, lo) = _torch_leaves(a), _torch_leaves(other)
        _real_loss(gy, (ta @ to).cores).backward()
        grads_a, grads_o = rule(a, other, gy)
        _assert_grads(grads_a + grads_o, la + lo)
