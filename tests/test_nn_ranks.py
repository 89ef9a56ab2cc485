"""truncate and grow: rounding of trained TT layers in place, with the optimizer's state carried over."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensornet as tn
from tensornet.nn import TiedTTHead, TTEmbedding, TTMLinear
from tensornet.nn._ranks import _apply_maps, _right_factors, _round

nn = torch.nn


def model(seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        TTMLinear(24, 30, rank=6, in_shape=(2, 3, 4), out_shape=(5, 3, 2), init=0.5, dtype=dtype),
        nn.Tanh(),
        TTMLinear(30, 24, rank=(4, 5), in_shape=(5, 3, 2), out_shape=(2, 3, 4), init=0.5, dtype=dtype),
    )


def dense(layer) -> torch.Tensor:
    return tn.full(layer.weight).detach()


def train(m, x, optimizer, steps=3):
    for _ in range(steps):
        optimizer.zero_grad()
        m(x).square().mean().backward()
        optimizer.step()


@settings(deadline=None, max_examples=20)
@given(
    rank=st.integers(1, 6),
    eps=st.sampled_from([0.0, 1e-3, 0.1, 0.3, 0.7]),
    seed=st.integers(0, 50),
    scale=st.sampled_from([1e-200, 1.0, 1e200]),
)
def test_truncate_error_is_the_reported_one_and_within_eps(rank, eps, seed, scale):
    torch.manual_seed(seed)
    layer = TTMLinear(
        24,
        30,
        rank=rank,
        in_shape=(2, 3, 4),
        out_shape=(5, 3, 2),
        init=0.5,
        dtype=torch.float64,
        clip_rank=False,
    )
    with torch.no_grad():
        layer.cores[0].mul_(scale)  # guarantees at every finite scale
    before = dense(layer)
    x = torch.randn(7, 24, dtype=torch.float64)
    report = tn.nn.truncate(layer, eps=eps)
    (entry,) = report.layers
    after = dense(layer)
    error = float(
        torch.linalg.vector_norm((after - before) / scale) / torch.linalg.vector_norm(before / scale)
    )
    assert error <= eps * (1 + 1e-9) + 1e-12
    assert math.isclose(entry.error, error, rel_tol=1e-6, abs_tol=1e-12)
    assert entry.params_after == layer.nparams <= entry.params_before
    assert layer.ranks == entry.ranks and all(r <= max(rank, 1) for r in layer.ranks)
    assert layer(x).shape == (7, 30)


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 50), eps=st.sampled_from([0.0, 0.05, 0.5]))
def test_new_cores_are_the_maps_applied_to_the_old_ones(seed, eps):
    torch.manual_seed(seed)
    layer = TTMLinear(24, 30, rank=5, in_shape=(2, 3, 4), out_shape=(5, 3, 2), init=1.0, dtype=torch.float64)
    cores = [c.detach() for c in layer.cores]
    new, maps, _ = _round(cores, _right_factors(cores), eps)
    flat = torch.cat([c.reshape(-1) for c in cores])
    mapped = _apply_maps(flat, layer.core_shapes, maps, squared=False)
    np.testing.assert_allclose(mapped, torch.cat([c.reshape(-1) for c in new]), atol=1e-10)
    squared = _apply_maps(flat.square(), layer.core_shapes, maps, squared=True)
    assert (squared >= 0).all()


def test_budget_keeps_a_fraction_and_the_function_within_the_reported_error():
    m = model()
    x = torch.randn(9, 24, dtype=torch.float64)
    weights = [dense(m[0]), dense(m[2])]
    before = m[0].nparams + m[2].nparams
    report = tn.nn.truncate(m, budget=0.5)
    assert report.params_before == before and report.params_after == m[0].nparams + m[2].nparams
    assert report.params_after <= 0.5 * before and report.ratio <= 0.5
    for w, layer, entry in zip(weights, (m[0], m[2]), report.layers):
        error = float(torch.linalg.vector_norm(dense(layer) - w) / torch.linalg.vector_norm(w))
        assert math.isclose(entry.error, error, rel_tol=1e-6)
        assert error <= report.eps * (1 + 1e-9)
    assert [e.name for e in report.layers] == ["0", "2"]
    assert m(x).shape == (9, 24)


def test_optimizer_state_moves_to_the_new_parameters_and_training_continues():
    m = model(dtype=torch.float32)
    x = torch.randn(16, 24)
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-3)
    train(m, x, optimizer)
    old = [weakref.ref(m[0].packed_cores), weakref.ref(m[2].packed_cores)]
    steps = optimizer.state[m[0].packed_cores]["step"].clone()
    tn.nn.truncate(m, budget=0.6, optimizer=optimizer)
    new = [m[0].packed_cores, m[2].packed_cores]
    gc.collect()
    assert all(ref() is None for ref in old)  # no stale references anywhere (optimizer included)
    assert all(any(p is q for q in optimizer.param_groups[0]["params"]) for p in new)
    assert len(optimizer.param_groups[0]["params"]) == len(list(m.parameters()))
    for p in new:
        state = optimizer.state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape
        assert (state["exp_avg_sq"] >= 0).all() and torch.equal(state["step"], steps)
    values = [p.detach().clone() for p in new]
    train(m, x, optimizer, steps=1)
    assert all(not torch.equal(p, v) for p, v in zip(new, values))  # a step changes the new cores
    assert all(p is q for p, q in zip(new, (m[0].packed_cores, m[2].packed_cores)))
    assert optimizer.state[new[0]]["step"] == steps + 1


def test_sgd_momentum_is_carried_and_unknown_state_is_refused_before_any_change():
    m = model()
    x = torch.randn(16, 24, dtype=torch.float64)
    sgd = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    train(m, x, sgd)
    tn.nn.truncate(m, eps=0.2, optimizer=sgd)
    assert sgd.state[m[0].packed_cores]["momentum_buffer"].shape == m[0].packed_cores.shape
    adagrad = torch.optim.Adagrad(m.parameters(), lr=1e-3)
    train(m, x, adagrad, steps=1)
    packed, ranks = m[0].packed_cores, m[0].ranks
    with pytest.raises(TypeError, match=r"truncate: the optimizer's state 'sum' of 0"):
        tn.nn.truncate(m, eps=0.5, optimizer=adagrad)
    assert m[0].packed_cores is packed and m[0].ranks == ranks


def test_eps_zero_keeps_the_function_and_adam_steps_nearly_equal():
    # eps=0 changes only the gauge (left-orthonormal cores): the function and, to first order, the next
    # Adam step of W are kept, which a restart of the moments would not do
    m = model()
    x = torch.randn(16, 24, dtype=torch.float64)
    optimizer = torch.optim.Adam(m.parameters(), lr=1e-4)
    train(m, x, optimizer, steps=5)
    y = m(x)
    tn.nn.truncate(m, eps=0.0, optimizer=optimizer)
    np.testing.assert_allclose(m(x).detach(), y.detach(), rtol=1e-10, atol=1e-12)


def test_grow_leaves_outputs_unchanged_and_the_new_directions_train():
    m = model()
    x = torch.randn(9, 24, dtype=torch.float64)
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-3)
    train(m, x, optimizer)
    tn.nn.truncate(m, budget=0.4, optimizer=optimizer)
    y = m(x)
    ranks = m[0].ranks
    report = tn.nn.grow(m, 6, optimizer=optimizer)
    assert m[0].ranks == (1, 6, 6, 1) and ranks != m[0].ranks
    assert all(e.error == 0.0 for e in report.layers) and report.params_after > report.params_before
    np.testing.assert_allclose(m(x).detach(), y.detach(), rtol=1e-12, atol=1e-12)
    m(x).square().sum().backward()
    grads = m[0].core_grads
    assert grads[1][ranks[1] :].abs().sum() > 0  # the zero left slices of the next core get a gradient
    state = optimizer.state[m[0].packed_cores]["exp_avg"]
    assert state.shape == m[0].packed_cores.shape
    train(m, x, optimizer, steps=1)
    assert m[0].cores[1][ranks[1] :].abs().sum() > 0


def test_adapters_and_tied_embeddings_are_truncated_too():
    torch.manual_seed(0)
    embedding = TTEmbedding(
        60, 24, rank=4, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4), init=1.0, dtype=torch.float64
    )
    head = TiedTTHead(embedding)
    m = nn.Sequential(embedding, nn.Linear(24, 24, dtype=torch.float64), head)
    tn.nn.adapt(m, ["1"], rank=3)
    with torch.no_grad():
        m[1].delta.packed_cores.normal_()
    ids = torch.randint(0, 60, (3, 5))
    report = tn.nn.truncate(m, eps=0.3)
    assert {e.kind for e in report.layers} == {"TTEmbedding", "TTMLinear"}
    assert m(ids).shape == (3, 5, 60)  # the head reads the embedding's new cores


def test_truncate_regroups_a_materialized_model():
    m = tn.nn.materialize(model(dtype=torch.float32))
    x = torch.randn(64, 24)
    tn.nn.truncate(m, budget=0.7)
    y = m(x)
    y.square().sum().backward()
    assert m[0].packed_cores.grad is not None and m[0].packed_cores.grad.shape == m[0].packed_cores.shape
    group = m[0].__dict__.get("_weight_group")
    assert group is None or group[0].core_shapes == m[0].core_shapes


def test_bad_arguments_raise_and_change_nothing():
    m = model()
    packed = m[0].packed_cores
    for budget in (0, 0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"truncate: budget must be in \(0, 1\]"):
            tn.nn.truncate(m, budget=budget)
    with pytest.raises(TypeError, match="budget must be a number"):
        tn.nn.truncate(m, budget="half")
    with pytest.raises(ValueError, match="exactly one of eps"):
        tn.nn.truncate(m)
    with pytest.raises(ValueError, match="exactly one of eps"):
        tn.nn.truncate(m, eps=0.1, budget=0.5)
    with pytest.raises(ValueError, match="eps must be finite"):
        tn.nn.truncate(m, eps=-1.0)
    with pytest.raises(ValueError, match="below what rank 1 everywhere keeps"):
        tn.nn.truncate(m, budget=0.01)
    with pytest.raises(ValueError, match="no TT layers"):
        tn.nn.truncate(nn.Linear(3, 3), eps=0.1)
    with pytest.raises(ValueError, match="grow: rank must be >= 1"):
        tn.nn.grow(m, 0)
    with pytest.raises(TypeError, match="optimizer must be"):
        tn.nn.truncate(m, eps=0.1, optimizer=[1])
    assert m[0].packed_cores is packed


def test_new_cores_keep_the_old_cores_norms():
    m = model()
    norms = [float(torch.linalg.vector_norm(c.detach())) for c in m[0].cores]
    tn.nn.truncate(m, budget=0.5)
    after = [float(torch.linalg.vector_norm(c.detach())) for c in m[0].cores]
    # all but the last, which holds what the scalars (product 1) leave
    np.testing.assert_allclose(after[:-1], norms[:-1], rtol=1e-10)


def test_training_goes_on_smoothly_after_a_lossless_truncation():
    torch.manual_seed(0)
    m = nn.Sequential(
        TTMLinear(64, 128, rank=16, init="glorot"), nn.GELU(), TTMLinear(128, 64, rank=16, init="glorot")
    )
    x = torch.randn(256, 64)
    y = torch.tanh(x @ torch.randn(64, 64) / 8)

    def loss():
        return (m(x) - y).square().mean()

    def value():
        with torch.no_grad():
            return float(loss())

    optimizer = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(200):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    before = value()
    tn.nn.truncate(m, eps=0.0, optimizer=optimizer)  # a change of gauge only
    assert math.isclose(value(), before, rel_tol=1e-5)
    values = []
    for _ in range(5):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
        values.append(value())
    # without the new cores rescaled to the old norms, the loss rose 10% within these steps (Adam's
    # per-entry steps were relatively larger on the orthonormal cores)
    assert max(values) < before * 1.01 and values[-1] < before


@pytest.mark.parametrize("change", ["truncate", "grow"])
def test_truncate_and_grow_refuse_merged_adapters_and_change_nothing(change):
    torch.manual_seed(0)
    m = tn.nn.adapt(nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16)), ["0", "2"], rank=3)
    with torch.no_grad():
        for _, adapter in tn.nn.adapters(m):
            adapter.delta.packed_cores.normal_()
    weights = [a.base.weight.clone() for _, a in tn.nn.adapters(m)]
    tn.nn.merge(m)
    packed = [a.delta.packed_cores for _, a in tn.nn.adapters(m)]
    with pytest.raises(ValueError, match=rf"{change}: the adapter 0 is merged; unmerge\(model\) first"):
        if change == "truncate":
            tn.nn.truncate(m, eps=0.5)
        else:
            tn.nn.grow(m, 6)
    assert all(a.delta.packed_cores is p for (_, a), p in zip(tn.nn.adapters(m), packed))
    tn.nn.unmerge(m)  # still possible: nothing was changed
    for (_, adapter), w in zip(tn.nn.adapters(m), weights):  # the base weights back (float32 rounding)
        np.testing.assert_allclose(adapter.base.weight.detach(), w, rtol=0, atol=1e-5)
    tn.nn.truncate(m, eps=0.5) if change == "truncate" else tn.nn.grow(m, 6)  # unmerged: allowed


def test_grow_to_a_rank_no_bond_is_below_is_an_error_and_changes_nothing():
    m = model()
    ranks = [layer.ranks for layer in (m[0], m[2])]
    packed = [m[0].packed_cores, m[2].packed_cores]
    low = min(min(r[1:-1]) for r in ranks)  # every bond at or above it
    assert low > 1
    for rank in (1, low):
        with pytest.raises(ValueError, match=rf"grow: no bond of any TT layer can grow to rank {rank}"):
            tn.nn.grow(m, rank)
    assert m[0].packed_cores is packed[0] and m[2].packed_cores is packed[1]
    capped = tn.nn.grow(m, 10_000)  # every bond to its useful maximum
    assert capped.params_after > capped.params_before
    with pytest.raises(ValueError, match="or at its useful maximum"):
        tn.nn.grow(m, 10_000)


@pytest.mark.parametrize("change", ["truncate", "grow"])
def test_a_submodule_of_a_materialized_model_keeps_its_layers_grouped(change):
    # the layers left their materialize group and the model given (a submodule) was never grouped again
    torch.manual_seed(0)
    inner = nn.Sequential(*(TTMLinear(16, 16, rank=4, in_shape=(4, 4), out_shape=(4, 4)) for _ in range(2)))
    outer = nn.Sequential(inner, TTMLinear(16, 16, rank=4, in_shape=(4, 4), out_shape=(4, 4)))
    tn.nn.materialize(outer)
    x = torch.randn(3, 16)
    if change == "truncate":
        tn.nn.truncate(inner, budget=0.5)
    else:
        tn.nn.grow(inner, 6)
    groups = [layer.__dict__.get("_weight_group") for layer in inner]
    assert all(entry is not None for entry in groups)
    assert groups[0][0] is groups[1][0] and groups[0][0].core_shapes == inner[0].core_shapes
    assert (
        outer[1].__dict__["_weight_group"][0].core_shapes == outer[1].core_shapes
    )  # the other keeps its own
    y = outer(x)
    y.sum().backward()  # through the group's rebuilt weights
    assert all(layer.packed_cores.grad is not None for layer in (*inner, outer[1]))
    reference = x
    for layer in (*inner, outer[1]):
        reference = torch.nn.functional.linear(reference, layer.to_linear().weight, layer.bias)
    torch.testing.assert_close(y, reference)
