"""tn.report, BondReport.cut, tn.plot_spectra / t.plot() and the HTML reprs, against dense SVDs of the unfoldings."""

from __future__ import annotations

import math
import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch
from conftest import as_numpy
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet.testing import strategies as tst

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def unfolding_spectra(t) -> list[np.ndarray]:
    """Singular values of the unfoldings of the dense tensor (for a TTM: row and column modes of a core together)."""
    if isinstance(t, tn.TTM):
        rows, cols = t.row_shape, t.col_shape
        d = len(rows)
        dense = as_numpy(tn.full(t)).reshape(rows + cols)
        dense = dense.transpose([i for k in range(d) for i in (k, d + k)])
        sizes = [m * n for m, n in zip(rows, cols)]
    else:
        dense = as_numpy(tn.full(t))
        sizes = list(t.shape)
    return [
        np.linalg.svd(dense.reshape(math.prod(sizes[:k]), -1), compute_uv=False) for k in range(1, len(sizes))
    ]


def tol(t) -> float:
    return 1e-4 if str(t.dtype).endswith(("float32", "complex64")) else 1e-11


@given(t=st.one_of(tst.tts(dtype=tst.dtypes(complex=True)), tst.ttms(dtype=tst.dtypes(complex=True))))
def test_singular_values_are_those_of_the_unfoldings(t):
    r = tn.report(t)
    expected = unfolding_spectra(t)
    norm = float(np.linalg.norm(as_numpy(tn.full(t))))
    assert r.norm == pytest.approx(norm, rel=tol(t))
    assert len(r.singular_values) == t.ncores - 1 and r.ranks == t.ranks
    for k, (got, want) in enumerate(zip(r.singular_values, expected), start=1):
        assert got.dtype == np.float64 and got.size <= t.ranks[k]
        assert np.all(np.diff(got) <= 0)
        padded = np.zeros(max(got.size, want.size))
        padded[: want.size] = want
        np.testing.assert_allclose(got, padded[: got.size], atol=tol(t) * norm)
        np.testing.assert_allclose(np.sum(got**2), norm**2, rtol=10 * tol(t))  # nothing is lost beyond r_k


@given(t=tst.tts(max_ncores=5, max_rank=4), eps=st.sampled_from([1e-12, 1e-3, 0.1, 0.5]))
def test_cut_is_the_rule_of_round(t, eps):
    r = tn.report(t)
    cut = r.cut(eps)
    rounded = tn.round(t, eps=eps)
    # round truncates each bond through the ones already truncated: never more than the report's cut
    assert all(a <= b for a, b in zip(rounded.ranks, cut)), (rounded.ranks, cut)
    threshold = eps / math.sqrt(max(t.ncores - 1, 1))
    for k, (s, tail) in enumerate(zip(r.relative, r.discarded(eps)), start=1):
        assert tail <= threshold * (1 + 1e-12)
        assert tail == pytest.approx(float(np.sqrt(np.sum(s[cut[k] :] ** 2))), abs=1e-15)
        if cut[k] > 1:  # one value fewer would not fit: the cut is the smallest
            assert float(np.sqrt(np.sum(s[cut[k] - 1 :] ** 2))) > threshold


def test_cut_equals_round_on_a_smooth_function():
    x = np.fromfunction(lambda *i: 1 / (1 + sum(i)), (8,) * 5)
    t = tn.tt_svd(x)
    for eps in (1e-2, 1e-6, 1e-10):
        assert tn.report(t).cut(eps) == tn.round(t, eps=eps).ranks == tn.tt_svd(x, eps=eps).ranks


@pytest.mark.parametrize("exponent", [-300, -150, 150, 300])
def test_every_finite_scale(exponent):
    t = tn.random_tt((4, 5, 3, 4), 3, seed=0)
    big = tn.TT([t.cores[0] * 2.0**exponent, *t.cores[1:]])
    r, s = tn.report(t), tn.report(big)
    assert s.norm == pytest.approx(math.ldexp(r.norm, exponent), rel=1e-12)
    for a, b in zip(r.relative, s.relative):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert s.cut(1e-3) == r.cut(1e-3)


def test_zero_train_and_one_core():
    z = tn.report(tn.random_tt((3, 4, 5), 2, seed=0) * 0.0)
    assert z.norm == 0.0 and z.cut(0.1) == (1, 1, 1, 1) and all(np.all(v == 0) for v in z.relative)
    one = tn.report(tn.random_tt((7,), 1, seed=0))
    assert one.singular_values == () and one.cut(0.1) == (1, 1)


def test_torch_low_precision_and_gradients_are_reported_in_float64():
    t = tn.random_tt((4, 5, 3), 2, seed=0, like=torch.zeros(1))
    cores = [c.to(torch.bfloat16).requires_grad_() for c in t.cores]
    r = tn.report(tn.TT(cores))
    assert r.dtype == "bfloat16" and r.backend == "torch" and r.singular_values[0].dtype == np.float64
    exact = tn.report(tn.TT([c.detach().double() for c in cores]))
    np.testing.assert_allclose(r.singular_values[0], exact.singular_values[0], rtol=1e-12)


def test_bad_input():
    with pytest.raises(TypeError, match=r"tn.report: t must be a TT or TTM, got ndarray"):
        tn.report(np.zeros((2, 2)))
    t = tn.random_tt((3, 4), 2, seed=0)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        tn.report(t, eps=-1.0)
    with pytest.raises(TypeError, match=r"BondReport.cut: eps must be a real number"):
        tn.report(t).cut(None)
    with pytest.raises(ValueError, match="NaN or inf"):
        tn.report(tn.TT([np.full((1, 3, 1), np.nan)]))


def test_text_and_html_tables():
    t = tn.random_tt((4, 5, 6), (3, 4), seed=0)
    text = repr(tn.report(t, eps=0.1))
    lines = text.splitlines()
    assert lines[0].startswith("BondReport(TT, 3 cores, modes=(4, 5, 6), numpy float64, 96 params, norm=")
    assert lines[1].split() == ["bond", "rank", "s_max/norm", "s_min/norm", "rank", "at", "eps=0.1"]
    assert [line.split()[:2] for line in lines[2:]] == [["1", "3"], ["2", "4"]]
    html = tn.report(t, eps=0.1)._repr_html_()
    assert html.count("<tr>") == 3 and "rank at eps=0.1" in html
    a = tn.random_ttm((2, 3), (4, 5), 2, seed=0, like=torch.zeros(1, dtype=torch.float32))
    table = a._repr_html_()
    for cell in (
        "TTM",
        "(6, 20)",
        "row_shape",
        "(2, 3)",
        "(1, 2, 1)",
        "float32",
        "torch on cpu",
        "parameters",
    ):
        assert cell in table
    assert "<script" not in table


def test_plot_draws_every_nonzero_value_and_the_ranks():
    t = tn.tt_svd(np.fromfunction(lambda *i: 1 / (1 + sum(i)), (6,) * 4))
    fig = t.plot(eps=1e-6)
    spectra, ranks = fig.axes
    r = tn.report(t)
    cut = r.cut(1e-6)
    drawn = [line.get_ydata() for line in spectra.get_lines()]
    kept = sum(len(y) for y in drawn[0::2])
    assert kept == sum(cut[1:-1]) and kept + sum(len(y) for y in drawn[1::2]) == sum(
        np.sum(s > 0) for s in r.singular_values
    )
    assert spectra.get_yscale() == "log"
    assert [list(line.get_ydata()) for line in ranks.get_lines()] == [list(t.ranks[1:-1]), list(cut[1:-1])]
    plt.close(fig)
    fig, axes = plt.subplots(1, 2)
    assert tn.plot_spectra(r, axes=axes) is fig and len(axes[0].get_lines()) == t.ncores - 1
    plt.close(fig)
    with pytest.raises(TypeError, match="t must be a TT, TTM or BondReport"):
        tn.plot_spectra(np.zeros(3))


def test_matplotlib_is_imported_only_to_draw():
    code = (
        "import sys, tensornet as tn; tn.report(tn.random_tt((3, 4), 2)); print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
