"""Rounding routes and round_sum: the eps guarantee, an honest error bound and minimal ranks on every route
(forced through the private ``tensornet._round.Route`` switches), at every scale, on numpy and torch."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from conftest import as_numpy, rtol, torch
from hypothesis import given
from hypothesis import strategies as st
from test_edges import full_f64, ldexp, min_ranks, scale_of

import tensornet as tn
from tensornet import _checks, _round
from tensornet.testing import strategies as tst

ROUTES = {
    "plain": _round.PLAIN,  # R-only QRs, SVDs
    "auto": _round.AUTO,
    "noise": _round.Route(gram=False, drop_noise=True, split=False),
    "split": _round.Route(gram=False, drop_noise=False, split=True),
    "gram": _round.Route(gram=True, drop_noise=False, split=False, gram_min=1),  # Gram at every size
    "all": _round.Route(gram_min=1),
}
# eps near sqrt(machine eps) of each dtype, where Gram-based kernels stop resolving the threshold
EPS = st.sampled_from([0.0, 1e-12, 1.5e-8, 1e-8, 3e-4, 1e-3, 1e-1, 0.5])


def rounded(x, eps, route, max_rank=None):
    """Round through the private entry with a forced route: (result, bound, log)."""
    caps = _checks.rank_caps("round", max_rank, x.ncores)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tn.RankCapWarning)
        y, log = _round.rounded("round", x, [x._tt_layout()], eps, caps, route)
        bound = log.finish(log.total)
    return y, bound, log


def relative_error(y, x) -> float:
    """``||x - y|| / ||x||`` on float64 references normalised by powers of two (exact)."""
    reference, e_ref = full_f64(x)
    approx, e_approx = full_f64(y)
    difference = float(np.linalg.norm(ldexp(approx, e_approx - e_ref) - reference))
    total = float(np.linalg.norm(reference))
    return difference / total if total > 0 else difference  # the zero train must round to zero


@st.composite
def sums(draw, max_ncores=4):
    """A train from the arithmetic rounding lives on: ``t + t + t`` (rank-deficient), ``t - 2t + 3u`` (a
    combination), ``t + 1e-6 u`` (a small term: the split route's case) or ``t + u``; one core scaled by a
    drawn power of ten (the scale sits unevenly across cores); a drawn backend and dtype."""
    dtype = draw(tst.dtypes(complex=True))
    wide = "complex128" if "complex" in dtype else "float64"
    t = draw(tst.tts(backend="numpy", dtype=wide, max_size=4, max_ncores=max_ncores))
    u = draw(tst.tts(shape=t.shape, backend="numpy", dtype=wide))
    kind = draw(st.sampled_from(["ttt", "combination", "small", "generic"]))
    train = {
        "ttt": lambda: t + t + t,
        "combination": lambda: t - 2.0 * t + 3.0 * u,  # never zero: trains that cancel have no
        # relative accuracy to test (their norm is rounding of the cores')
        "small": lambda: t + 1e-6 * u,
        "generic": lambda: t + u,
    }[kind]()
    cores = [c / (np.max(np.abs(c)) or 1.0) for c in train.cores]  # a zero core stays zero
    cores[draw(st.integers(0, len(cores) - 1))] *= scale_of(dtype, draw)
    return tn.TT(cores).to(draw(tst.backends()), dtype=dtype)


def check(x, y, bound, eps, log=None):
    assert y.dtype == x.dtype and y.backend == x.backend and type(y) is type(x)
    assert bound <= eps + 1e-15
    slack = 10 * rtol(x.dtype) * math.sqrt(x.ndim)  # rounding of the factorisations themselves
    error = relative_error(y, x)
    assert error <= bound * (1 + 1e-6) + slack, (error, bound, log.kernels if log else None)
    if ("float64" in str(x.dtype) or "complex128" in str(x.dtype)) and isinstance(
        x, tn.TT
    ):  # the smallest ranks meeting the rule
        reference, _ = full_f64(x)
        assert all(r <= m for r, m in zip(y.ranks[1:-1], min_ranks(reference, eps))), (y.ranks, log)


@given(sums(), EPS, st.sampled_from(sorted(ROUTES)))
def test_every_route_keeps_the_guarantee(x, eps, route):
    y, bound, log = rounded(x, eps, ROUTES[route])
    check(x, y, bound, eps, log)


@given(sums(max_ncores=3), st.sampled_from([1e-3, 1e-8]), st.integers(1, 3), st.sampled_from(sorted(ROUTES)))
def test_every_route_with_a_rank_cap(x, eps, cap, route):
    y, bound, _ = rounded(x, eps, ROUTES[route], max_rank=cap)
    assert max(y.ranks) <= cap
    assert relative_error(y, x) <= bound * (1 + 1e-6) + 10 * rtol(x.dtype) * math.sqrt(x.ndim)


# --- each route is taken where it should be ------------------------------------------------------------
def sum_of(n, d, rank, seed=0):
    """A unit-norm random train, its ranks already at their useful maximum."""
    t = tn.round(tn.random_tt((n,) * d, rank, seed=seed), eps=0.0)
    return t / tn.norm(t)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_noise_rows_are_dropped_for_repeated_terms(backend):
    t = sum_of(4, 6, 5).to(backend)
    y, bound, log = rounded(t + t + t, 1e-8, ROUTES["noise"])
    assert log.noise_rows > 0 and y.ranks == t.ranks
    check(t + t + t, y, bound, 1e-8, log)
    _, _, exact = rounded(t + t + t, 0.0, ROUTES["noise"])  # eps = 0: nothing is dropped
    assert exact.noise_rows == 0


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_split_route_for_a_small_term(backend):
    a, b = sum_of(4, 6, 4), sum_of(4, 6, 6, seed=1)
    x = (a + 1e-10 * b).to(backend)
    y, bound, log = rounded(x, 1e-6, ROUTES["split"])
    assert "split" in log.kernels and y.ranks == a.ranks
    check(x, y, bound, 1e-6, log)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_gram_route_certifies_and_falls_back(backend):
    x = (sum_of(4, 6, 6) + sum_of(4, 6, 6, seed=1)).to(backend)
    y, bound, log = rounded(x, 1e-3, ROUTES["gram"])
    assert "gram" in log.kernels
    check(x, y, bound, 1e-3, log)
    _, _, exact = rounded(x, 0.0, ROUTES["gram"])  # eps = 0 cannot be certified from a Gram matrix
    assert "gram" not in exact.kernels


def test_routes_agree_on_ranks():
    a, b = sum_of(3, 8, 4), sum_of(3, 8, 5, seed=2)
    for x in (a + a + a, a + 1e-9 * b, a - 2.0 * a + b):
        ranks = {name: rounded(x, 1e-6, route)[0].ranks for name, route in ROUTES.items()}
        assert len(set(ranks.values())) == 1, ranks


# --- round_sum ---------------------------------------------------------------------------------------------
@st.composite
def term_lists(draw):
    """2-5 terms of one shape, with repeats and linear combinations, each on its own scale."""
    dtype = draw(tst.dtypes(complex=True))
    wide = "complex128" if "complex" in dtype else "float64"
    backend = draw(tst.backends())
    base = draw(tst.tts(backend="numpy", dtype=wide, max_size=4, max_ncores=4))
    terms = [base]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["repeat", "new", "small"]))
        if kind == "repeat":
            terms.append(
                draw(st.sampled_from(terms)) * draw(st.sampled_from([1.0, 2.0, 0.5]))
            )  # no cancellation
        else:
            u = draw(tst.tts(shape=base.shape, backend="numpy", dtype=wide))
            terms.append(u if kind == "new" else 1e-7 * u)
    scaled = []
    for term in terms:  # one core of each term scaled: terms on different scales, unevenly spread
        cores = [c / (np.max(np.abs(c)) or 1.0) for c in term.cores]
        cores[draw(st.integers(0, len(cores) - 1))] *= scale_of(dtype, draw) if len(terms) < 3 else 1.0
        scaled.append(tn.TT(cores).to(backend, dtype=dtype))
    return scaled


def block_sum(terms):
    total = terms[0]
    for term in terms[1:]:
        total = tn.add(total, term)
    return total


@given(term_lists(), EPS)
def test_round_sum_is_round_of_the_sum(terms, eps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reference sum of huge terms may overflow
        x = block_sum(terms)
    y, bound = tn.round_sum(terms, eps=eps, return_error=True)
    reference, _ = full_f64(x)
    if not np.all(np.isfinite(reference)) or not np.linalg.norm(reference) > 0:
        return  # the terms' sum is beyond float64 here; nothing to compare with
    check(x, y, bound, eps)


@given(
    st.lists(tst.ttms(backend="numpy", dtype="float64", max_rank=2), min_size=1, max_size=1),
    st.integers(1, 3),
)
def test_round_sum_of_ttm(one, copies):
    a = one[0]
    y = tn.round_sum([a] * (copies + 1), eps=1e-10)
    assert isinstance(y, tn.TTM) and y.row_shape == a.row_shape and y.ranks[1:-1] <= a.ranks[1:-1]
    np.testing.assert_allclose(as_numpy(y.full()), (copies + 1) * as_numpy(a.full()), rtol=1e-8, atol=1e-12)


def test_round_sum_gradients_flow():
    t = tn.random_tt((3, 4, 5), 2, seed=0).to("torch", dtype="float64")
    grads = []
    for combine in (lambda u: tn.round_sum([u, u], eps=1e-12), lambda u: tn.round(u + u, eps=1e-12)):
        cores = [c.clone().requires_grad_(True) for c in t.cores]
        (combine(tn.TT(cores)).full() ** 2).sum().backward()
        grads.append([c.grad for c in cores])
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)


def test_round_sum_bad_input():
    t = tn.random_tt((2, 3, 4), 2, seed=0)
    with pytest.raises(TypeError, match=r"round_sum: expected a sequence of TT or TTM trains.*tn.round"):
        tn.round_sum(t, eps=1e-3)
    with pytest.raises(ValueError, match="round_sum: the sequence of trains is empty"):
        tn.round_sum([], eps=1e-3)
    with pytest.raises(TypeError, match="round_sum: term 1 must be a tensornet TT or TTM"):
        tn.round_sum([t, np.ones((2, 3, 4))], eps=1e-3)
    with pytest.raises(ValueError, match=r"round_sum: TT shapes differ.*\(term 0 against term 2\)"):
        tn.round_sum([t, t, tn.random_tt((2, 3, 5), 2, seed=1)])
    with pytest.raises(TypeError, match=r"different dtypes.*\(term 0 against term 1\)"):
        tn.round_sum([t, t.to(dtype="float32")])
    with pytest.raises(ValueError, match="round_sum: eps must be finite"):
        tn.round_sum([t, t], eps=-1.0)
    with pytest.raises(ValueError, match="round_sum: max_rank has 3 entries"):
        tn.round_sum([t, t], max_rank=(1, 2, 3))
    with pytest.raises(ValueError, match=r"round_sum: term 1: .*NaN or inf"):
        tn.round_sum([t, tn.TT([np.full((1, 2, 1), np.nan), np.ones((1, 3, 1)), np.ones((1, 4, 1))])])
