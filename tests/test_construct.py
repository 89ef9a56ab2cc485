"""Constructors, reshape, sums over modes, gather, scalar shifts and powers against dense references
(numpy and torch, float64 and float32), and the TT-form testing helpers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import as_numpy, assert_close, dense_tt, torch
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet import _backend as B
from tensornet.testing import strategies as tst


def second_difference(n: int, h: float = 1.0) -> np.ndarray:
    """tridiag(1, -2, 1) / h^2, built entry by entry."""
    out = np.zeros((n, n))
    for i in range(n):
        out[i, i] = -2.0 / h**2
        if i > 0:
            out[i, i - 1] = 1.0 / h**2
        if i < n - 1:
            out[i, i + 1] = 1.0 / h**2
    return out


placements = st.tuples(tst.backends(), tst.dtypes())


def like_of(backend: str, dtype: str):
    return tn.zeros((1,)).to(backend, dtype=dtype).cores[0]


# --- constructors -------------------------------------------------------------------------------------
@given(tst.mode_shapes(), placements, st.data())
def test_zeros_ones_delta(shape, placement, data):
    like = like_of(*placement)
    index = tuple(data.draw(st.integers(-n, n - 1)) for n in shape)
    expected = np.zeros(shape)
    expected[index] = 1.0
    for made, dense in (
        (tn.zeros(shape, like=like), np.zeros(shape)),
        (tn.ones(shape, like=like), np.ones(shape)),
        (tn.delta(shape, index, like=like), expected),
    ):
        assert (
            made.backend == placement[0]
            and made.dtype == like.dtype
            and made.ranks == (1,) * (len(shape) + 1)
        )
        np.testing.assert_array_equal(dense_tt(made), dense)


@given(tst.mode_shapes(max_size=4), placements, st.floats(0.1, 3.0))
def test_eye_and_laplacian(shape, placement, h):
    like = like_of(*placement)
    eye = tn.eye(shape, like=like)
    np.testing.assert_array_equal(as_numpy(eye.full()), np.eye(math.prod(shape)))
    laplacian = tn.laplacian(shape, step=h, like=like)
    assert laplacian.row_shape == laplacian.col_shape == tuple(shape)
    assert laplacian.ranks == (1, *([2] * (len(shape) - 1)), 1)
    expected = np.zeros((math.prod(shape),) * 2)
    for k in range(len(shape)):  # sum_k I (x) .. (x) D_k (x) .. (x) I
        term = np.ones((1, 1))
        for j, n in enumerate(shape):
            term = np.kron(term, second_difference(n, h) if j == k else np.eye(n))
        expected += term
    assert_close(laplacian.full(), expected, like.dtype)


def test_laplacian_per_mode_steps_and_float32_dtype():
    laplacian = tn.laplacian((3, 4), step=(0.5, 2.0), dtype="float32")
    assert laplacian.dtype == np.float32
    expected = np.kron(second_difference(3, 0.5), np.eye(4)) + np.kron(np.eye(3), second_difference(4, 2.0))
    np.testing.assert_allclose(laplacian.full(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: tn.zeros((2, 0)), ValueError, r"zeros: shape\[1\] = 0"),
        (lambda: tn.ones(()), TypeError, "ones: shape must be a non-empty sequence"),
        (lambda: tn.delta((2, 3), (1,)), ValueError, "index .* has 1 entries but shape"),
        (lambda: tn.delta((2, 3), (1, 3)), ValueError, r"index\[1\] = 3 is out of range for mode 1"),
        (lambda: tn.delta((2, 3), (1, 1.0)), TypeError, r"index\[1\] = 1.0 is not an int"),
        (lambda: tn.eye((2,), like="torch"), TypeError, "like must be an array"),
        (lambda: tn.eye((2,), dtype="int64"), TypeError, "trains are floating point or complex"),
        (lambda: tn.laplacian((3, 3), step=0.0), ValueError, r"step\[0\] = 0.0 must be finite and > 0"),
        (lambda: tn.laplacian((3, 3), step=(1.0,)), ValueError, "step has 1 entries but the grid has 2"),
    ],
)
def test_constructor_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# --- reshape -------------------------------------------------------------------------------------------
@st.composite
def regroupings(draw):
    """A random TT and a new shape regrouping its modes: both are groupings of one list of atoms."""
    atoms = draw(st.lists(st.integers(2, 4), min_size=1, max_size=5))

    def grouping():
        cuts = (
            sorted(draw(st.sets(st.integers(1, len(atoms) - 1), max_size=len(atoms) - 1)))
            if len(atoms) > 1
            else []
        )
        bounds = [0, *cuts, len(atoms)]
        shape = [math.prod(atoms[a:b]) for a, b in itertools.pairwise(bounds)]
        ones = draw(st.lists(st.integers(0, len(shape)), max_size=2))  # size-1 modes anywhere
        for at in sorted(ones, reverse=True):
            shape.insert(at, 1)
        return tuple(shape)

    old, new = grouping(), grouping()
    t = draw(tst.tts(shape=old, max_rank=3, dtype=tst.dtypes(complex=True)))
    return t, new


@given(regroupings())
def test_reshape_exact(case):
    t, shape = case
    result = tn.reshape(t, shape)
    assert result.shape == shape and result.backend == t.backend and result.dtype == t.dtype
    assert_close(result.full(), as_numpy(t.full()).reshape(shape), t.dtype)


@given(regroupings(), st.sampled_from([1e-1, 1e-3, 1e-6]))
def test_reshape_with_eps_meets_it(case, eps):
    t, shape = case
    t = t.to(dtype="complex128" if "complex" in str(t.dtype) else "float64")
    result = tn.reshape(t, shape, eps=eps)
    dense = as_numpy(t.full())
    assert np.linalg.norm(as_numpy(result.full()) - dense.reshape(shape)) <= eps * np.linalg.norm(dense) * (
        1 + 1e-9
    )


def test_reshape_tt_qtt_round_trip_keeps_ranks_small():
    # a smooth function of two variables on 1024 x 1024: its QTT has small ranks
    x = np.linspace(0, 1, 1024)  # exp(-x - 2y) + sin(3x + y) = exp(-x) exp(-2y) + sin 3x cos y + cos 3x sin y
    first = np.stack([np.exp(-x), np.sin(3 * x), np.cos(3 * x)], axis=1)[None]
    second = np.stack([np.exp(-2 * x), np.cos(x), np.sin(x)], axis=0)[..., None]
    t = tn.TT([first, second])
    qtt = tn.reshape(t, (2,) * 20, eps=1e-10)
    assert qtt.shape == (2,) * 20 and max(qtt.ranks) <= 8
    back = tn.reshape(qtt, (1024, 1024))
    tn.testing.assert_allclose(back, t, rtol=1e-9)


def test_reshape_errors():
    t = tn.random_tt((6, 4), 2, seed=0)
    with pytest.raises(ValueError, match=r"not a regrouping of \(6, 4\).*4 does not divide 6"):
        tn.reshape(t, (4, 6))
    with pytest.raises(ValueError, match="has 25 entries but the train's shape"):
        tn.reshape(t, (5, 5))
    with pytest.raises(TypeError, match="reshape: t must be a tensornet TT or TTM"):
        tn.reshape(t.full(), (4, 6))  # a TTM is reshaped too now (tests/test_linalg_ops.py)
    with pytest.raises(ValueError, match="eps must be finite"):
        tn.reshape(t, (2, 3, 4), eps=-1.0)


# --- sums over modes, gather -----------------------------------------------------------------------------
@given(st.data())
def test_sum_over_modes(data):
    t = data.draw(tst.tts())
    axes = data.draw(st.sets(st.integers(0, t.ndim - 1), min_size=1))
    negative = tuple(a - t.ndim if data.draw(st.booleans()) else a for a in sorted(axes))
    dense = as_numpy(t.full())
    result = tn.sum(t, axis=negative)
    expected = dense.sum(axis=tuple(sorted(axes)))
    scale = np.abs(dense).sum()
    assert_close(result if len(axes) == t.ndim else result.full(), expected, t.dtype, scale)
    if len(axes) < t.ndim:
        assert isinstance(result, tn.TT) and result.backend == t.backend and result.dtype == t.dtype
        assert_close(t.sum(axis=negative).full(), expected, t.dtype, scale)


def test_sum_and_gather_when_cores_are_scaled_apart():
    """Cores scaled by 2^1000 and 2^-1000 (the tensor itself near 1): a plain product of the cores
    overflows to inf (and inf * 0 = NaN); the renormalised kernels give the values of the unscaled train."""
    t = tn.random_tt((3, 4, 2, 5), 2, seed=3)
    cores = list(t.cores)
    cores[0], cores[2] = np.ldexp(cores[0], 1000), np.ldexp(cores[2], -1000)
    far = tn.TT(cores)
    index = np.array([[0, 1, 1, 4], [2, 3, 0, 0], [1, 0, 1, 2]])
    np.testing.assert_allclose(tn.gather(far, index), tn.gather(t, index), rtol=1e-13)
    for axis in (0, 1, (1, 3), (0, 2, 3)):
        np.testing.assert_allclose(
            tn.sum(far, axis=axis).full(), t.full().sum(axis=axis), rtol=1e-12, atol=1e-14
        )


@given(tst.scaled_tts())
def test_gather_and_marginals_of_scaled_trains(t):
    """Trains with a core scaled by 10^+-100 (10^+-30 in float32) against a float64 reference."""
    cores = [as_numpy(c) for c in t.cores]
    exponents = [math.frexp(float(np.max(np.abs(c))))[1] if np.any(c) else 0 for c in cores]
    unit = tn.TT([np.ldexp(c, -e) for c, e in zip(cores, exponents)]).full()  # the train / 2^E, near 1
    total = sum(exponents)
    index = np.stack([np.arange(5) % n for n in t.shape], axis=1)
    got = np.ldexp(as_numpy(tn.gather(t, index)), -total)
    assert_close(got, unit[tuple(index.T)], t.dtype, np.abs(unit).max())
    if t.ndim > 1:
        marginal = tn.TT([as_numpy(c) for c in tn.sum(t, axis=0).cores]).full()
        assert_close(np.ldexp(marginal, -total), unit.sum(axis=0), t.dtype, np.abs(unit).sum())


@given(st.data())
def test_gather_against_dense(data):
    t = data.draw(tst.tts(dtype=tst.dtypes(complex=True)))
    count = data.draw(st.integers(0, 20))
    columns = [data.draw(st.lists(st.integers(-n, n - 1), min_size=count, max_size=count)) for n in t.shape]
    index = np.array(columns, dtype=np.int64).T.reshape(count, t.ndim)
    dense = as_numpy(t.full())
    if data.draw(st.booleans()) and t.backend == "torch":
        index = torch.as_tensor(index)
    values = tn.gather(t, index)
    assert tuple(values.shape) == (count,) and values.dtype == t.dtype and B.backend_name(values) == t.backend
    assert_close(values, dense[tuple(as_numpy(index).astype(np.int64).T)], t.dtype, np.abs(dense).max())


def test_gather_errors_and_gradients():
    t = tn.random_tt((3, 4), 2, seed=0)
    with pytest.raises(ValueError, match=r"index has shape \(2,\) but must be \(k, 2\)"):
        tn.gather(t, np.array([1, 2]))
    with pytest.raises(IndexError, match="row 0 has 4 in mode 1, which has size 4"):
        tn.gather(t, [[0, 4]])
    with pytest.raises(TypeError, match="must hold integers"):
        tn.gather(t, np.zeros((1, 2)))
    with pytest.raises(TypeError, match="gather: x must be a tensornet TT"):
        tn.gather(tn.eye((2,)), [[0]])
    with pytest.raises(TypeError, match="axis applies to the modes of a TT"):
        tn.sum(tn.eye((2, 2)), axis=0)
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        tn.sum(t, axis=2)
    with pytest.raises(ValueError, match="repeats a mode"):
        tn.sum(t, axis=(0, -2))
    cores = [c.requires_grad_() for c in t.to("torch").cores]
    value = tn.gather(tn.TT(cores), [[1, 2]])
    value.sum().backward()
    assert torch.allclose(cores[0].grad[0, 1], cores[1].detach()[:, 2, 0])


# --- scalars and powers -----------------------------------------------------------------------------
@given(st.one_of(tst.tts(max_rank=2), tst.ttms(max_rank=2)), st.floats(-3, 3), st.sampled_from([0, 1, 2, 3]))
def test_scalar_shifts_and_powers(t, c, k):
    dense = as_numpy(t.full())
    scale = np.abs(dense).max() + abs(c)
    for result, expected in (
        (t + c, dense + c),
        (c + t, c + dense),
        (t - c, dense - c),
        (c - t, c - dense),
        (t + np.float64(c), dense + c),
    ):
        assert type(result) is type(t) and result.dtype == t.dtype
        assert_close(result.full(), expected, t.dtype, scale)
    grown = tuple(r + 1 if 0 < j < t.ncores else 1 for j, r in enumerate(t.ranks))
    assert (t + c).ranks == (t.ranks if c == 0 else grown)  # adding 0 returns t itself
    powered = t**k
    assert type(powered) is type(t) and powered.dtype == t.dtype
    assert_close(powered.full(), dense**k, t.dtype, max(np.abs(dense).max(), 1.0) ** k)


def test_power_errors_and_torch_scalar_gradient():
    t = tn.random_tt((3, 4), 2, seed=0)
    with pytest.raises(ValueError, match="exponent -1 < 0"):
        t ** (-1)
    with pytest.raises(TypeError, match=r"exponent must be an int >= 0, got 0\.5"):
        t**0.5
    with pytest.raises(TypeError):
        t + "1"
    trains = [tn.random_tt((3, 4), 2, seed=s) for s in range(3)]
    assert sum(trains).ranks == (1, 6, 1)  # Python's sum starts from 0, which adds nothing
    c = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    shifted = t.to("torch") + c
    tn.sum(shifted).backward()
    assert float(c.grad) == 12.0  # d/dc of sum(x + c) over 12 entries


# --- testing helpers ------------------------------------------------------------------------------------
@given(st.data())
def test_assert_allclose_in_tt_form(data):
    t = data.draw(tst.tts(max_rank=3))
    tn.testing.assert_allclose(tn.round(t + t, eps=1e-12), 2.0 * t, rtol=1e-5)
    tn.testing.assert_allclose(t.to("numpy", dtype="float64"), t, rtol=1e-12)
    if float(tn.norm(t)) > 0:
        with pytest.raises(AssertionError, match=r"not close in TT form.*relative"):
            tn.testing.assert_allclose(t * 1.001, t, rtol=1e-4)
        tn.testing.assert_allclose(t * 1.001, t, rtol=2e-3)


def test_assert_allclose_structure_and_nan():
    t = tn.random_tt((2, 3), 2, seed=0)
    with pytest.raises(AssertionError, match="differ in structure"):
        tn.testing.assert_allclose(t, tn.random_tt((3, 2), 2, seed=0))
    with pytest.raises(AssertionError, match="differ in structure"):
        tn.testing.assert_allclose(tn.eye((2, 3)), t)
    nan = tn.TT([t.cores[0] * np.nan, t.cores[1]])
    with pytest.raises(AssertionError, match="not close"):
        tn.testing.assert_allclose(nan, t)
    with pytest.raises(TypeError, match="rtol must be a real number >= 0"):
        tn.testing.assert_allclose(t, t, rtol=-1.0)
    tn.testing.assert_allclose(tn.zeros((2, 3)), tn.zeros((2, 3)), atol=0.0)


def is_orthogonalised(cores) -> bool:
    """Some centre c has every core before it left-orthogonal and every core after it right-orthogonal."""
    left, right = [], []
    for core in cores:
        r, n, r2 = core.shape
        a, b = core.reshape(r * n, r2), core.reshape(r, n * r2)
        left.append(np.allclose(a.T @ a, np.eye(r2), atol=1e-10))
        right.append(np.allclose(b @ b.T, np.eye(r), atol=1e-10))
    return any(all(left[:c]) and all(right[c + 1 :]) for c in range(len(cores)))


@given(tst.zero_tts(), tst.redundant_tts(dtype="float64"), tst.orthogonal_tts(dtype="float64"))
def test_edge_strategies(zero, redundant, orthogonal):
    assert float(tn.norm(zero)) == 0.0 and max(zero.ranks) >= 1
    rounded = tn.round(redundant, eps=1e-10)
    assert all(2 * r <= s for r, s in zip(rounded.ranks[1:-1], redundant.ranks[1:-1]))  # a + c a: half
    assert is_orthogonalised([as_numpy(c) for c in orthogonal.cores])
    assert not is_orthogonalised([as_numpy(c) for c in tn.random_tt((3, 3, 3), 2, seed=0).cores])


@given(tst.low_rank_arrays())
def test_low_rank_arrays_have_their_ranks(case):
    array, ranks = case
    eps = 1e-8 if "float64" in str(array.dtype) else 1e-4
    assert tn.tt_svd(array, eps=eps).ranks == ranks


@given(tst.scaled_tts())
def test_scaled_tts_are_far_from_one(t):
    limit = 30 if "float32" in str(t.dtype) else 100
    assert abs(math.log10(float(tn.norm(t)))) > limit / 2  # 10^+-limit times a train of norm ~1


# --- indices checked in their own integer type; rows of one length -----------------------------------
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_gather_checks_every_integer_type_before_casting(backend):
    t = tn.random_tt((3, 4, 5), 2, seed=0).to(backend)
    cases = [
        np.array([[2**64 - 1, 0, 0]], dtype=np.uint64),  # wrapped to -1 (the last entry) before the fix
        [[2**64 - 1, 0, 0]],
        [[np.uint64(2**64 - 1), 0, 0]],  # numpy promotes it with ints to float64
        [[2**70, 0, 0]],  # beyond int64: an object array of Python ints
        [[-(2**70), 0, 0]],
    ]
    for index in cases:
        with pytest.raises(IndexError, match=r"row 0 has -?1[0-9]+ in mode 0, which has size 3"):
            tn.gather(t, index)
    dense = as_numpy(t.full())
    for index in (np.array([[2, 3, 4]], dtype=np.uint8), [[np.uint64(2), 3, 4]], torch.tensor([[2, 3, 4]])):
        np.testing.assert_allclose(as_numpy(tn.gather(t, index)), [dense[2, 3, 4]], rtol=1e-6)


def test_gather_ragged_and_mixed_indices_are_named():
    t = tn.random_tt((3, 4), 2, seed=0)
    with pytest.raises(ValueError, match=r"gather: index is ragged: its rows have lengths \[1, 2\]"):
        tn.gather(t, [[0, 1], [0]])
    with pytest.raises(ValueError, match="gather: index mixes rows and single values"):
        tn.gather(t, [[0, 1], 0])
    with pytest.raises(TypeError, match=r"gather: index must hold integers, got float 1.5"):
        tn.gather(t, [[1.5, 0]])
    with pytest.raises(TypeError, match="gather: index is a numpy masked array"):
        tn.gather(t, np.ma.masked_array([[0, 1]]))


# --- constructors check memory before allocating -------------------------------------------------------
@pytest.mark.parametrize(
    "build",
    [
        lambda: tn.ones((10**11, 10)),
        lambda: tn.zeros((10**11,)),
        lambda: tn.delta((10**11, 2), (0, 0)),
        lambda: tn.eye((10**6,)),
        lambda: tn.laplacian((10**6, 3)),
    ],
)
def test_constructors_refuse_what_cannot_fit_in_memory(build):
    with pytest.raises(ValueError, match=r"more than the .* GiB of memory available"):
        build()


def test_laplacian_steps_at_the_edges_of_float64():
    # 1 / h / h: h**2 raised OverflowError for h > 1e154; entries that over- or underflow are refused
    with pytest.raises(ValueError, match=r"step\[0\] = 1e\+200 gives entries of size 1 / h\^2 = 0"):
        tn.laplacian(4, step=1e200)
    with pytest.raises(ValueError, match=r"step\[1\] = 1e-200 .* = inf"):
        tn.laplacian((3, 3), step=(1.0, 1e-200))
    big = tn.laplacian(3, step=1e150)
    np.testing.assert_allclose(
        big.full(), np.diag([-2.0] * 3) * 1e-300 + np.diag([1e-300] * 2, 1) + np.diag([1e-300] * 2, -1)
    )
    with pytest.raises(ValueError, match="beyond the range of float32"):
        tn.laplacian(3, step=1e-20, dtype="float32")  # 2e40: finite in float64, inf once cast


# --- complex: constructors, gather, sum, reshape; the quantum Fourier transform ------------------------
@given(tst.tts(dtype=tst.complex_dtypes(), max_ncores=4, max_size=4))
def test_gather_sum_reshape_of_complex_trains(t):
    dense = as_numpy(t.full())
    scale = np.abs(dense).max()
    rows = np.stack([np.arange(12) % n for n in t.shape], axis=1)
    assert_close(tn.gather(t, rows), dense[tuple(rows.T)], t.dtype, scale)
    assert_close(tn.sum(t), dense.sum(), t.dtype, np.abs(dense).sum())
    assert_close(
        tn.sum(t, axis=0).full() if t.ncores > 1 else tn.sum(t, axis=0),
        dense.sum(axis=0),
        t.dtype,
        np.abs(dense).sum(),
    )
    flat = tn.reshape(t, (int(np.prod(t.shape)),))
    assert_close(flat.full(), dense.reshape(-1), t.dtype, scale)
    back = tn.reshape(flat, t.shape, eps=1e-6)
    assert float(tn.norm(back - t)) <= 1e-6 * float(tn.norm(t)) + 1e-4 * scale * ("complex64" in str(t.dtype))


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_constructors_take_complex_dtypes(dtype):
    assert all(str(c.dtype).endswith(dtype) for c in tn.ones((2, 3), dtype=dtype).cores)
    assert tn.eye((2, 2), like=tn.zeros(1, dtype=dtype).to("torch")).cores[0].dtype == getattr(torch, dtype)
    assert np.iscomplexobj(as_numpy(tn.random_tt((3, 4), 2, seed=0, dtype=dtype).full()))


@pytest.mark.parametrize("d", [2, 4])
def test_complex_random_tt_entry_std_and_circularity(d):
    # over many small independent draws (entries of one draw are correlated), as test_random does for reals
    samples = np.concatenate(
        [
            as_numpy(tn.random_tt((2,) * d, 3, std=0.5, seed=s, dtype="complex128").full()).ravel()
            for s in range(2000)
        ]
    )
    assert abs(np.sqrt(np.mean(np.abs(samples) ** 2)) / 0.5 - 1) < 0.10  # E|x|^2 = std^2
    assert abs(np.mean(samples.real**2) / np.mean(samples.imag**2) - 1) < 0.15  # circular
    assert abs(np.mean(samples**2)) < 0.05  # pseudo-variance E[x^2] = 0


def bit_reversed(k: int, d: int) -> int:
    return int(format(k, f"0{d}b")[::-1], 2)


@pytest.mark.parametrize("d", range(1, 13))
@pytest.mark.parametrize("inverse", [False, True])
def test_qft_is_numpys_unitary_dft_with_the_output_bits_reversed(d, inverse):
    q = tn.qft(d, inverse=inverse)
    n = 2**d
    order = [bit_reversed(k, d) for k in range(n)]
    transform = np.fft.ifft if inverse else np.fft.fft
    if d <= 8:  # the whole matrix
        expected = transform(np.eye(n), axis=0, norm="ortho")[order]
        np.testing.assert_allclose(q.full(), expected, atol=1e-12)
    rng = np.random.default_rng(d)
    v = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    x = tn.reshape(tn.TT([v.reshape(1, n, 1)]), (2,) * d) if d > 1 else tn.TT([v.reshape(1, n, 1)])
    y = q @ x
    np.testing.assert_allclose(
        as_numpy(y.full()).reshape(-1), transform(v, norm="ortho")[order], atol=1e-11 * np.sqrt(n)
    )
    # the modes reversed give the spectrum in natural order
    np.testing.assert_allclose(
        as_numpy(y.T.full()).reshape(-1), transform(v, norm="ortho"), atol=1e-11 * np.sqrt(n)
    )


@pytest.mark.parametrize("d", [10, 25, 40])
def test_qft_is_unitary_in_tt_form_and_its_ranks_stay_small(d):
    q = tn.qft(d, eps=1e-12)
    identity = tn.eye((2,) * d, dtype="complex128")
    assert float(tn.norm(q.H @ q - identity)) <= 1e-11 * float(tn.norm(identity))
    assert q.largest_rank <= 16  # ranks bounded independently of d (13 at 1e-12 for d >= 8)
    assert q.ranks == tuple(reversed(q.ranks))


def test_qft_arguments():
    assert tn.qft(3, like=torch.zeros(1, dtype=torch.complex64)).cores[0].dtype == torch.complex64
    with pytest.raises(TypeError, match="qft: the Fourier transform is complex; dtype float64 is real"):
        tn.qft(3, dtype="float64")
    with pytest.raises(ValueError, match="qft: d must be >= 1"):
        tn.qft(0)
    with pytest.raises(TypeError, match="qft: d must be an int"):
        tn.qft(2.0)
    with pytest.raises(ValueError, match="qft: eps must be > 0"):
        tn.qft(3, eps=0.0)
