"""The TT adapter's folded product (tensornet/nn/_adapter_product.py) against a dense reference.

The reference is written here with plain torch operations: the update's dense matrix by an einsum over
its cores, ``W + s * delta.W`` in the base layer's stored layout, the base layer's product; autograd
differentiates it. Values, gradients (input, cores, bias and base weight when they train), double
backward, ``torch.func`` and forward-mode AD must agree with it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensornet as tn

nn = torch.nn


def conv1d_or_skip():
    transformers = pytest.importorskip("transformers")
    return transformers.pytorch_utils.Conv1D


def dense_update(cores) -> torch.Tensor:
    """``(out, in)`` from TTM cores ``(r, m, n, r')`` by a plain einsum chain (differentiable)."""
    acc = cores[0][0]  # (m, n, r)
    for core in cores[1:]:
        rows, cols = acc.shape[0] * core.shape[1], acc.shape[1] * core.shape[2]
        acc = torch.einsum("abr,rmns->ambns", acc, core).reshape(rows, cols, core.shape[3])
    return acc[..., 0]


def reference(adapter, x: torch.Tensor) -> torch.Tensor:
    """The adapter's output as a dense layer: ``x (W + s delta.W)^T + b`` in the base layer's layout."""
    base = adapter.base
    update = adapter.scaling * dense_update(adapter.delta.cores)
    if isinstance(base, nn.Linear):
        return nn.functional.linear(x, base.weight + update, base.bias)
    return x @ (base.weight + update.T) + base.bias  # Conv1D stores (in, out)


def adapted_layer(in_f, out_f, rank, ncores, conv1d, seed, dtype=torch.float64):
    torch.manual_seed(seed)
    layer = conv1d_or_skip()(out_f, in_f) if conv1d else nn.Linear(in_f, out_f)
    model = nn.Sequential(layer.to(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tn.nn.RankClipWarning)  # small layers clip the rank
        tn.nn.adapt(model, ["0"], rank=rank, ncores=ncores, alpha=6.0)
    with torch.no_grad():  # a nonzero update: every core gets a gradient
        model[0].delta.packed_cores.normal_()
    return model[0]


def grads_of(fn, inputs, cotangent):
    return torch.autograd.grad(fn(), inputs, cotangent)


@settings(deadline=None)
@given(
    in_f=st.sampled_from([4, 6, 12, 16]),
    out_f=st.sampled_from([3, 8, 10, 12]),
    rank=st.integers(1, 4),
    ncores=st.integers(1, 4),
    conv1d=st.booleans(),
    train_base=st.booleans(),
    lead=st.sampled_from([(5,), (2, 3), (1, 1, 4)]),
    seed=st.integers(0, 1000),
)
def test_values_and_gradients_match_the_dense_reference(
    in_f, out_f, rank, ncores, conv1d, train_base, lead, seed
):
    adapter = adapted_layer(in_f, out_f, rank, ncores, conv1d, seed)
    adapter.base.requires_grad_(train_base)  # gradients of the base weight and bias too, where asked
    x = torch.randn(*lead, in_f, dtype=torch.float64, requires_grad=True)
    inputs = [x, adapter.delta.packed_cores] + (list(adapter.base.parameters()) if train_base else [])
    y = adapter(x)
    expected = reference(adapter, x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    cotangent = torch.randn_like(expected)
    got = grads_of(lambda: adapter(x), inputs, cotangent)
    want = grads_of(lambda: reference(adapter, x), inputs, cotangent)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize(("in_f", "out_f", "rank", "ncores"), [(24, 30, 3, 3), (256, 768, 4, 5)])
def test_float32_gradients_match_the_reference_to_rounding(conv1d, in_f, out_f, rank, ncores):
    adapter = adapted_layer(in_f, out_f, rank, ncores, conv1d, 0, dtype=torch.float32)
    x = torch.randn(7, in_f, requires_grad=True)
    inputs = [x, adapter.delta.packed_cores]
    cotangent = torch.randn(7, out_f)
    got = grads_of(lambda: adapter(x), inputs, cotangent)
    want = grads_of(lambda: reference(adapter, x), inputs, cotangent)
    for a, b in zip(got, want):
        # float32 sums in another order (halves, then dW projected, vs the einsum chain's backward)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("conv1d", [False, True])
def test_double_backward_matches_the_reference(conv1d):
    adapter = adapted_layer(12, 8, 2, 3, conv1d, 1)
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    params = [x, adapter.delta.packed_cores]

    def penalty(fn):  # a gradient penalty: differentiates the gradients again
        grads = torch.autograd.grad(fn().square().sum(), params, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), params)

    for a, b in zip(penalty(lambda: adapter(x)), penalty(lambda: reference(adapter, x))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# torch.func.jvp's first call imports torch's jvp decompositions, which use the deprecated torch.jit.script
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("conv1d", [False, True])
def test_torch_func_and_forward_ad_match_the_reference(conv1d):
    adapter = adapted_layer(12, 8, 2, 3, conv1d, 2)
    x = torch.randn(3, 12, dtype=torch.float64)
    packed = adapter.delta.packed_cores
    params = {"delta.packed_cores": packed.detach()}

    def loss(p):
        return torch.func.functional_call(adapter, p, (x,)).square().sum()

    got = torch.func.grad(loss)(params)["delta.packed_cores"]
    want = torch.autograd.grad(reference(adapter, x).square().sum(), packed)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    tangent = torch.randn_like(x)
    _, jvp = torch.func.jvp(adapter, (x,), (tangent,))
    _, want_jvp = torch.func.jvp(lambda v: reference(adapter, v), (x,), (tangent,))
    torch.testing.assert_close(jvp, want_jvp, rtol=1e-10, atol=1e-10)
    batched = torch.func.vmap(adapter)(x.unsqueeze(1))
    torch.testing.assert_close(batched.squeeze(1), reference(adapter, x).detach(), rtol=1e-12, atol=1e-12)
    from torch.autograd import forward_ad

    with forward_ad.dual_level():
        dual = adapter(forward_ad.make_dual(x, tangent))
        torch.testing.assert_close(forward_ad.unpack_dual(dual).tangent, want_jvp, rtol=1e-10, atol=1e-10)


def test_the_fold_is_one_autograd_node_saving_x_the_folded_weight_and_small_tensors():
    adapter = adapted_layer(24, 30, 3, 3, False, 3, dtype=torch.float32)
    x = torch.randn(64, 24, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = adapter(x)
    # one node between y and the inputs (the plain fold was a chain of einsum, mul, add and linear nodes)
    assert "FoldedProduct" in type(y.grad_fn).__name__
    big = [t for t in saved if t.numel() >= 24 * 30 and t.data_ptr() != x.data_ptr()]
    base = adapter.base.weight
    # x, the base weight (a parameter, no memory) and W_f, which dx needs: as a dense layer saves
    assert len(big) == 2 and any(t.data_ptr() == base.data_ptr() for t in big)
    y.sum().backward()
    assert adapter.delta.packed_cores.grad is not None and base.grad is None  # the base stays frozen
