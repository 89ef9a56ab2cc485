"""tensornet.testing: the strategies shrink to small trains and print them compactly; check_vjp/check_jvp pass
the package's own derivative rules (numpy rules, torch's reverse and forward modes) and catch planted wrong
ones, naming the core and the entry."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import as_numpy
from hypothesis import find, given, settings
from hypothesis import strategies as st
from hypothesis.vendor.pretty import pretty

import tensornet as tn
from tensornet import adjoint
from tensornet.linalg import eigsh, solve
from tensornet.testing import check_jvp, check_vjp, regauge
from tensornet.testing import strategies as tst

SMALL = dict(max_ncores=3, max_size=3, max_rank=3)
ANY_DTYPE = tst.dtypes(complex=True)
FIND = settings(database=None, max_examples=500)


def dtype_of(t) -> str:
    return tn._backend.dtype_name(t.dtype)


def same(t, data, **kwargs):
    return data.draw(tst.tts(shape=t.shape, backend=t.backend, dtype=dtype_of(t), **kwargs))


def replaced(train, k, core):
    cores = list(train.cores)
    cores[k] = core
    return type(train)(cores)


# --- shrinking and printing ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_a_train_with_a_rank_two_bond_shrinks_to_two_cores_with_that_bond_at_two(seed):
    t = find(
        tst.tts(max_ncores=6, max_rank=4),
        lambda t: max(t.ranks) >= 2,
        settings=FIND,
        random=random.Random(seed),
    )
    assert (t.shape, t.ranks, t.backend, dtype_of(t)) == ((2, 2), (1, 2, 1), "numpy", "float64")


def test_ttms_shrink_to_two_cores_of_two_entries():
    a = find(
        tst.ttms(max_ncores=4, max_rank=4),
        lambda a: max(a.ranks) >= 2,
        settings=FIND,
        random=random.Random(0),
    )
    assert a.ranks == (1, 2, 1) and [m * n for m, n in zip(a.row_shape, a.col_shape)] == [2, 2]


def test_shrinking_ends_at_one_small_core_at_scale_one():
    plain = find(tst.tts(), lambda t: True, settings=FIND)
    scaled = find(tst.tts(scale=tst.scales()), lambda t: True, settings=FIND)
    assert plain.shape == (1,) and plain.backend == "numpy" and dtype_of(plain) == "float64"
    assert np.array_equal(as_numpy(scaled.cores[0]), as_numpy(plain.cores[0]))  # scale 2^0


def test_gauge_equivalent_shrinks_to_the_simplest_transform():
    t = tn.random_tt((3, 2, 4), 3, seed=0)
    g = find(tst.gauge_equivalent(t), lambda g: True, settings=FIND)
    simplest = regauge(t, seed=0, kind="monomial", condition=1.0)  # a signed permutation, no scaling
    assert all(np.array_equal(as_numpy(a), as_numpy(b)) for a, b in zip(g.cores, simplest.cores))


@given(tst.tts(scale=tst.scales(max_exponent=60), dtype=ANY_DTYPE))
def test_scaled_trains_are_powers_of_two_times_the_unscaled_ones(t):
    exponents = [np.frexp(np.max(np.abs(as_numpy(c))))[1] for c in t.cores]
    assert max(exponents) - min(exponents) <= 60  # the factor is spread over the cores, not on one
    assert np.isfinite(float(tn.norm(t)))


def test_hypothesis_prints_small_trains_with_their_cores_and_large_ones_without():
    small = tn.TT([np.array([[[1.0, 0.5], [0.0, -3.0]]]), np.array([[[2.0], [-1.0]], [[0.25], [4.0]]])])
    assert pretty(small) == (
        "TT(shape=(2, 2), ranks=(1, 2, 1), numpy float64, 8 params, "
        "cores=[[[[ 1. , 0.5], [ 0. , -3. ]]], [[[ 2. ], [-1. ]], [[ 0.25], [ 4. ]]]])"
    )
    large = tn.random_ttm((4, 4), (4, 4), 3, seed=0).to("torch", dtype="float32")
    assert pretty(large) == repr(large) and "torch float32" in repr(large)
    assert repr(small) == "TT(shape=(2, 2), ranks=(1, 2, 1), numpy float64, 8 params)"  # repr unchanged


def test_a_failing_example_is_printed_compactly():
    @settings(database=None, max_examples=300, derandomize=True)
    @given(tst.tts(max_ncores=5))
    def property_that_fails(t):
        assert max(t.ranks) < 2

    with pytest.raises(AssertionError) as info:
        property_that_fails()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "t=TT(shape=(2, 2), ranks=(1, 2, 1), numpy float64, 8 params, cores=[[[[" in notes


# --- the package's rules pass -------------------------------------------------------------------------------
@given(st.data())
def test_check_vjp_passes_the_numpy_rules_of_dot_full_and_hadamard(data):
    a = data.draw(tst.tts(dtype=ANY_DTYPE, **SMALL))
    b = same(a, data, max_rank=2)
    check_vjp(tn.dot, a, b, vjp=adjoint.dot)
    check_vjp(tn.full, a, vjp=adjoint.full)
    check_vjp(tn.hadamard, a, b, vjp=adjoint.hadamard)


@given(st.data())
def test_check_vjp_passes_the_numpy_rules_of_matvec_matmul_and_linear(data):
    a = data.draw(tst.ttms(dtype=ANY_DTYPE, max_ncores=3, max_size=3, max_rank=2))
    x = data.draw(tst.tts(shape=a.col_shape, backend=a.backend, dtype=dtype_of(a), max_rank=2))
    b = data.draw(
        tst.ttms(row_shape=a.col_shape, backend=a.backend, dtype=dtype_of(a), max_size=3, max_rank=2)
    )
    check_vjp(tn.matvec, a, x, vjp=adjoint.matvec)
    check_vjp(tn.matmul, a, b, vjp=adjoint.matmul)
    if "complex" not in dtype_of(a):  # linear is real only
        tokens = data.draw(st.integers(1, 4))
        inputs = tn._backend.asarray_like(
            np.random.default_rng(tokens).standard_normal((tokens, a.shape[1])), a.cores[0]
        )
        check_vjp(tn.linear, inputs, a, vjp=adjoint.linear)


def test_check_vjp_passes_the_rules_of_solve_and_eigsh():
    shape = (2, 3, 2)
    m = tn.random_ttm(shape, shape, 2, seed=3)
    spd = tn.round(tn.add(tn.matmul(m.T, m), tn.eye(shape)), eps=1e-14)
    a = tn.round(tn.add(spd, tn.scale(tn.random_ttm(shape, shape, 1, seed=4), 0.3)), eps=1e-14)
    b = tn.random_tt(shape, 2, seed=5)

    def solution(a, b):
        return solve(a, b, tol=1e-13)

    def solve_vjp(a, b, w):  # solve's rule takes the cotangent as a tensor
        return adjoint.solve(a, b, solution(a, b), w, tol=1e-13)

    # iterative solvers are accurate to their tolerance, which finite differences divide by the step
    check_vjp(solution, a, b, vjp=solve_vjp, cotangent="tensor", rtol=1e-6)

    def symmetric(a):  # symmetric cores give a symmetric operator, whatever the perturbation
        return tn.TTM([(c + np.swapaxes(c, 1, 2)) / 2 for c in a.cores])

    def values(a):
        return eigsh(symmetric(a), k=2, tol=1e-13)[0]

    def values_vjp(a, g):
        s = symmetric(a)
        grads = adjoint.eigsh(s, eigsh(s, k=2, tol=1e-13)[1], g)
        return [(c + np.swapaxes(c, 1, 2)) / 2 for c in grads]

    check_vjp(values, spd, vjp=values_vjp, rtol=1e-6)


@given(st.data())
def test_the_cotangent_cores_given_to_a_rule_are_those_of_the_probe(data):
    """check_vjp's "cores" cotangent of a train output is the gradient of Re <w, y> (adjoint.dot's rule)."""
    from tensornet.testing._probe import Probe

    y = data.draw(tst.tts(backend="numpy", dtype=st.sampled_from(["float64", "complex128"]), **SMALL))
    probe = Probe("test", y, np.random.default_rng(data.draw(st.integers(0, 100))))
    expected = adjoint.dot(probe.w, y, 1.0)[1]
    for got, want in zip(probe.cotangent_cores(y), expected):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


# --- torch: reverse and forward mode ---------------------------------------------------------------------
TORCH = dict(backend="torch", dtype=st.sampled_from(["float64", "complex128"]))


@settings(max_examples=20)  # five or six checks per example: ci's 50 took 45 s on the shared 2-core machine
@given(st.data())
def test_check_vjp_passes_torch_autograd_through_the_algebra(data):
    t = data.draw(tst.tts(**TORCH, **SMALL))
    u = same(t, data, max_rank=2)
    index = np.stack([np.arange(3) % n for n in t.shape], axis=1)
    check_vjp(tn.norm, t)
    check_vjp(tn.dot, t, u)
    check_vjp(lambda x: tn.round(x, max_rank=1), t)
    check_vjp(lambda x: tn.orthogonalize(x, center=-1), t)
    check_vjp(tn.gather, t, index)
    check_vjp(lambda x, y: tn.sum(x * y, axis=0) if x.ndim > 1 else tn.sum(x * y), t, u)


@given(tst.ttms(backend="torch", dtype="float64", max_ncores=3, max_size=3, max_rank=2), st.integers(1, 4))
def test_check_vjp_passes_the_custom_autograd_function_of_linear(w, tokens):
    x = torch.randn(tokens, w.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(tokens))
    report = check_vjp(tn.linear, x, w)
    assert report.ok and report.comparisons[0].what == "all arguments at once"


@settings(max_examples=20)  # five or six checks per example: ci's 50 took 45 s on the shared 2-core machine
@given(st.data())
def test_check_jvp_passes_torch_forward_mode_through_the_algebra(data):
    t = data.draw(tst.tts(**TORCH, **SMALL))
    u = same(t, data, max_rank=2)
    a = data.draw(tst.ttms(col_shape=t.shape, backend="torch", dtype=dtype_of(t), max_size=3, max_rank=2))
    check_jvp(tn.norm, t)
    check_jvp(tn.dot, t, u)
    check_jvp(tn.hadamard, t, u)
    check_jvp(tn.matvec, a, t)
    check_jvp(lambda x: tn.orthogonalize(x, center=0), t)


def dot_jvp(primals, tangents):
    """The JVP of <a, b>, multilinear in every core (conjugate-linear in a's: dot conjugates a itself)."""
    (a, b), (ta, tb) = primals, tangents
    return sum(
        tn.dot(replaced(a, k, ta.cores[k]), b) + tn.dot(a, replaced(b, k, tb.cores[k]))
        for k in range(a.ncores)
    )


def hadamard_jvp(primals, tangents):
    """One tangent per output core: core k of a * b is bilinear in the cores k."""
    (a, b), (ta, tb) = primals, tangents
    return [
        tn.hadamard(replaced(a, k, ta.cores[k]), b).cores[k]
        + tn.hadamard(a, replaced(b, k, tb.cores[k])).cores[k]
        for k in range(a.ncores)
    ]


@given(st.data())
def test_check_jvp_passes_hand_written_numpy_rules(data):
    a = data.draw(tst.tts(backend="numpy", dtype=ANY_DTYPE, **SMALL))
    b = same(a, data, max_rank=2)
    check_jvp(tn.dot, a, b, jvp=dot_jvp)
    check_jvp(tn.hadamard, a, b, jvp=hadamard_jvp)


# --- planted wrong rules are caught ------------------------------------------------------------------------
A = tn.random_tt((3, 4, 2), 2, seed=0)
B = tn.random_tt((3, 4, 2), 3, seed=1)


def test_a_wrong_entry_of_a_vjp_is_named():
    def planted(a, b, g):
        ga, gb = adjoint.dot(a, b, g)
        gb = [np.array(c) for c in gb]
        gb[1][0, 2, 1] *= 2.0
        return ga, gb

    with pytest.raises(AssertionError) as info:
        check_vjp(tn.dot, A, B, vjp=planted)
    message = str(info.value)
    assert "core 1 of argument 1 ('b')" in message and "<- disagrees" in message
    assert "entry (0, 2, 1) of core 1 of argument 1 ('b') disagrees most" in message
    # the other cores are fine, and say so
    assert all(" <- " not in line for line in message.splitlines() if "core 0 of argument 0" in line)


def test_a_missing_conjugation_is_caught_on_complex_trains():
    a, b = A.to(dtype="complex128") * (1 + 2j), B.to(dtype="complex128") * (2 - 1j)

    def planted(a, b, g):  # as if dot were bilinear, not conjugate-linear in a
        ga, gb = adjoint.dot(a, b, g)
        return [np.conj(c) for c in ga], gb

    check_vjp(tn.dot, a, b, vjp=adjoint.dot)
    with pytest.raises(AssertionError, match=r"core \d of argument 0 \('a'\).*<- disagrees"):
        check_vjp(tn.dot, a, b, vjp=planted)


def test_swapped_gradients_are_caught():
    with pytest.raises(AssertionError, match="disagrees"):
        check_vjp(tn.hadamard, A, A * 2.0, vjp=lambda a, b, g: adjoint.hadamard(a, b, g)[::-1])


class _WrongSquare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x  # planted: the derivative of x^2 is 2x


def test_a_wrong_torch_backward_is_caught():
    t = A.to("torch")

    def f(t):
        return tn.norm(tn.TT([t.cores[0], _WrongSquare.apply(t.cores[1]), t.cores[2]]))

    with pytest.raises(
        AssertionError, match=r"core 1 of argument 0 \('t'\)\s+\S+\s+\S+\s+\S+\s+\S+\s+<- disagrees"
    ):
        check_vjp(f, t)


def test_a_wrong_jvp_is_named():
    def planted(primals, tangents):
        (a, b), (ta, tb) = primals, tangents
        return sum(tn.dot(replaced(a, k, ta.cores[k]), b) for k in range(a.ncores)) + sum(
            tn.dot(a, replaced(b, k, tb.cores[k]))
            for k in (0, 1)  # forgets core 2 of b
        )

    with pytest.raises(AssertionError) as info:
        check_jvp(tn.dot, A, B, jvp=planted)
    assert "core 2 of argument 1 ('b')" in str(info.value).split("disagrees most")[0].splitlines()[-1]


# --- reports and bad input ------------------------------------------------------------------------------
def test_the_report_of_a_passing_check():
    report = check_vjp(tn.dot, A, B, vjp=adjoint.dot)
    assert report.ok and report.mode == "VJP" and report.function == "dot"
    assert [c.what for c in report.comparisons] == ["all arguments at once"]
    assert "agrees with central finite differences" in str(report)
    assert all(c.error <= c.tolerance < 1e-8 for c in report.comparisons)


def test_check_bad_input():
    with pytest.raises(TypeError, match="check_vjp: numpy arguments need the VJP rule under test"):
        check_vjp(tn.dot, A, B)
    with pytest.raises(TypeError, match="check_jvp: numpy arguments need the JVP rule under test"):
        check_jvp(tn.dot, A, B)
    with pytest.raises(TypeError, match="check_vjp: f must be callable"):
        check_vjp(3, A)
    with pytest.raises(ValueError, match="wrt holds 5, not the position of one of the 2 arguments"):
        check_vjp(tn.dot, A, B, wrt=5, vjp=adjoint.dot)
    with pytest.raises(TypeError, match="argument 1 is a ndarray; only trains and floating-point arrays"):
        check_vjp(tn.gather, A, np.array([[0, 0, 0]]), wrt=1, vjp=adjoint.dot)
    with pytest.raises(TypeError, match="f returned a str"):
        check_vjp(lambda t: "x", A, vjp=adjoint.full)
    with pytest.raises(
        ValueError, match="vjp returned tuple of length 1; it must return one cotangent per argument"
    ):
        check_vjp(tn.dot, A, B, vjp=lambda a, b, g: (adjoint.dot(a, b, g)[0],))
    with pytest.raises(ValueError, match=r"cotangent of core 0 of argument 0 \('x'\) has shape \(1, 4, 2\)"):
        check_vjp(tn.full, A, vjp=lambda x, g: [np.ones((1, 4, 2)), *adjoint.full(x, g)[1:]])
    with pytest.raises(ValueError, match="rtol must be a number in"):
        check_vjp(tn.dot, A, B, vjp=adjoint.dot, rtol=0.0)
    with pytest.raises(ValueError, match="cotangent must be 'cores' or 'tensor'"):
        check_vjp(tn.hadamard, A, B, vjp=adjoint.hadamard, cotangent="dense")
    with pytest.raises(TypeError, match="mix backends"):
        check_vjp(tn.dot, A, B.to("torch"))
    with pytest.raises(ValueError, match="jvp returned 1 core tangents for an output with 3 cores"):
        check_jvp(tn.hadamard, A, B, jvp=lambda p, t: [p[0].cores[0]])
