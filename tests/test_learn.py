"""Learning trains from data and reading them back: completion recovers low-rank trains from oversampled
entries and stops at the noise level; argmax/argmin against the dense tensor (and known optima of trains far
too large to form); samples against exact marginals by chi-square with fixed seeds; numpy and torch; errors."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from conftest import as_numpy, torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tensornet as tn
from tensornet import ConvergenceWarning, RankCapWarning
from tensornet.testing import strategies as tst


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def entries(shape, count, seed):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, count) for n in shape], axis=1)


def degrees_of_freedom(shape, ranks):
    return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(shape)) - sum(r * r for r in ranks[1:-1])


# --- completion ---------------------------------------------------------------------------------------
@settings(max_examples=8)
@given(
    st.lists(st.integers(4, 8), min_size=2, max_size=3),
    st.integers(1, 3),
    st.sampled_from(["numpy", "torch"]),
    st.integers(0, 2**16),
)
def test_complete_recovers_low_rank_trains(shape, rank, backend, seed):
    shape = tuple(shape)
    clipped = [min(rank, math.prod(shape[: k + 1]), math.prod(shape[k + 1 :])) for k in range(len(shape) - 1)]
    truth = tn.random_tt(shape, clipped, seed=seed)
    dof = degrees_of_freedom(shape, truth.ranks)
    size = math.prod(shape)
    assume(size >= 3 * dof)  # tensors with room for missing entries
    # oversampled: 10x the degrees of freedom in distinct entries, or half the tensor if that is more (10%
    # of them are held back, so the fit is a completion). Sparser samples of trains with more modes are
    # where ALS from scratch meets local minima (the 20^4 and smooth-function tests below, and the notes)
    chosen = np.random.default_rng(seed + 1).choice(size, min(max(10 * dof, size // 2), size), replace=False)
    index = np.stack(np.unravel_index(chosen, shape), axis=1)
    values = tn.gather(truth, index)
    if backend == "torch":
        values = torch.tensor(values)
    result = tn.complete(index, values, shape, seed=seed)
    assert result.backend == backend
    full = as_numpy(tn.full(result))
    # 1e-8: ALS converges linearly at exact data; the search stops at 1.5e-9 held-back error
    assert relative(full, as_numpy(tn.full(truth))) <= 1e-8


def test_complete_finds_the_ranks_of_a_random_train():
    truth = tn.random_tt((20, 20, 20, 20), (4, 5, 3), seed=1)
    index = entries(truth.shape, 10_000, 2)
    result, info = tn.complete(index, tn.gather(truth, index), truth.shape, seed=0, return_info=True)
    test = entries(truth.shape, 4000, 3)
    assert relative(tn.gather(result, test), tn.gather(truth, test)) <= 1e-8
    assert result.ranks == (1, 4, 5, 3, 1) == info.ranks
    assert info.stop == "exact" and info.validation_error <= 1.5e-9
    # the history: ranks grew one by one from 1 and every sweep is recorded
    assert info.steps[0].ranks == (1, 1, 1, 1, 1) and info.steps[-1].phase == "refit"
    assert [s.sweep for s in info.steps] == list(range(1, len(info.steps) + 1))


@pytest.mark.slow
def test_complete_of_a_smooth_function_is_accurate_off_the_samples():
    shape = (10,) * 6
    f = lambda i: 1.0 / (1.0 + (i / 9.0).sum(axis=1))  # noqa: E731
    index = entries(shape, 5000, 0)
    result, info = tn.complete(index, f(index), shape, seed=0, return_info=True)
    test = entries(shape, 4000, 1)
    error = relative(as_numpy(tn.gather(result, test)), f(test))
    # the target; measured 3e-6 (benchmark case c); 2e-4 before the Gauss-Newton steps
    assert error <= 1e-4
    assert info.validation_error <= 1e-5
    assert max(result.ranks) <= 7


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_complete_of_a_smooth_function_does_not_stop_in_a_swamp(backend):
    """Stages that end while ALS crawls get Gauss-Newton steps; without them the search takes a worse path.

    ``1/(1 + x_1 + .. + x_4)`` on 10^4 from 1,500 samples: measured 1.6e-6 test error with the steps, 9e-5
    without (the errors then sit in the corner of small indices: largest values, fewest samples).
    """
    shape = (10,) * 4
    f = lambda i: 1.0 / (1.0 + (i / 9.0).sum(axis=1))  # noqa: E731
    index = entries(shape, 1500, 0)
    values = f(index) if backend == "numpy" else torch.tensor(f(index))
    result, info = tn.complete(index, values, shape, seed=0, return_info=True)
    assert result.backend == backend
    test = entries(shape, 4000, 1)
    assert relative(as_numpy(tn.gather(result, test)), f(test)) <= 1e-5
    assert info.validation_error <= 1e-5


def test_complete_stops_at_the_noise_level():
    truth = tn.random_tt((8, 8, 8, 8), 2, seed=3)
    index = entries(truth.shape, 6000, 4)
    clean = tn.gather(truth, index)
    noise = 1e-3 * np.linalg.norm(clean) / math.sqrt(len(clean))
    noisy = clean + noise * np.random.default_rng(5).standard_normal(len(clean))
    result, info = tn.complete(index, noisy, truth.shape, seed=0, return_info=True)
    level = noise * math.sqrt(len(clean)) / np.linalg.norm(clean)  # the noise's relative size: 1e-3
    assert 0.7 * level <= info.validation_error <= 1.5 * level
    test = entries(truth.shape, 4000, 6)
    # it does not overfit: off the samples it is closer to the clean train than the noise is
    assert relative(tn.gather(result, test), tn.gather(truth, test)) <= level
    assert max(result.ranks) <= 4


def test_complete_is_deterministic_for_a_seed_and_uses_weights():
    truth = tn.random_tt((6, 7, 8), 2, seed=0)
    index = entries(truth.shape, 1500, 1)
    values = tn.gather(truth, index)
    a = tn.complete(index, values, truth.shape, seed=7)
    b = tn.complete(index, values, truth.shape, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a.cores, b.cores))
    _, info_a = tn.complete(index, values, truth.shape, seed=7, return_info=True)
    _, info_c = tn.complete(index, values, truth.shape, seed=8, return_info=True)
    assert info_a.steps[0].validation_error != info_c.steps[0].validation_error  # another held-back split
    # corrupted samples with weight 0 do not count
    corrupted = values.copy()
    corrupted[:100] += 5.0
    weights = np.ones(len(values))
    weights[:100] = 0.0
    result = tn.complete(index, corrupted, truth.shape, seed=0, weights=weights)
    assert relative(as_numpy(tn.full(result)), as_numpy(tn.full(truth))) <= 1e-8


def test_complete_options_cap_and_steer_the_ranks():
    truth = tn.random_tt((6, 6, 6, 6), 3, seed=0)
    index = entries(truth.shape, 3000, 1)
    values = tn.gather(truth, index)
    with pytest.warns(ConvergenceWarning, match=r"explains little|eps"):
        capped = tn.complete(index, values, truth.shape, seed=0, max_rank=1, eps=1e-6)
    assert capped.largest_rank == 1
    _, info = tn.complete(index, values, truth.shape, seed=0, eps=1e-3, return_info=True)
    assert info.stop == "eps" and info.validation_error <= 1e-3
    fixed, info = tn.complete(index, values, truth.shape, validation=0, max_rank=3, return_info=True)
    assert info.validation_error is None and fixed.largest_rank <= 3
    assert relative(as_numpy(tn.full(fixed)), as_numpy(tn.full(truth))) <= 1e-8
    warm, info = tn.complete(index, values, truth.shape, seed=0, x0=truth, return_info=True)
    assert len(info.steps) < 10 and relative(as_numpy(tn.full(warm)), as_numpy(tn.full(truth))) <= 1e-8
    with pytest.warns(RankCapWarning, match="eps=1e-10 was not met"):
        tn.complete(index, values, truth.shape, seed=0, max_rank=2, eps=1e-10)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_complete_returns_the_zero_train_when_nothing_predicts_better(backend):
    # pure noise: where every train the sweeps find predicts the held-back samples worse than 0 does, the zero
    # train is the answer; where one happens to do better (by chance), that one is kept
    index = entries((5, 5, 5), 400, 0)
    zeros = 0
    for seed in range(4):
        noise = np.random.default_rng(seed).standard_normal(400)
        args = (torch.tensor(index), torch.tensor(noise)) if backend == "torch" else (index, noise)
        with pytest.warns(ConvergenceWarning) as record:
            t, info = tn.complete(*args, (5, 5, 5), seed=0, return_info=True)
        assert type(t.cores[0]) is type(args[1])
        best_found = min(s.validation_error for s in info.steps if s.phase == "search")
        if best_found >= 1.0:
            zeros += 1
            assert "better than zero, so the zero train is returned" in str(record[0].message)
            assert float(tn.norm(t)) == 0.0 and t.ranks == (1, 1, 1, 1)
            assert info.validation_error == 1.0 and info.train_error == 1.0
        else:
            assert "explains little" in str(record[0].message) and float(tn.norm(t)) > 0
            assert info.validation_error == best_found
    assert zeros >= 2  # seeds 0 and 2 (checked): the rule is exercised, not only its other branch


def test_complete_warns_when_the_data_explain_little():
    # a weak signal under noise: something is learnt (held-back error below 1) but not much
    truth = tn.random_tt((5, 5, 5), 1, seed=0)
    index = entries(truth.shape, 400, 0)
    clean = as_numpy(tn.gather(truth, index))
    noisy = clean + 1.5 * np.std(clean) * np.random.default_rng(1).standard_normal(400)
    with pytest.warns(ConvergenceWarning, match="explains little"):
        t, info = tn.complete(index, noisy, (5, 5, 5), seed=0, return_info=True)
    assert 0.5 < info.validation_error < 1.0 and float(tn.norm(t)) > 0


def test_complete_scale_and_float32():
    truth = tn.random_tt((5, 6, 7), 2, seed=0)
    index = entries(truth.shape, 1500, 1)
    values = tn.gather(truth, index)
    for exponent in (-600, 600):
        scaled = np.ldexp(values, exponent)
        result = tn.complete(index, scaled, truth.shape, seed=0)
        np.testing.assert_allclose(
            np.ldexp(as_numpy(tn.full(result)), -exponent), as_numpy(tn.full(truth)), atol=1e-8
        )
    single = tn.complete(torch.tensor(index), torch.tensor(values, dtype=torch.float32), truth.shape, seed=0)
    assert single.dtype == torch.float32
    assert relative(as_numpy(tn.full(single)), as_numpy(tn.full(truth))) <= 1e-4  # float32 rounding


def test_complete_errors():
    index = entries((4, 5), 30, 0)
    values = np.ones(30)
    with pytest.raises(IndexError, match=r"complete: indices row .* mode 1, which has size 5"):
        tn.complete(np.array([[0, 5]]), [1.0], (4, 5))
    with pytest.raises(ValueError, match=r"values has shape \(29,\) but indices has 30 rows"):
        tn.complete(index, values[:29], (4, 5))
    with pytest.raises(ValueError, match=r"must be \(k, 2\)"):
        tn.complete(index[:, :1], values, (4, 5))
    nan = values.copy()
    nan[3] = np.nan
    with pytest.raises(ValueError, match=r"values\[3\] is nan"):
        tn.complete(index, nan, (4, 5))
    with pytest.raises(ValueError, match=r"weights\[0\] is -1.0"):
        tn.complete(index, values, (4, 5), weights=-np.ones(30))
    with pytest.raises(ValueError, match="every weight is 0"):
        tn.complete(index, values, (4, 5), weights=np.zeros(30))
    with pytest.raises(ValueError, match="at least one must remain"):
        tn.complete(index, values, (4, 5), validation=30)
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\)"):
        tn.complete(index, values, (4, 5), validation=1.5)
    with pytest.raises(ValueError, match=r"validation=0 leaves no samples.*max_rank or eps"):
        tn.complete(index, values, (4, 5), validation=0)
    with pytest.raises(TypeError, match="values are complex"):
        tn.complete(index, values * 1j, (4, 5))
    with pytest.raises(TypeError, match="indices must hold integers"):
        tn.complete(index * 1.0, values, (4, 5))
    with pytest.raises(ValueError, match="indices has no rows"):
        tn.complete(np.zeros((0, 2), dtype=int), [], (4, 5))
    with pytest.raises(ValueError, match="x0 has shape"):
        tn.complete(index, values, (4, 5), x0=tn.random_tt((4, 6), 1, seed=0))
    with pytest.raises(TypeError, match="seed"):
        tn.complete(index, values, (4, 5), seed=1.5)


# --- optima -------------------------------------------------------------------------------------------
@given(tst.tts(max_ncores=4, max_size=5, max_rank=3, dtype="float64"))
def test_argmax_and_argmin_match_the_dense_tensor(t):
    dense = as_numpy(tn.full(t))
    scale = np.abs(dense).max()
    index, value = tn.argmax(t)
    assert dense[index] == dense.max()
    assert abs(float(as_numpy(value)) - dense.max()) <= 1e-12 * scale  # gather and full round differently
    index, value = tn.argmin(t)
    assert dense[index] == dense.min()
    assert abs(float(as_numpy(value)) - dense.min()) <= 1e-12 * scale


def sum_of_univariate(g):
    """The rank-2 train of sum_k g[k, i_k]: [g_1, 1] [[1, 0], [g_k, 1]] ... [1; g_d]."""
    d, n = g.shape
    first = np.stack([g[0], np.ones(n)], axis=1)[None]
    middle = [
        np.stack([np.stack([np.ones(n), g[k]], 1), np.stack([np.zeros(n), np.ones(n)], 1)], 2)
        for k in range(1, d - 1)
    ]
    last = np.stack([np.ones(n), g[-1]], axis=0)[:, :, None]
    return tn.TT([first, *[m.transpose(1, 0, 2) for m in middle], last])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_argmax_of_trains_too_large_to_form(backend):
    g = np.random.default_rng(0).standard_normal((25, 8))
    t = sum_of_univariate(g).to(backend)  # 8^25 entries
    test = entries(t.shape, 50, 1)
    np.testing.assert_allclose(as_numpy(tn.gather(t, test)), g[np.arange(25), test].sum(axis=1), rtol=1e-12)
    index, value = tn.argmax(t)
    assert index == tuple(int(i) for i in g.argmax(axis=1))
    assert abs(float(as_numpy(value)) - g.max(axis=1).sum()) <= 1e-12 * abs(g.max(axis=1).sum())
    index, value = tn.argmin(t)
    assert index == tuple(int(i) for i in g.argmin(axis=1))
    # a product of positive factors with a unique peak (rank 1): the peak is found
    peak = np.exp(-((np.arange(10)[None, :] - np.arange(20)[:, None] % 10) ** 2) / 4.0)
    product = tn.TT([p[None, :, None] for p in peak]).to(backend)
    assert tn.argmax(product)[0] == tuple(int(k % 10) for k in range(20))


def test_optima_errors():
    t = tn.random_tt((3, 4), 2, seed=0)
    with pytest.raises(TypeError, match="argmax: t must be a tensornet TT"):
        tn.argmax(np.zeros((3, 4)))
    with pytest.raises(TypeError, match="argmin: t is complex"):
        tn.argmin(t.to(dtype="complex128"))
    with pytest.raises(ValueError, match="beam"):
        tn.argmax(t, beam=0)


# --- sampling -----------------------------------------------------------------------------------------
def chi_square_ok(counts, probabilities, level=1e-4):
    """Pearson's statistic against the chi-square quantile (Wilson-Hilferty), cells with expectation >= 5."""
    total = counts.sum()
    expected = probabilities * total
    keep = expected >= 5
    statistic = float(np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep]))
    dof = int(keep.sum()) - 1
    z = 3.719  # the 1e-4 upper quantile of N(0, 1)
    quantile = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    return statistic <= quantile, statistic, quantile


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("squared", [False, True])
def test_sample_frequencies_match_exact_probabilities(backend, squared):
    u = tn.random_tt((3, 4, 5), 2, seed=0)
    t = (u * u if not squared else u).to(backend)
    dense = as_numpy(tn.full(t))
    p = dense**2 if squared else dense
    p = p / p.sum()
    draws = tn.sample(t, 20_000, seed=1, squared=squared)
    assert draws.shape == (20_000, 3) and tn._backend.backend_name(draws) == backend
    rows = as_numpy(draws).astype(np.int64)
    counts = np.zeros(t.shape)
    np.add.at(counts, tuple(rows.T), 1)
    ok, statistic, quantile = chi_square_ok(counts.ravel(), p.ravel())
    assert ok, (statistic, quantile)
    assert np.array_equal(
        as_numpy(tn.sample(t, 50, seed=3, squared=squared)),
        as_numpy(tn.sample(t, 50, seed=3, squared=squared)),
    )


def test_sample_marginals_of_a_large_train():
    """A QTT on 2^30 points: mode-k frequencies against the exact marginals from tn.sum."""
    t = tn.random_tt((2,) * 30, 3, seed=4)
    t = tn.round(t * t, eps=1e-12)  # non-negative
    draws = as_numpy(tn.sample(t, 20_000, seed=5)).astype(np.int64)
    for k in (0, 14, 29):
        others = [j for j in range(30) if j != k]
        marginal = as_numpy(tn.full(tn.sum(t, axis=others)))
        marginal = marginal / marginal.sum()
        counts = np.bincount(draws[:, k], minlength=2)
        ok, statistic, quantile = chi_square_ok(counts.astype(float), marginal)
        assert ok, (k, statistic, quantile)


def test_sample_errors():
    t = tn.random_tt((3, 4, 5), 2, seed=0)
    with pytest.raises(ValueError, match=r"sample: t takes negative values \(t\[.*squared=True"):
        tn.sample(t, 10, seed=0)
    big = tn.random_tt((4,) * 12, 2, seed=1)  # 4^12 > 2^20: negative weights met while drawing
    with pytest.raises(ValueError, match="sample: t takes negative values: the summed weights of mode"):
        tn.sample(big, 1000, seed=0)
    with pytest.raises(TypeError, match=r"t is complex.*squared=True"):
        tn.sample(t.to(dtype="complex128"), 3)
    with pytest.raises(ValueError, match="k must be"):
        tn.sample(t * t, -1)
    with pytest.raises(ValueError, match="no positive mass"):
        tn.sample(tn.zeros((3, 4)), 2)
    with pytest.raises(ValueError, match="zero train"):
        tn.sample(tn.zeros((3, 4)), 2, squared=True)
    assert tn.sample(t * t, 0).shape == (0, 3)
    complex_draws = tn.sample(t.to(dtype="complex128"), 5, seed=0, squared=True)
    assert complex_draws.shape == (5, 3)


def test_no_warnings_leak():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        truth = tn.random_tt((5, 5, 5), 2, seed=0)
        index = entries(truth.shape, 800, 1)
        tn.complete(index, tn.gather(truth, index), truth.shape, seed=0)


# --- completion kernels: proximal ALS sweeps and Gauss-Newton steps ---------------------------------------
def _samples(truth, count, seed, backend, weighted):
    from tensornet.learn import _als

    index = entries(truth.shape, count, seed)
    values = np.asarray(tn.gather(truth, index))
    weights = np.random.default_rng(seed).uniform(0.5, 2.0, count) if weighted else None
    if backend == "torch":
        values = torch.tensor(values)
        weights = None if weights is None else torch.tensor(weights)
    return _als.make_samples(index, values, weights, truth.shape)


@settings(max_examples=6)
@given(st.integers(0, 2**16), st.sampled_from(["numpy", "torch"]))
def test_proximal_sweeps_never_raise_the_fitting_error(seed, backend):
    """Trains fitted past their true ranks: a ridge toward zero let the fitting error jump between sweeps
    (measured 20x at 1e-9 on a random rank-3 train of 10^6), the proximal term cannot."""
    from tensornet.learn import _als

    truth = tn.random_tt((6, 6, 6, 6), 2, seed=seed)
    samples = _samples(truth, 700, seed + 1, backend, weighted=False)
    start = tn.random_tt(truth.shape, 3, seed=seed + 2).to(backend)  # one rank too many on every bond
    cores = _als.orthogonalize_right(list(start.cores))
    rights = _als.right_interfaces(cores, samples)
    values = as_numpy(samples.values)
    errors = []
    for _ in range(40):
        cores, rights, predicted = _als.sweep(cores, rights, samples)
        errors.append(relative(as_numpy(predicted), values))
    for before, after in itertools.pairwise(errors):
        assert after <= before * (1 + 1e-9) + 1e-13, errors  # rounding of the products: 1e-13 of the values
    # the sweeps converge at a rate that depends on the draw: 1e-16 to 2e-8 after 40 on seeds 0-11, the slowest
    # draw found by the ci profile 1.8e-6; the property under test is the monotone fall above
    assert errors[-1] <= 1e-5


def _dense_jacobian(cores, index):
    """The Jacobian of the sampled values, column by column: the train is linear in each core (numpy)."""
    columns = []
    for k, core in enumerate(cores):
        r, n, s = core.shape
        for i in range(n):
            for a in range(r):
                for b in range(s):
                    unit = np.zeros_like(core)
                    unit[a, i, b] = 1.0
                    probe = [*cores[:k], unit, *cores[k + 1 :]]
                    columns.append(np.asarray(tn.gather(tn.TT(probe), index)))
    return np.stack(columns, axis=1)  # slice-major order: core k's unknowns as (n, r, s)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_gauss_newton_normal_equations_match_the_dense_jacobian(backend):
    from tensornet.learn import _gauss_newton

    truth = tn.random_tt((4, 3, 5, 2), (2, 3, 2), seed=0)
    samples = _samples(truth, 300, 1, backend, weighted=True)
    cores = [as_numpy(c) for c in tn.random_tt(truth.shape, (2, 2, 2), seed=2).cores]
    pairs = _gauss_newton.pair_layouts(samples, truth.shape)
    normal, gradient, predicted = _gauss_newton._normal_equations(
        [c if backend == "numpy" else torch.tensor(c) for c in cores], samples, pairs
    )
    index = samples.rows
    jacobian = _dense_jacobian(cores, index)
    w = as_numpy(samples.root_weights) ** 2
    residual = as_numpy(samples.values) - as_numpy(predicted)
    np.testing.assert_allclose(as_numpy(predicted), np.asarray(tn.gather(tn.TT(cores), index)), rtol=1e-12)
    scale = np.abs(jacobian.T @ (w[:, None] * jacobian)).max()
    np.testing.assert_allclose(as_numpy(normal), jacobian.T @ (w[:, None] * jacobian), atol=1e-12 * scale)
    np.testing.assert_allclose(as_numpy(gradient), jacobian.T @ (w * residual), atol=1e-12 * scale)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_gauss_newton_steps_lower_the_error_and_converge(backend):
    from tensornet.learn import _gauss_newton

    truth = tn.random_tt((5, 6, 5, 4), 2, seed=3)
    samples = _samples(truth, 500, 4, backend, weighted=False)
    rng = np.random.default_rng(5)
    near = [
        as_numpy(c) + 0.3 * rng.standard_normal(c.shape) * np.abs(as_numpy(c)).mean() for c in truth.cores
    ]
    cores = [c if backend == "numpy" else torch.tensor(c) for c in near]
    errors = []

    def accept(moved, predicted):
        errors.append(relative(as_numpy(predicted), as_numpy(samples.values)))
        return len(errors) < 30 and errors[-1] > 1e-13

    result = _gauss_newton.levenberg_marquardt(
        cores, samples, _gauss_newton.pair_layouts(samples, truth.shape), accept
    )
    assert all(after < before for before, after in itertools.pairwise(errors))  # only steps that lower it
    assert errors[-1] <= 1e-10  # quadratic convergence near an exact fit: measured 1e-15 in 6 steps
    test = entries(truth.shape, 500, 6)
    assert relative(as_numpy(tn.gather(tn.TT(result), test)), as_numpy(tn.gather(truth, test))) <= 1e-8


def test_gauss_newton_is_skipped_where_pairs_would_be_mostly_padding():
    from tensornet.learn import _als, _gauss_newton

    index = np.zeros((50, 3), dtype=np.int64)  # every sample on one entry: 400 pairs of indices, 50 deep
    index[:, 2] = np.arange(50) % 20
    samples = _als.make_samples(index, np.ones(50), None, (20, 20, 20))
    assert _gauss_newton.pair_layouts(samples, (20, 20, 20)) is None
    spread = entries((20, 20, 20), 2000, 0)
    assert _gauss_newton.pair_layouts(
        _als.make_samples(spread, np.ones(2000), None, (20, 20, 20)), (20, 20, 20)
    )


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("spread", [1, 2])
def test_complete_from_a_degenerate_x0_returns_no_worse_than_x0(backend, spread):
    """An x0 whose slices span 20-40 orders of magnitude: in floating point a sweep from it can raise the
    fitting error to 1e14 (the samples barely see some directions, which grow each sweep); the search once
    returned such trains, with held-back errors of 1e10-1e20. Now x0 is a candidate and a raising sweep is
    undone, so the result fits the samples no worse than x0 (here neither learns the truth: it warns)."""
    rng = np.random.default_rng(3 + spread)
    shape = (10,) * 6
    truth = tn.random_tt(shape, 3, seed=1)
    index = np.stack([rng.integers(0, 10, 4000) for _ in shape], axis=1)
    values = np.asarray(tn.gather(truth, index))
    ranks = (1, 3, 3, 3, 3, 3, 1)
    scale = np.logspace(0, -20 * spread, 10)[None, :, None]
    x0 = tn.TT([rng.standard_normal((ranks[k], n, ranks[k + 1])) * scale for k, n in enumerate(shape)])
    if backend == "torch":
        x0, values = x0.to("torch"), torch.tensor(values)
    with pytest.warns(ConvergenceWarning):
        found, info = tn.complete(index, values, shape, x0=x0, seed=0, max_iter=40, return_info=True)
    exact = as_numpy(values)
    start = relative(as_numpy(tn.gather(x0, index)), exact)
    assert relative(as_numpy(tn.gather(found, index)), exact) <= max(start, 1.0) * 1.01
    assert info.validation_error <= max(start, 1.0) * 1.5  # the held-back tenth, as noisy as the rest
