"""Random constructors hit their stated entry standard deviation; shapes helpers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import as_numpy, torch

import tensornet as tn


@pytest.mark.parametrize("d", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("std", [0.02, 1.0, 7.0])
def test_random_tt_entry_std(d, std):
    # Entries of one draw are correlated and heavy-tailed (sums of products of d Gaussians), so the
    # variance is estimated over many small independent draws: the RMS of 2,000 draws is within ~3%.
    samples = np.concatenate([tn.random_tt((2,) * d, 3, std=std, seed=s).full().ravel() for s in range(2000)])
    assert abs(np.sqrt(np.mean(samples**2)) / std - 1) < 0.10
    assert abs(samples.mean()) < 0.1 * std


@pytest.mark.parametrize("d", [2, 3, 4, 5, 6])
def test_random_ttm_entry_std(d):
    rows, cols = (2,) * d, (1,) * d
    samples = np.concatenate(
        [tn.random_ttm(rows, cols, 4, std=0.5, seed=s).full().ravel() for s in range(2000)]
    )
    assert abs(np.sqrt(np.mean(samples**2)) / 0.5 - 1) < 0.10


def test_seed_reproducible_and_like():
    a = tn.random_tt((3, 4), 2, seed=7)
    b = tn.random_tt((3, 4), 2, seed=7)
    np.testing.assert_array_equal(a.full(), b.full())
    assert a.ranks == (1, 2, 1)
    c = tn.random_tt((3, 4), (1, 2, 1), seed=7, dtype="float32")
    assert c.dtype == np.float32 and c.ranks == (1, 2, 1)


def test_like_picks_backend_dtype_device():
    like = torch.zeros(1, dtype=torch.float32)
    t = tn.random_ttm((2, 3), (3, 2), 2, seed=1, like=like)
    assert t.backend == "torch" and t.dtype == torch.float32 and t.device == like.device
    np.testing.assert_allclose(as_numpy(t.full()), tn.random_ttm((2, 3), (3, 2), 2, seed=1).full(), rtol=1e-6)
    u = tn.random_tt((2, 2), 1, like=t, seed=0)
    assert u.backend == "torch"


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: tn.random_tt((3, 0), 2), ValueError, r"shape\[1\] = 0"),
        (lambda: tn.random_tt((3, 4), 0), ValueError, "rank must be >= 1, got 0"),
        (lambda: tn.random_tt((3, 4, 5), (2, 0)), ValueError, "rank must be >= 1, got 0 for bond 2"),
        (lambda: tn.random_tt((3, 4), (2, 2)), ValueError, "rank has 2 entries but the train has 2 cores"),
        (lambda: tn.random_tt((3, 4), (2, 2, 2)), ValueError, "must start and end with 1"),
        (lambda: tn.random_tt((3, 4), 2, std=-1.0), ValueError, "std must be a finite number"),
        (lambda: tn.random_tt((3, 4), 2, std=float("nan")), ValueError, "std must be a finite number"),
        (lambda: tn.random_tt((3, 4), "2"), TypeError, "rank must be an int"),
        (lambda: tn.random_tt([], 2), TypeError, "non-empty sequence"),
        (lambda: tn.random_ttm((2, 3), (3,), 2), ValueError, "different lengths"),
        (lambda: tn.random_tt((3, 4), 2, like="cpu"), TypeError, "like must be an array"),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_factorize():
    assert tn.shapes.factorize(768, 3) == (8, 8, 12)
    assert tn.shapes.factorize(3072, 3) == (12, 16, 16)
    assert tn.shapes.factorize(7, 3) == (1, 1, 7)
    assert tn.shapes.ttm_shapes(3072, 768, 3) == ((12, 16, 16), (8, 8, 12))
    for n in range(1, 200):
        for d in range(1, 5):
            factors = tn.shapes.factorize(n, d)
            assert len(factors) == d and int(np.prod(factors)) == n
    assert tn.shapes.useful_ranks((2, 3, 4)) == (2, 4)
    with pytest.raises(ValueError, match=r"ncores must be an int in \[1, 4096\)"):
        tn.shapes.factorize(8, 0)


def test_import_does_not_import_torch_or_hypothesis():
    code = (
        "import sys, tensornet; tensornet.tt_svd; print('torch' in sys.modules, 'hypothesis' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_lazy_submodules_and_unknown_attribute():
    assert tn.testing.strategies.tts is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        tn.nope  # noqa: B018


@pytest.mark.parametrize(
    ("seed", "error", "match"),
    [
        (-1, ValueError, "random_tt: seed must be >= 0"),
        ("abc", TypeError, "random_tt: seed must be None, an int >= 0.*got str 'abc'"),
        (1.5, TypeError, "random_tt: seed must be None.*got float 1.5"),
        (True, TypeError, "random_tt: seed must be None.*got bool"),
    ],
)
def test_bad_seeds_are_named(seed, error, match):
    with pytest.raises(error, match=match):
        tn.random_tt((3, 4), 2, seed=seed)
    with pytest.raises(error, match=match.replace("random_tt", "random_ttm")):
        tn.random_ttm((3,), (4,), 2, seed=seed)


def test_every_seed_numpy_takes_still_works():
    first = tn.random_tt((3, 4), 2, seed=7)
    for seed in (np.int64(7), [7], np.random.SeedSequence(7)):
        np.testing.assert_array_equal(tn.random_tt((3, 4), 2, seed=seed).full(), first.full())
    assert tn.random_tt((3, 4), 2, seed=np.random.default_rng(1)).shape == (3, 4)
