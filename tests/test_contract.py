"""tensornet.contract: plan cache (hits, buckets, planner call counts), explain, the cost model's choices,
pairwise path execution, autotuning."""

from __future__ import annotations

import numpy as np
import opt_einsum as oe
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet import contract

# The paper's c_fc 768 -> 3072 core shapes as (in_k, out_k) pairs for each rank (docs/reference.md).
PAPER = {
    16: ((4, 4), (4, 4), (4, 4), (4, 4), (3, 12)),
    32: ((8, 8), (8, 8), (12, 8), (1, 6)),
    64: ((8, 8), (8, 8), (12, 8), (1, 6)),
    80: ((16, 16), (16, 16), (3, 12)),
}


def paper_cores(rank):
    pairs = PAPER[rank]
    ranks = [1] + [rank] * (len(pairs) - 1) + [1]
    return [(ranks[k], out_k, in_k, ranks[k + 1]) for k, (in_k, out_k) in enumerate(pairs)]


@pytest.fixture(autouse=True)
def fresh_cache():
    previous = contract.autotune(False)
    contract.cache_clear()
    yield
    contract.autotune(previous)
    contract.cache_clear()


def test_token_bucket():
    assert [contract.token_bucket(n) for n in (0, 1, 2, 3, 4, 5, 100, 1024, 1025)] == [
        1,
        1,
        2,
        4,
        4,
        8,
        128,
        1024,
        2048,
    ]


def test_repeated_shapes_hit_the_cache_and_buckets_do_not_replan():
    w = tn.random_ttm((2, 3, 2), (3, 2, 2), 2, seed=0)
    x = np.ones((5, 12))
    tn.linear(x, w)
    planned = contract.cache_info().misses
    assert planned >= 1
    for tokens in (5, 6, 7, 8, 5):  # one bucket (8): generation with a growing length does not re-plan
        tn.linear(np.ones((tokens, 12)), w)
    info = contract.cache_info()
    assert info.misses == planned and info.hits >= 5
    tn.linear(np.ones((9, 12)), w)  # bucket 16: one new linear plan
    assert contract.cache_info().misses == planned + 1
    # leading dimensions count as tokens: (2, 4) rows is bucket 8 again
    tn.linear(np.ones((2, 4, 12)), w)
    assert contract.cache_info().misses == planned + 1


def test_plans_are_keyed_by_dtype_backend_and_device():
    shapes = paper_cores(16)
    a = contract.plan_linear((8, 768), shapes, dtype="float32", device="cpu", backend="torch")
    assert contract.plan_linear((8, 768), shapes, dtype="float32", device="cpu", backend="torch") is a
    misses = contract.cache_info().misses
    b = contract.plan_linear((8, 768), shapes, dtype="float64", device="cpu", backend="torch")
    c = contract.plan_linear((8, 768), shapes, dtype="float32", device="cuda:0", backend="torch")
    assert contract.cache_info().misses == misses + 2 and b is not a and c is not a
    assert c.machine.name == "cuda" and a.machine.name == "cpu"


def test_networks_share_the_cache():
    a = tn.random_tt((3, 4, 5), 2, seed=0)
    tn.dot(a, a)
    misses = contract.cache_info().misses
    tn.dot(a, a)
    assert contract.cache_info().misses == misses
    tn.dot(tn.random_tt((3, 4, 6), 2, seed=1), tn.random_tt((3, 4, 6), 2, seed=2))
    assert contract.cache_info().misses > misses


@pytest.mark.parametrize("rank", sorted(PAPER))
def test_cost_model_rebuilds_for_training_batches_and_factorises_for_decoding(rank):
    shapes = paper_cores(rank)
    big = contract.plan_linear((8192, 768), shapes, dtype="float32")
    assert big.forward.strategy == "rebuild" and big.backward.strategy == "dense"
    small = contract.plan_linear((1, 768), shapes, dtype="float32")
    assert small.forward.strategy in ("sweep", "einsum") and small.backward.strategy == "sweep"
    # the model is not FLOP-only: the chosen plan is never more than the modelled time of the others
    for plan in (big, small):
        assert plan.forward.seconds == min(c.seconds for c in plan.forward_candidates)
        assert plan.backward.seconds == min(c.seconds for c in plan.backward_candidates)


def test_cost_counts_match_hand_counts():
    shapes = [(1, 4, 3, 2), (2, 5, 6, 1)]  # M = 20, N = 18
    plan = contract.plan_linear((16, 18), shapes, dtype="float64")
    rebuild = next(c for c in plan.forward_candidates if c.strategy == "rebuild")
    # W = core0 (4*3, 2) @ core1 (2, 5*6): 2*12*2*30 FLOPs; then y = x W^T: 2*16*18*20
    assert rebuild.flops == 2 * 12 * 2 * 30 + 2 * 16 * 18 * 20
    assert rebuild.largest == 20 * 18  # W itself (y is 16 x 20)
    sweep = next(c for c in plan.forward_candidates if c.strategy == "sweep")
    # core 0: (4*2, 1*3) @ (3, 6*16); core 1: (5*1, 2*6) @ (12, 16*4)
    assert sweep.flops == 2 * 8 * 3 * 96 + 2 * 5 * 12 * 64


def test_explain_is_readable_and_says_why():
    w = tn.random_ttm((4, 4, 4, 4, 12), (4, 4, 4, 4, 3), 16, seed=0).to(dtype="float32")
    text = repr(contract.explain((2, 8192, 768), w))
    for part in ("LinearPlan", "forward candidates", "backward candidates", "rebuild", "sweep", "einsum"):
        assert part in text, (part, text)
    assert "rebuild wins" in text and "MFLOP" in text and "MB" in text and "elements" in text
    assert "tokens bucketed to 16384" in text
    small = repr(contract.explain((1, 768), w))
    assert "rebuild" in small.split("->")[1] and "slower" in small
    network = repr(contract.explain("ab,bc,cd->ad", (2, 3), (3, 4), (4, 5)))
    assert "Optimized FLOP count" in network or "Optimized scaling" in network


EQUATIONS = ["ab,bc->ac", "abc,cd,db->ad", "ab,bc,cd,de->ae", "abc,bcd->ad", "ab,ab->", "abcd,cdef,efg->abg"]


@given(st.sampled_from(EQUATIONS), st.integers(1, 4), st.integers(0, 2**16))
def test_run_path_matches_numpy_einsum(equation, size, seed):
    rng = np.random.default_rng(seed)
    inputs = equation.split("->")[0].split(",")
    dims = {c: size + (ord(c) % 3) for c in set("".join(inputs))}
    arrays = [rng.standard_normal(tuple(dims[c] for c in term)) for term in inputs]
    path = contract.plan_network(equation, *(a.shape for a in arrays)).expression
    expected = np.einsum(equation, *arrays)
    pairs, _ = oe.contract_path(equation, *arrays, optimize="optimal")
    got = contract.run_path(equation, pairs, arrays, lambda eq, *ops: np.einsum(eq, *ops))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(path(*arrays), expected, rtol=1e-10, atol=1e-10)


@given(
    st.sampled_from(EQUATIONS),
    st.lists(st.sampled_from(["float32", "float64", "complex64", "complex128"]), min_size=4, max_size=4),
    st.integers(0, 2**16),
)
def test_einsum_promotes_dtypes_as_numpy_on_both_backends(equation, dtypes, seed):
    # torch's einsum refused mixed dtypes ("both inputs should have same dtype"); numpy promoted them
    import torch

    rng = np.random.default_rng(seed)
    inputs = equation.split("->")[0].split(",")
    dims = {c: 2 + (ord(c) % 3) for c in set("".join(inputs))}
    arrays = []
    for term, dtype in zip(inputs, dtypes):
        shape = tuple(dims[c] for c in term)
        values = rng.standard_normal(shape) + (1j * rng.standard_normal(shape) if "complex" in dtype else 0)
        arrays.append(values.astype(dtype))
    expected = np.einsum(equation, *arrays)
    got_numpy = contract.einsum(equation, *arrays)
    got_torch = contract.einsum(equation, *(torch.from_numpy(a) for a in arrays))
    assert np.asarray(got_numpy).dtype == expected.dtype == got_torch.numpy().dtype
    # a pair of single-precision operands is contracted in single precision before it meets a wider one
    tol = 1e-5 if any(a.dtype in (np.float32, np.complex64) for a in arrays) else 1e-10
    np.testing.assert_allclose(np.asarray(got_numpy), expected, rtol=tol, atol=tol * np.abs(expected).max())
    np.testing.assert_allclose(got_torch.numpy(), expected, rtol=tol, atol=tol * np.abs(expected).max())


def test_autotune_times_candidates_once_per_bucket_and_picks_the_fastest():
    w = tn.random_ttm((2, 3, 2), (3, 2, 2), 2, seed=0)
    assert contract.autotune(True) is False
    tn.linear(np.ones((3, 12)), w)
    plan = contract.plan_linear((3, 12), w.cores, dtype=w.dtype, device="cpu", backend="numpy")
    assert plan.autotuned
    assert all(
        c.measured is not None and c.measured > 0 for c in plan.forward_candidates + plan.backward_candidates
    )
    assert plan.forward.measured == min(c.measured for c in plan.forward_candidates)
    assert plan.backward.measured == min(c.measured for c in plan.backward_candidates)
    assert "measured" in repr(plan)
    misses = contract.cache_info().misses
    tn.linear(np.ones((4, 12)), w)  # same bucket: the tuned plan is reused, nothing is re-timed
    again = contract.plan_linear((4, 12), w.cores, dtype=w.dtype, device="cpu", backend="numpy")
    assert again is plan and contract.cache_info().misses == misses
    assert contract.autotune(False) is True and contract.autotune() is False


def test_plan_linear_rejects_non_ttm_cores():
    with pytest.raises(ValueError, match="TTM cores are 4-D"):
        contract.plan_linear((2, 6), [(1, 6, 1)])
