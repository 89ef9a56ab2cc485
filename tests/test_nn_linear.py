"""TTMLinear: equivalence with nn.Linear on the rebuilt weight, conversion, init statistics, bad arguments."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from conftest import as_numpy as _as_numpy
from conftest import dense_ttm, gpu, saved_storage_bytes
from hypothesis import given
from hypothesis import strategies as st

nn = torch.nn

import tensornet as tn  # noqa: E402
from tensornet.nn import RankClipWarning, TTMLinear  # noqa: E402
from tensornet.testing import strategies as tns  # noqa: E402


def as_numpy(array):
    """conftest's as_numpy, also for bfloat16 tensors (numpy has no bfloat16)."""
    if isinstance(array, torch.Tensor) and array.dtype == torch.bfloat16:
        array = array.detach().float()
    return _as_numpy(array)


SHAPES = [
    # (in_features, out_features, in_shape, out_shape, rank)
    (24, 30, (2, 3, 4), (5, 3, 2), 3),
    (12, 8, None, None, 2),
    (16, 12, (4, 4, 1), (2, 2, 3), (3, 2)),  # a 1 in a shape, per-bond ranks
    (6, 10, (6,), (10,), 1),  # a single core (no bonds)
    (96, 72, (8, 12, 1), (2, 6, 6), 5),
]


def make(in_f, out_f, in_shape, out_shape, rank, *, bias=True, dtype=torch.float64, init=0.3):
    torch.manual_seed(0)
    layer = TTMLinear(
        in_f, out_f, rank=rank, in_shape=in_shape, out_shape=out_shape, bias=bias, dtype=dtype, init=init
    )
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    return layer


def dense_reference(layer):
    """``(W, b)`` as leaf tensors, ``W`` rebuilt entry by entry (shares no code with tensornet)."""
    weight = torch.tensor(dense_ttm(layer.weight), dtype=layer.cores[0].dtype)
    bias = None if layer.bias is None else layer.bias.detach().clone()
    return weight, bias


@pytest.mark.parametrize(("in_f", "out_f", "in_shape", "out_shape", "rank"), SHAPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
def test_forward_equals_nn_linear_on_the_rebuilt_weight(in_f, out_f, in_shape, out_shape, rank, bias, lead):
    layer = make(in_f, out_f, in_shape, out_shape, rank, bias=bias)
    weight, b = dense_reference(layer)
    x = torch.randn(*lead, in_f, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (*lead, out_f) and y.dtype == torch.float64
    np.testing.assert_allclose(
        as_numpy(y), as_numpy(nn.functional.linear(x, weight, b)), rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(as_numpy(layer.to_linear()(x)), as_numpy(y), rtol=1e-10, atol=1e-12)


@given(shapes=tns.ttm_shapes(max_ncores=3, max_size=4), data=st.data(), bias=st.booleans())
def test_property_forward_equals_the_rebuilt_weight(shapes, data, bias):
    out_shape, in_shape = shapes
    ranks = data.draw(tns.bond_ranks([m * n for m, n in zip(out_shape, in_shape)], max_rank=3))
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2).map(tuple))
    in_f, out_f = math.prod(in_shape), math.prod(out_shape)
    layer = TTMLinear(
        in_f, out_f, rank=ranks, in_shape=in_shape, out_shape=out_shape, bias=bias, dtype=torch.float64
    )
    assert layer.ranks == (1, *ranks, 1) and layer.weight.shape == (out_f, in_f)
    weight, b = dense_reference(layer)
    x = torch.randn(*lead, in_f, dtype=torch.float64)
    with torch.no_grad():
        y = layer(x)
        np.testing.assert_allclose(
            as_numpy(y), as_numpy(nn.functional.linear(x, weight, b)), rtol=1e-10, atol=1e-12
        )
        np.testing.assert_allclose(
            as_numpy(layer.to_linear().weight), as_numpy(weight), rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize(("in_f", "out_f", "in_shape", "out_shape", "rank"), SHAPES)
def test_gradients_equal_autograd_through_the_dense_weight(in_f, out_f, in_shape, out_shape, rank):
    layer = make(in_f, out_f, in_shape, out_shape, rank)
    x = torch.randn(4, 3, in_f, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(4, 3, out_f, dtype=torch.float64)
    layer(x).backward(grad_y)
    # Reference: the same cores, rebuilt into W by plain autograd, then F.linear.
    cores = [c.detach().clone().requires_grad_(True) for c in layer.cores]
    bias = layer.bias.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    weight = cores[0].reshape(cores[0].shape[1:])  # (m, n, r)
    for core in cores[1:]:
        m, n = weight.shape[0] * core.shape[1], weight.shape[1] * core.shape[2]
        weight = torch.einsum("MNr,rmns->MmNns", weight, core).reshape(m, n, core.shape[3])
    nn.functional.linear(x_ref, weight[..., 0], bias).backward(grad_y)
    np.testing.assert_allclose(as_numpy(x.grad), as_numpy(x_ref.grad), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(as_numpy(layer.bias.grad), as_numpy(bias.grad), rtol=1e-10, atol=1e-12)
    for k, (grad, ref) in enumerate(zip(layer.core_grads, cores)):
        scale = float(ref.grad.abs().max())
        np.testing.assert_allclose(
            as_numpy(grad), as_numpy(ref.grad), rtol=0, atol=1e-10 * scale, err_msg=f"core {k}"
        )


def test_gradcheck_small_layer():
    layer = make(12, 6, (2, 3, 2), (3, 1, 2), 2)
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    params = [x, *layer.cores, layer.bias]

    def f(x, *rest):
        return tn.linear(x, tn.TTM(list(rest[:-1])), rest[-1])

    assert torch.autograd.gradcheck(f, params)


def test_weight_is_a_differentiable_ttm_with_the_layer_layout():
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 3)
    w = layer.weight
    assert isinstance(w, tn.TTM)
    assert w.shape == (30, 24) and w.row_shape == (5, 3, 2) and w.col_shape == (2, 3, 4)
    # the weight's cores are views of the layer's one parameter
    assert w.cores[0].data_ptr() == layer.packed_cores.data_ptr() and layer.ranks == w.ranks == (1, 3, 3, 1)
    tn.norm(w).backward()
    assert layer.packed_cores.grad is not None


def test_extra_repr_shows_shapes_ranks_params_and_compression():
    torch.manual_seed(0)
    layer = TTMLinear(768, 3072, rank=16, in_shape=(8, 8, 12), out_shape=(12, 16, 16), bias=False)
    text = repr(layer)
    for part in (
        "in_shape=(8, 8, 12)",
        "out_shape=(12, 16, 16)",
        "ranks=(1, 16, 16, 1)",
        "params=37,376",
        "dense 2,359,296",
        "compression 63.1x",
        "bias=False",
    ):
        assert part in text, (part, text)
    assert layer.nparams == 37376 and sum(p.numel() for p in layer.parameters()) == 37376


def test_shapes_default_to_balanced_factorisations_with_ncores():
    torch.manual_seed(0)
    layer = TTMLinear(768, 3072, rank=8)
    assert layer.in_shape == tn.shapes.factorize(768, 3) and layer.out_shape == tn.shapes.factorize(3072, 3)
    layer = TTMLinear(768, 3072, rank=8, ncores=4)
    assert len(layer.cores) == 4 and math.prod(layer.in_shape) == 768
    layer = TTMLinear(768, 3072, rank=8, in_shape=(8, 8, 12, 1))  # the other shape follows the given length
    assert len(layer.out_shape) == 4 and math.prod(layer.out_shape) == 3072


def test_paper_uneven_shapes_and_rank_clipping():
    torch.manual_seed(0)
    with pytest.warns(RankClipWarning, match=r"bond 3: 64 -> 6"):
        layer = TTMLinear(768, 3072, rank=64, in_shape=(8, 8, 12, 1), out_shape=(8, 8, 8, 6), bias=False)
    assert layer.ranks == (1, 64, 64, 6, 1)
    # The paper keeps rank 64 next to the (1, 6) core: 659,840 parameters per layer (its Table counts).
    kept = TTMLinear(
        768, 3072, rank=64, in_shape=(8, 8, 12, 1), out_shape=(8, 8, 8, 6), bias=False, clip_rank=False
    )
    assert kept.ranks == (1, 64, 64, 64, 1) and kept.nparams == 659_840
    x = torch.randn(5, 768)
    np.testing.assert_allclose(as_numpy(kept(x)), as_numpy(kept.to_linear()(x)), rtol=1e-4, atol=1e-5)


def test_state_dict_round_trip_and_torch_save():
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), (3, 4))
    other = TTMLinear(24, 30, rank=(3, 4), in_shape=(2, 3, 4), out_shape=(5, 3, 2), dtype=torch.float64)
    # the packed cores, the bias and the core shapes (checked on load)
    assert set(layer.state_dict()) == {"packed_cores", "bias", "_extra_state"}
    other.load_state_dict(layer.state_dict())
    x = torch.randn(7, 24, dtype=torch.float64)
    assert torch.equal(other(x), layer(x))
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(other(x), layer(x))
    wrong = TTMLinear(24, 30, rank=2, in_shape=(2, 3, 4), out_shape=(5, 3, 2), dtype=torch.float64)
    with pytest.raises(
        RuntimeError, match=r"factorisation mismatch .* rank=\(1, 3, 4, 1\)\) but .* rank=\(1, 2, 2, 1\)"
    ):
        wrong.load_state_dict(layer.state_dict())
    old_format = {k: v for k, v in layer.state_dict().items() if k != "_extra_state"}
    with pytest.raises(RuntimeError, match="size mismatch"):  # no recorded shapes: torch's size check
        wrong.load_state_dict(old_format)
    # a state dict with one tensor per core (tensornet before the cores were packed) still loads
    old = {f"cores.{k}": core.detach().clone() for k, core in enumerate(layer.cores)} | {"bias": layer.bias}
    fresh = TTMLinear(24, 30, rank=(3, 4), in_shape=(2, 3, 4), out_shape=(5, 3, 2), dtype=torch.float64)
    fresh.load_state_dict(old)
    assert torch.equal(fresh(x), layer(x))
    old["cores.1"] = old["cores.1"][:, :1]
    with pytest.raises(
        RuntimeError, match=r"cores\.1 has shape \(3, 1, 3, 4\) but this layer's core has shape"
    ):
        fresh.load_state_dict(old)


def test_a_state_of_another_factorisation_is_refused_naming_both():
    # the same number of packed entries factorised another way loaded ("All keys matched") and computed
    # another function (outputs differed by ~1)
    torch.manual_seed(0)
    saved = TTMLinear(128, 512, rank=16, in_shape=(4, 4, 8), out_shape=(8, 8, 8))
    layer = TTMLinear(128, 512, rank=16, in_shape=(8, 4, 4), out_shape=(8, 8, 8))
    assert saved.nparams == layer.nparams
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    message = (
        r"factorisation mismatch for packed_cores: .*\(out_shape=\(8, 8, 8\), in_shape=\(4, 4, 8\), "
        r"rank=\(1, 16, 16, 1\)\) but this TTMLinear's have .*\(out_shape=\(8, 8, 8\), in_shape=\(8, 4, 4\), "
        r"rank=\(1, 16, 16, 1\)\); build the layer with out_shape=\(8, 8, 8\), in_shape=\(4, 4, 8\)"
    )
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=message):
            layer.load_state_dict(saved.state_dict(), strict=strict)
    assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())  # the cores are untouched
    # inside a model, after a torch.save / torch.load(weights_only=True) round trip
    buffer = io.BytesIO()
    torch.save(nn.Sequential(nn.Tanh(), saved).state_dict(), buffer)
    buffer.seek(0)
    with pytest.raises(RuntimeError, match=r"factorisation mismatch for 1\.packed_cores"):
        nn.Sequential(nn.Tanh(), layer).load_state_dict(torch.load(buffer, weights_only=True))
    state = saved.state_dict() | {"_extra_state": torch.ones(3)}
    with pytest.raises(RuntimeError, match=r"_extra_state should be the int64 \(cores, 4\) tensor"):
        layer.load_state_dict(state)


@pytest.mark.parametrize("route", ["in memory", "torch.save", "safetensors", "materialized", "no shapes"])
@pytest.mark.parametrize("strict", [True, False])
def test_a_state_of_the_same_factorisation_loads_every_way(route, strict, tmp_path):
    torch.manual_seed(0)
    saved = nn.Sequential(make(24, 30, (2, 3, 4), (5, 3, 2), (3, 4)), nn.Tanh())
    model = nn.Sequential(make(24, 30, (2, 3, 4), (5, 3, 2), (3, 4)), nn.Tanh())
    with torch.no_grad():
        model[0].packed_cores.normal_()
    state = saved.state_dict()
    if route == "torch.save":
        torch.save(state, tmp_path / "state.pt")
        state = torch.load(tmp_path / "state.pt", weights_only=True)
    elif route == "safetensors":
        safetensors = pytest.importorskip("safetensors.torch", reason="safetensors not installed")
        safetensors.save_file(state, tmp_path / "state.safetensors")
        state = safetensors.load_file(tmp_path / "state.safetensors")
    elif route == "materialized":
        tn.nn.materialize(model)
    elif route == "no shapes":  # a state saved before the layers recorded their core shapes
        state = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    x = torch.randn(600, 24, dtype=torch.float64)
    model(x)  # a materialized model holds its rebuilt W: the load must be seen
    result = model.load_state_dict(state, strict=strict)
    assert result.missing_keys == [] and result.unexpected_keys == []
    torch.testing.assert_close(model(x), saved(x), rtol=1e-12, atol=1e-12)


def test_to_dtype_and_optimizer_step():
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 3, dtype=torch.float32)
    x = torch.randn(4, 24)
    y32 = layer(x)
    layer64 = layer.to(torch.float64)
    assert all(c.dtype == torch.float64 for c in layer64.cores) and layer64.weight.dtype == torch.float64
    np.testing.assert_allclose(as_numpy(layer64(x.double())), as_numpy(y32), rtol=1e-5, atol=1e-5)
    layer_bf16 = make(24, 30, (2, 3, 4), (5, 3, 2), 3, dtype=torch.float32).to(torch.bfloat16)
    y16 = layer_bf16(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits (unit roundoff 2^-9 = 0.002); weights, inputs and ~24-term sums each round,
    # so 5% of the output scale is a bound, not a loosening of a float32 check
    np.testing.assert_allclose(
        as_numpy(y16), as_numpy(y32), rtol=0, atol=0.05 * float(y32.detach().abs().max())
    )
    with pytest.raises(TypeError, match="float32"):
        layer64(x)  # float32 input to a float64 layer
    optimizer = torch.optim.SGD(layer64.parameters(), lr=0.1)
    before = [c.detach().clone() for c in layer64.cores]
    layer64(x.double()).pow(2).sum().backward()
    optimizer.step()
    assert all(not torch.equal(b, c) for b, c in zip(before, layer64.cores))


def test_autocast_bf16_on_cpu_matches_nn_linear_behaviour():
    layer = make(96, 72, (8, 12, 1), (2, 6, 6), 5, dtype=torch.float32)
    dense = layer.to_linear()
    x = torch.randn(6, 96, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        y_dense = dense(x)
    assert y.dtype == y_dense.dtype == torch.bfloat16
    scale = float(y_dense.detach().float().abs().max())
    # both run in bf16 (unit roundoff 2^-9) but round different intermediates: 3% of the output scale
    np.testing.assert_allclose(as_numpy(y), as_numpy(y_dense), rtol=0, atol=0.03 * scale)
    y.float().sum().backward()
    assert layer.packed_cores.grad is not None and layer.packed_cores.grad.dtype == torch.float32
    assert x.grad.dtype == torch.float32


def test_dense_weight_cache_matches_uncached_and_is_reused():
    layer = make(96, 72, (8, 12, 1), (2, 6, 6), 5)
    weight, bias = dense_reference(layer)
    x = torch.randn(3, 4, 96, dtype=torch.float64)
    layer.cache_dense_weight()
    with torch.no_grad():
        y = layer(x)
        cached = layer._dense_cache.entries[torch.float64][1]
        y_again = layer(x[:1])
    np.testing.assert_allclose(as_numpy(y), as_numpy(x @ weight.T + bias), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(as_numpy(y_again), as_numpy(y[:1]), rtol=1e-12, atol=1e-14)
    assert layer._dense_cache.entries[torch.float64][1] is cached  # rebuilt once, then reused
    layer.cache_dense_weight(False)
    assert layer._dense_cache is None


def test_dense_weight_cache_follows_in_place_updates_dtype_changes_and_grad_mode():
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 3).cache_dense_weight()
    x = torch.randn(5, 24, dtype=torch.float64)
    with torch.no_grad():
        before = layer(x)
        layer.cores[1].mul_(2.0)  # what an optimizer step does: same tensor, new version
        after = layer(x)
    weight, bias = dense_reference(layer)
    np.testing.assert_allclose(as_numpy(after), as_numpy(x @ weight.T + bias), rtol=1e-10, atol=1e-12)
    assert not np.allclose(as_numpy(after), as_numpy(before))
    # with gradients needed the cache is bypassed and the cores get their gradients
    y = layer(x)
    y.square().sum().backward()
    assert layer.packed_cores.grad is not None
    # .to() replaces the parameters: the cache rebuilds in the new dtype
    layer = layer.float()
    with torch.no_grad():
        y32 = layer(x.float())
    assert y32.dtype == torch.float32 and list(layer._dense_cache.entries) == [torch.float32]
    np.testing.assert_allclose(as_numpy(y32), as_numpy(after), rtol=1e-5, atol=1e-5)
    # a dtype mismatch without autocast is still the uncached path's clear error
    with torch.no_grad(), pytest.raises(TypeError, match="use one dtype"):
        layer(x)


def test_dense_weight_cache_under_autocast_rebuilds_in_full_precision():
    layer = make(96, 72, (8, 12, 1), (2, 6, 6), 5, dtype=torch.float32).cache_dense_weight()
    x = torch.randn(6, 96)
    with torch.no_grad():
        reference = layer.to_linear()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
    assert y.dtype == torch.bfloat16 and list(layer._dense_cache.entries) == [torch.bfloat16]
    with torch.no_grad():  # rebuilt in float32, rounded once (a bf16 rebuild would differ in many entries)
        full = tn.full(tn.TTM(list(layer.cores))).to(torch.bfloat16)
    assert torch.equal(layer._dense_cache.entries[torch.bfloat16][1], full)
    # the cached W is the float32 rebuild rounded once to bf16 (unit roundoff 2^-9), and the GEMM runs in
    # bf16: 3% of the output scale, as for nn.Linear under autocast
    scale = float(reference.abs().max())
    np.testing.assert_allclose(as_numpy(y), as_numpy(reference), rtol=0, atol=0.03 * scale)


def test_dense_weights_context_switches_every_layer_and_restores():
    model = nn.Sequential(
        make(24, 30, (2, 3, 4), (5, 3, 2), 3), nn.ReLU(), make(30, 24, (5, 3, 2), (2, 3, 4), 2)
    )
    model[2].cache_dense_weight()  # already on: stays on after the block
    x = torch.randn(4, 24, dtype=torch.float64)
    expected = model(x).detach()
    with torch.no_grad(), tn.nn.dense_weights(model) as inside:
        assert inside is model
        assert model[0]._dense_cache is not None
        np.testing.assert_allclose(as_numpy(model(x)), as_numpy(expected), rtol=1e-10, atol=1e-12)
        assert model[0]._dense_cache.entries and model[2]._dense_cache.entries  # the cached path ran
    assert model[0]._dense_cache is None and model[2]._dense_cache is not None
    with pytest.raises(TypeError, match=r"expected an nn\.Module"), tn.nn.dense_weights([model]):
        pass


# Known, benign warnings under torch.compile (torch 2.13): dynamo warns when it traces through
# array_api_compat's lru_cache'd type checks (pure functions) and when it traces the autograd Function's
# apply (it instantiates the Function internally); inductor imports a module that uses torch.jit.script_method.
COMPILE_WARNINGS = [
    "ignore:Dynamo detected a call to a `functools.lru_cache`",
    "ignore:.*should not be instantiated:DeprecationWarning",
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
]


def compile_marks(function):
    for warning in COMPILE_WARNINGS:
        function = pytest.mark.filterwarnings(warning)(function)
    return function


def check_compiled_matches_eager(backend, save_weight=False):
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 3, dtype=torch.float32)
    layer.save_weight = save_weight
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=backend)
    x = torch.randn(2, 5, 24)
    y_eager = layer(x)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), list(layer.parameters()))
    y_comp = compiled(x)
    grads_comp = torch.autograd.grad(y_comp.square().sum(), list(layer.parameters()))
    np.testing.assert_allclose(as_numpy(y_comp), as_numpy(y_eager), rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_comp, grads_eager):
        np.testing.assert_allclose(as_numpy(a), as_numpy(b), rtol=1e-4, atol=1e-5)


@compile_marks
def test_torch_compile_forward_and_backward_match_eager_without_graph_breaks():
    check_compiled_matches_eager("aot_eager")
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(make(24, 30, (2, 3, 4), (5, 3, 2), 3, dtype=torch.float32))(
        torch.randn(4, 24)
    )
    assert explanation.graph_break_count == 0, explanation.break_reasons


@compile_marks
def test_torch_compile_inductor_forward_and_backward_match_eager():
    check_compiled_matches_eager("inductor")


@compile_marks
def test_torch_compile_with_save_weight_matches_eager():
    plan = tn.contract.plan_linear((10, 24), make(24, 30, (2, 3, 4), (5, 3, 2), 3).cores)
    assert plan.forward.strategy == "rebuild"  # so that there is a W to keep
    check_compiled_matches_eager("aot_eager", save_weight=True)


def saved_bytes(module, x, autocast=False, device="cpu"):
    """Bytes of the distinct storages that ``module(x)``'s graph saves, parameters excluded."""

    def run():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            return module(x)

    return saved_storage_bytes(run, exclude=list(module.parameters()))


@pytest.mark.parametrize("autocast", [False, True])
def test_save_weight_layer_keeps_w_and_gives_the_default_gradients(autocast):
    dtype = torch.float32 if autocast else torch.float64
    layer = make(96, 72, (8, 12, 1), (2, 6, 6), 5, dtype=dtype)
    keeping = make(96, 72, (8, 12, 1), (2, 6, 6), 5, dtype=dtype)
    keeping.save_weight = True
    x = torch.randn(7, 300, 96, dtype=dtype, requires_grad=True)  # 2,100 tokens: the forward rebuilds W
    assert tn.contract.plan_linear((2100, 96), layer.cores).forward.strategy == "rebuild"
    size = 2 if autocast else 8  # TTMLinear casts x and the cores to bf16 under autocast, as nn.Linear does
    x_bytes = x.numel() * size
    cast_cores = sum(c.numel() for c in layer.cores) * 2 if autocast else 0  # the casts are new storages
    assert saved_bytes(layer, x, autocast) == x_bytes + cast_cores
    # W (72 x 96) more, and the right half of its product: at split 1 the left half is core 0 itself (a
    # view) and the right half is cores 1-2 contracted over their bond, r1 x (6 12)(6 1) entries
    assert tn._linear.split_point([tuple(c.shape) for c in layer.cores]) == 1
    right_half = 5 * 6 * 12 * 6 * 1
    assert saved_bytes(keeping, x, autocast) == x_bytes + cast_cores + (72 * 96 + right_half) * size
    grads = [[p.grad.clone() for p in module.parameters()] for module in (layer, keeping)]
    for a, b in zip(*grads):
        np.testing.assert_allclose(as_numpy(a.float()), as_numpy(b.float()), rtol=1e-12, atol=1e-12)


@compile_marks
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_saves_x_and_the_cores_unless_save_weight(backend):
    # compiled, the backward's rebuild of W would be merged with the forward's and W saved; the layer
    # runs in a checkpointed region so that the compiled graph keeps the eager rule
    layer = make(96, 72, (8, 12, 1), (2, 6, 6), 5, dtype=torch.float32)
    x = torch.randn(2100, 96, requires_grad=True)
    eager = saved_bytes(layer, x)
    eager_grads = [p.grad.clone() for p in layer.parameters()]
    results = {}
    for keep in (False, True):
        layer.save_weight = keep
        layer.zero_grad()
        torch._dynamo.reset()
        results[keep] = saved_bytes(torch.compile(layer, backend=backend), x)
        for a, b in zip(layer.parameters(), eager_grads):
            np.testing.assert_allclose(as_numpy(a.grad), as_numpy(b), rtol=1e-5, atol=1e-6)
    assert results[False] == eager == x.numel() * 4
    assert results[True] >= eager + 72 * 96 * 4  # the compiler keeps W (and what else it prefers)


@compile_marks
def test_torch_compile_with_save_weight_keeps_nothing_where_eager_keeps_nothing():
    # a planned sweep (few tokens, low rank) keeps no W in eager; compiled it must not keep its
    # intermediates either
    torch.manual_seed(0)
    layer = TTMLinear(768, 3072, rank=4, in_shape=(8, 8, 12), out_shape=(12, 16, 16), save_weight=True)
    x = torch.randn(64, 768, requires_grad=True)
    assert tn.contract.plan_linear((64, 768), layer.cores).forward.strategy == "sweep"
    torch._dynamo.reset()
    assert saved_bytes(torch.compile(layer, backend="aot_eager"), x) == saved_bytes(layer, x) == x.numel() * 4


@compile_marks
@pytest.mark.parametrize("strict", [False, True])
def test_torch_export_with_gradients_enabled(strict):
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 3, dtype=torch.float32)
    x = torch.randn(5, 24)
    program = torch.export.export(layer, (x,), strict=strict)
    np.testing.assert_allclose(as_numpy(program.module()(x)), as_numpy(layer(x)), rtol=1e-5, atol=1e-6)


def test_save_weight_is_a_checked_attribute_carried_by_the_constructors():
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 2)
    assert layer.save_weight is False and "save_weight" not in layer.extra_repr()
    layer.save_weight = True
    assert layer.extra_repr().endswith("bias=True, save_weight=True")
    with pytest.raises(TypeError, match="TTMLinear: save_weight must be True or False, got 'no'"):
        layer.save_weight = "no"
    assert layer.save_weight is True  # the bad value changed nothing
    assert TTMLinear(24, 30, rank=2, save_weight=True).save_weight is True
    assert TTMLinear.from_ttm(layer.weight, save_weight=True).save_weight is True
    linear = nn.Linear(24, 30)
    assert TTMLinear.from_linear(linear, rank=2, save_weight=True).save_weight is True
    assert TTMLinear.from_linear(linear, rank=2).save_weight is False
    with pytest.raises(TypeError, match="from_linear: save_weight must be True or False"):
        TTMLinear.from_linear(linear, rank=2, save_weight=None)
    copy = _pickled_copy(layer)
    assert copy.save_weight is True


def _pickled_copy(module):
    """``module`` after a ``torch.save``/``torch.load`` round trip of the whole module."""
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# --- initialisation statistics ---------------------------------------------------------------------------
INITS = [("gpt2", 0.02), ("glorot", math.sqrt(2 / (768 + 3072))), ("kaiming", math.sqrt(2 / 768)), (0.5, 0.5)]
PAPER = dict(rank=64, in_shape=(8, 8, 12, 1), out_shape=(8, 8, 8, 6), clip_rank=False)  # GPT-2 c_fc, r=64
BALANCED = dict(rank=16, in_shape=(8, 8, 12), out_shape=(12, 16, 16))


@pytest.mark.parametrize(
    ("init", "std", "config"), [(*case, BALANCED) for case in INITS] + [("gpt2", 0.02, PAPER)], ids=str
)
def test_init_rebuilt_weight_has_the_stated_std(init, std, config):
    torch.manual_seed(1)
    layer = TTMLinear(768, 3072, init=init, **config)
    w = tn.full(layer.weight).detach().double()
    assert w.shape == (3072, 768)
    assert float(w.square().mean().sqrt()) == pytest.approx(std, rel=1e-5)  # the RMS, exactly
    assert abs(float(w.mean())) < 0.05 * std
    if config is BALANCED:  # enough terms per entry for the rebuilt entries to be close to Gaussian
        inside = float((w.abs() < std).double().mean())
        assert inside == pytest.approx(0.6827, abs=0.03)
    assert float(layer.bias.detach().abs().max()) == 0.0


def test_init_gpt2_is_the_papers_recipe_left_orthogonal_cores():
    torch.manual_seed(2)
    layer = TTMLinear(768, 3072, rank=32, in_shape=(8, 8, 12, 1), out_shape=(8, 8, 8, 6), clip_rank=False)
    for k, core in enumerate(layer.cores[:-1]):
        r0, m, n, r1 = core.shape
        if r0 * m * n >= r1:
            q = core.detach().double().reshape(r0 * m * n, r1)
            np.testing.assert_allclose(as_numpy(q.T @ q), np.eye(r1), atol=1e-5, err_msg=f"core {k}")


@pytest.mark.parametrize("init", ["glorot", "kaiming", 0.1])
def test_init_t3f_rule_balances_the_cores(init):
    torch.manual_seed(3)
    layer = TTMLinear(768, 3072, rank=16, in_shape=(8, 8, 12), out_shape=(12, 16, 16), init=init)
    std = {"glorot": math.sqrt(2 / 3840), "kaiming": math.sqrt(2 / 768)}.get(init, init)
    per_core = tn.random.core_std(std, [16, 16])
    for core in layer.cores:
        assert float(core.detach().std()) == pytest.approx(per_core, rel=0.1)


def test_init_is_reproducible_from_the_global_seed():
    torch.manual_seed(5)
    a = TTMLinear(24, 30, rank=3)
    torch.manual_seed(5)
    b = TTMLinear(24, 30, rank=3)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


# --- conversion ---------------------------------------------------------------------------------------
def low_rank_linear(in_shape, out_shape, rank, noise, *, seed=0, dtype=torch.float64):
    w = tn.random_ttm(out_shape, in_shape, rank, seed=seed).full()
    rng = np.random.default_rng(seed + 1)
    w = w + noise * np.linalg.norm(w) / math.sqrt(w.size) * rng.standard_normal(w.shape)
    linear = nn.Linear(w.shape[1], w.shape[0], dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(w))
    return linear


@pytest.mark.parametrize("eps", [0.3, 0.1, 1e-8])
def test_from_linear_error_within_eps(eps):
    linear = low_rank_linear((4, 6, 4), (6, 4, 5), 3, noise=0.2)
    layer = TTMLinear.from_linear(linear, eps=eps, in_shape=(4, 6, 4), out_shape=(6, 4, 5))
    w = linear.weight.detach()
    measured = float(torch.linalg.norm(layer.to_linear().weight.detach() - w) / torch.linalg.norm(w))
    assert layer.conversion_error == pytest.approx(measured, rel=1e-6, abs=1e-12)
    assert layer.conversion_error <= eps
    assert layer.weight.dtype == torch.float64 and torch.equal(layer.bias, linear.bias)
    x = torch.randn(3, 96, dtype=torch.float64)
    with torch.no_grad():
        assert float((layer(x) - linear(x)).norm()) <= 1.01 * eps * float(x.norm()) * float(w.norm()) + 1e-12


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e-310])
def test_from_linear_reports_its_error_at_every_finite_scale(scale):
    # the sums of squares overflowed near 1e300 (conversion_error NaN) and underflowed near 1e-300 (0.0,
    # as if the conversion were exact)
    torch.manual_seed(0)
    linear = nn.Linear(24, 30, dtype=torch.float64)
    expected = TTMLinear.from_linear(linear, rank=2, in_shape=(2, 3, 4), out_shape=(5, 3, 2)).conversion_error
    with torch.no_grad():
        linear.weight.mul_(scale)
    layer = TTMLinear.from_linear(linear, rank=2, in_shape=(2, 3, 4), out_shape=(5, 3, 2))
    assert 0.1 < expected < 1 and layer.conversion_error == pytest.approx(expected, rel=1e-9)


def test_init_std_beyond_the_dtype_is_refused():
    # the cores were finite but the rebuilt W overflowed to inf (its entry RMS came out NaN)
    with pytest.raises(ValueError, match=r"TTMLinear: init std 1e\+39 exceeds the largest finite value"):
        TTMLinear(24, 30, rank=2, init=1e39, dtype=torch.float32)
    layer = TTMLinear(24, 30, rank=2, init=1e39, dtype=torch.float64)
    assert float(tn.norm(layer.weight).detach()) == pytest.approx(1e39 * math.sqrt(24 * 30), rel=1e-9)


def test_from_linear_rank_cap_and_exactness():
    linear = low_rank_linear((4, 6, 4), (6, 4, 5), 3, noise=0.0, dtype=torch.float32)
    layer = TTMLinear.from_linear(linear, rank=3, in_shape=(4, 6, 4), out_shape=(6, 4, 5))
    assert layer.ranks == (1, 3, 3, 1) and layer.conversion_error < 1e-6
    assert layer.cores[0].dtype == torch.float32 and layer.init == "gpt2"
    capped = low_rank_linear((4, 6, 4), (6, 4, 5), 3, noise=0.5)
    with pytest.warns(tn.RankCapWarning):
        layer = TTMLinear.from_linear(capped, rank=1, eps=1e-3, in_shape=(4, 6, 4), out_shape=(6, 4, 5))
    assert layer.ranks == (1, 1, 1, 1) and layer.conversion_error > 1e-3


def test_from_linear_accepts_gpt2_conv1d_and_transposes_on_purpose():
    import transformers.pytorch_utils as conv1d_module

    torch.manual_seed(0)
    conv = conv1d_module.Conv1D(nf=30, nx=24)  # weight (nx, nf) = (in, out)
    with torch.no_grad():
        conv.bias.normal_()
    layer = TTMLinear.from_linear(conv, eps=0.0, in_shape=(2, 3, 4), out_shape=(5, 3, 2))
    assert (layer.in_features, layer.out_features) == (24, 30) and layer.conversion_error < 1e-6
    x = torch.randn(2, 7, 24)
    np.testing.assert_allclose(as_numpy(layer(x)), as_numpy(conv(x)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(as_numpy(layer.to_linear().weight), as_numpy(conv.weight.T), atol=1e-5)


def test_from_ttm_takes_numpy_and_torch_trains():
    w = tn.random_ttm((5, 3, 2), (2, 3, 4), 2, seed=0)
    layer = TTMLinear.from_ttm(w, torch.zeros(30, dtype=torch.float64))
    assert layer.weight.dtype == torch.float64 and layer.ranks == w.ranks
    np.testing.assert_allclose(as_numpy(tn.full(layer.weight)), w.full(), rtol=1e-12)
    assert layer.bias is not None
    with pytest.raises(ValueError, match=r"bias must be a tensor of shape \(30,\)"):
        TTMLinear.from_ttm(w, torch.zeros(7))
    with pytest.raises(TypeError, match=r"must be a tensornet\.TTM"):
        TTMLinear.from_ttm(w.full())


# --- bad arguments --------------------------------------------------------------------------------------
BAD = [
    (
        dict(in_features=24, out_features=30, rank=2, in_shape=(2, 3, 5)),
        ValueError,
        r"in_shape \(2, 3, 5\) multiplies to 30 but in_features = 24",
    ),
    (
        dict(in_features=24, out_features=30, rank=2, out_shape=(5, 3, 3)),
        ValueError,
        r"out_shape .* multiplies to 45 but out_features = 30",
    ),
    (
        dict(in_features=24, out_features=30, rank=2, in_shape=(4, 6), out_shape=(5, 3, 2)),
        ValueError,
        "out_shape .* has 3 factors but in_shape .* has 2",
    ),
    (dict(in_features=24, out_features=30, rank=0), ValueError, "rank must be >= 1"),
    (dict(in_features=24, out_features=30, rank=(2, 0)), ValueError, "rank must be >= 1, got 0 for bond 2"),
    (
        dict(in_features=24, out_features=30, rank=(2, 2, 2)),
        ValueError,
        "rank has 3 entries but the layer has 3 cores",
    ),
    (dict(in_features=24, out_features=30, rank=(2, 2, 2, 2)), ValueError, "boundary ranks must be 1"),
    (dict(in_features=24, out_features=30, rank=2.5), TypeError, "rank must be an int"),
    (dict(in_features=24, out_features=30, rank="2"), TypeError, "rank must be an int"),
    (dict(in_features=24, out_features=30, rank=2, init="xavier"), ValueError, "init must be one of"),
    (
        dict(in_features=24, out_features=30, rank=2, init=-1.0),
        ValueError,
        "init as a std must be finite and >= 0",
    ),
    (dict(in_features=24, out_features=30, rank=2, init=None), TypeError, "init must be one of"),
    (dict(in_features=0, out_features=30, rank=2), ValueError, "in_features must be >= 1"),
    (dict(in_features=24.0, out_features=30, rank=2), TypeError, "in_features must be an int"),
    (dict(in_features=24, out_features=True, rank=2), TypeError, "out_features must be an int"),
    (dict(in_features=24, out_features=30, rank=2, in_shape=(2, 0, 12)), ValueError, r"in_shape\[1\] = 0"),
    (
        dict(in_features=24, out_features=30, rank=2, in_shape=24),
        TypeError,
        "in_shape must be a non-empty sequence",
    ),
    (
        dict(in_features=24, out_features=30, rank=2, in_shape=(2.0, 12)),
        TypeError,
        r"in_shape\[0\] must be an int",
    ),
    (dict(in_features=24, out_features=30, rank=2, ncores=0), ValueError, "ncores must be >= 1"),
    (
        dict(in_features=24, out_features=30, rank=2, save_weight=1),
        TypeError,
        "save_weight must be True or False",
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    in_f, out_f = kwargs.pop("in_features"), kwargs.pop("out_features")
    with pytest.raises(error, match=match) as info:
        TTMLinear(in_f, out_f, **kwargs)
    assert str(info.value).startswith("TTMLinear: ")


def test_bad_forward_and_conversion_arguments():
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 2)
    with pytest.raises(
        ValueError, match=r"TTMLinear: the input has shape .3, 25. but the layer takes 24 features"
    ):
        layer(torch.randn(3, 25, dtype=torch.float64))
    linear = nn.Linear(24, 30)
    with pytest.raises(ValueError, match="give rank, eps or both"):
        TTMLinear.from_linear(linear)
    with pytest.raises(TypeError, match=r"expected an nn\.Linear or transformers' Conv1D"):
        TTMLinear.from_linear(nn.Conv1d(3, 4, 1), rank=2)
    with pytest.raises(ValueError, match=r"TTMLinear.from_linear: in_shape \(5, 5\) multiplies to 25"):
        TTMLinear.from_linear(linear, rank=2, in_shape=(5, 5))
    with pytest.raises(ValueError, match="from_linear: rank must be >= 1"):
        TTMLinear.from_linear(linear, rank=0)
    with pytest.raises(ValueError, match="eps must be finite"):
        TTMLinear.from_linear(linear, eps=-0.1)


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")  # torch, on .to(complex)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_dtypes_are_refused_where_the_layer_is_made(dtype):
    # they built and ran a forward with no conjugation in the hand-written backward; complex layers are a
    # later feature, until then one message at construction (and at the forward of a layer cast later)
    with pytest.raises(
        TypeError, match=r"TTMLinear: dtype is torch\.complex.*do not support complex dtypes yet"
    ):
        TTMLinear(24, 30, rank=2, dtype=dtype)
    with pytest.raises(TypeError, match=r"TTMLinear\.from_linear: the layer's dtype is torch\.complex.*yet"):
        TTMLinear.from_linear(nn.Linear(24, 30, dtype=dtype), rank=2)
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 2).to(dtype)
    with pytest.raises(TypeError, match=r"TTMLinear: the cores' dtype is torch\.complex.*yet"):
        layer(torch.randn(3, 24, dtype=dtype))
    head = tn.nn.TiedTTHead(tn.nn.TTEmbedding(30, 24, rank=2).to(dtype))
    with pytest.raises(TypeError, match=r"TiedTTHead: the cores' dtype is torch\.complex.*yet"):
        head(torch.randn(3, 24, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, "float32", np.float32])
def test_non_floating_dtypes_are_refused_with_one_message(dtype):
    # torch.int64 and bool gave torch's "Only Tensors of floating point and complex dtype can require
    # gradients"; a string or numpy dtype gave torch.empty's argument error
    with pytest.raises(
        TypeError, match=r"TTMLinear: dtype .*torch\.float16, torch\.bfloat16, torch\.float32"
    ):
        TTMLinear(24, 30, rank=2, dtype=dtype)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert TTMLinear(24, 30, rank=2, dtype=dtype).packed_cores.dtype == dtype


@pytest.mark.parametrize("materialized", [False, True])
def test_operand_mismatches_name_the_layer_and_the_operand_that_differs(materialized):
    # they named tensornet.linear's x and W, said "x is torch.float32 but W is torch.float32 and bias
    # torch.float64" where the bias differed, and a bias on another device failed inside torch
    layer = tn.nn.materialize(make(24, 30, (2, 3, 4), (5, 3, 2), 2), enabled=materialized)
    x = torch.randn(600, 24, dtype=torch.float64)
    with pytest.raises(
        TypeError, match=r"TTMLinear: the input is torch\.float32 but the weight and the bias are"
    ):
        layer(x.float())
    with pytest.raises(TypeError, match=r"TTMLinear: the input is torch\.int64 but the weight and the bias"):
        layer(x.long())
    with pytest.raises(
        ValueError, match="TTMLinear: the input is on meta but the weight and the bias are on cpu"
    ):
        layer(x.to("meta"))
    layer.bias = nn.Parameter(layer.bias.detach().float())
    with pytest.raises(
        TypeError, match=r"TTMLinear: the bias is torch\.float32 but the input and the weight are"
    ):
        layer(x)
    layer.bias = nn.Parameter(layer.bias.detach().double().to("meta"))
    with pytest.raises(
        ValueError, match="TTMLinear: the bias is on meta but the input and the weight are on cpu"
    ):
        layer(x)
    head = tn.nn.TiedTTHead(tn.nn.TTEmbedding(30, 24, rank=2))
    with pytest.raises(
        TypeError, match=r"TiedTTHead: the input is torch\.float64 but the weight is torch\.float32"
    ):
        head(x)
    with pytest.raises(ValueError, match=r"TiedTTHead: the input has shape .600, 23. but the layer takes 24"):
        head(x[:, :23].float())


# --- GPU --------------------------------------------------------------------------------------------------
# The autograd engine runs CUDA backward on its own thread; torch warns once when that thread makes its first
# cuBLAS call and sets the device's primary context itself (harmless).
CUDA_CONTEXT_WARNING = "ignore:Attempting to run cuBLAS, but there was no current CUDA context"


@gpu
@pytest.mark.gpu
@pytest.mark.filterwarnings(CUDA_CONTEXT_WARNING)
def test_cuda_forward_backward_and_autocast_match_cpu():
    layer = make(96, 72, (8, 12, 1), (2, 6, 6), 5, dtype=torch.float32)
    x = torch.randn(6, 96)
    y_cpu = layer(x)
    cuda = layer.to("cuda")
    assert all(c.device.type == "cuda" for c in cuda.cores) and cuda.weight.device.type == "cuda"
    y = cuda(x.cuda())
    np.testing.assert_allclose(as_numpy(y), as_numpy(y_cpu), rtol=1e-4, atol=1e-5)
    y.sum().backward()
    assert cuda.packed_cores.grad.device.type == "cuda"
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y16 = cuda(x.cuda())
    assert y16.dtype == torch.bfloat16
    # bf16 on CUDA vs float32 on CPU: bf16's unit roundoff is 2^-9, so 3% of the output scale
    np.testing.assert_allclose(
        as_numpy(y16), as_numpy(y_cpu), rtol=0, atol=0.03 * float(y_cpu.detach().abs().max())
    )


@gpu
@pytest.mark.gpu
@pytest.mark.filterwarnings(CUDA_CONTEXT_WARNING)
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_save_weight_keeps_w_and_gives_the_default_gradients(autocast):
    layers = [make(96, 72, (8, 12, 1), (2, 6, 6), 5, dtype=torch.float32).to("cuda") for _ in range(2)]
    layers[1].save_weight = True
    x = torch.randn(2100, 96, device="cuda", requires_grad=True)
    plan = tn.contract.plan_linear((2100, 96), layers[0].cores)
    assert (plan.forward.strategy, plan.backward.strategy) == ("rebuild", "dense")
    bytes_default, bytes_kept = (saved_bytes(layer, x, autocast, device="cuda") for layer in layers)
    size = 2 if autocast else 4
    assert bytes_kept == bytes_default + (72 * 96 + 5 * 6 * 12 * 6) * size  # W and the right half
    # the same kernels on the same inputs; cuBLAS may still pick another reduction order per call, so the
    # tolerance is that of the compute dtype rather than bitwise
    for a, b in zip(layers[0].parameters(), layers[1].parameters()):
        scale = float(a.grad.abs().max())
        np.testing.assert_allclose(
            as_numpy(b.grad.float()),
            as_numpy(a.grad.float()),
            rtol=0,
            atol=(2e-2 if autocast else 1e-5) * scale,
        )


def test_tt_parameters_lists_every_core_once():
    shared = make(24, 30, (2, 3, 4), (5, 3, 2), 3)
    embedding = tn.nn.TTEmbedding(60, 24, rank=2, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4))
    model = nn.Sequential(embedding, shared, nn.Linear(30, 30), shared)  # shared twice: counted once
    cores = tn.nn.tt_parameters(model)
    expected = [embedding.packed_cores, shared.packed_cores]
    assert [id(p) for p in cores] == [id(p) for p in expected]
    assert tn.nn.tt_parameters(nn.Linear(3, 3)) == []
    with pytest.raises(TypeError, match="expected an nn"):
        tn.nn.tt_parameters([shared])


def test_dense_weight_cache_of_a_frozen_layer_built_in_inference_mode_serves_input_gradients():
    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 3).requires_grad_(False).cache_dense_weight()
    weight, bias = dense_reference(layer)
    x = torch.randn(4, 24, dtype=torch.float64)
    with torch.inference_mode():
        layer(x)  # builds the cache here
    x.requires_grad_(True)
    y = layer(x)  # frozen cores: the cache is used, and x's gradient flows through F.linear
    grad = torch.randn_like(y)
    y.backward(grad)
    np.testing.assert_allclose(as_numpy(y), as_numpy(x @ weight.T + bias), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(as_numpy(x.grad), as_numpy(grad @ weight), rtol=1e-10, atol=1e-12)


@gpu
@pytest.mark.gpu
@pytest.mark.filterwarnings(CUDA_CONTEXT_WARNING)
def test_cuda_dense_weight_cache_matches_the_uncached_layer():
    layer = make(96, 72, (8, 12, 1), (2, 6, 6), 5, dtype=torch.float32).to("cuda")
    x = torch.randn(8, 96, device="cuda")
    with torch.no_grad():
        expected = layer(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            expected16 = layer(x)
        layer.cache_dense_weight()
        y = layer(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y16 = layer(x)
    assert y16.dtype == torch.bfloat16 and set(layer._dense_cache.entries) == {torch.float32, torch.bfloat16}
    np.testing.assert_allclose(as_numpy(y), as_numpy(expected), rtol=1e-4, atol=1e-5)
    # both in bf16 (unit roundoff 2^-9), rounding different intermediates: 3% of the output scale
    scale = float(expected.abs().max())
    np.testing.assert_allclose(as_numpy(y16), as_numpy(expected16), rtol=0, atol=0.03 * scale)


def test_dense_weight_cache_is_dropped_by_to_state_dict_pickling_and_training():
    import copy

    layer = make(24, 30, (2, 3, 4), (5, 3, 2), 3).cache_dense_weight()
    x = torch.randn(3, 24, dtype=torch.float64)

    def fill():
        with torch.no_grad():
            layer(x)
        assert layer._dense_cache.entries

    fill()
    layer.double()  # .to() may keep the tensors' identities and versions: the cache is cleared anyway
    assert not layer._dense_cache.entries
    fill()
    layer.load_state_dict(layer.state_dict())
    assert not layer._dense_cache.entries
    fill()
    loaded = _pickled_copy(layer)
    assert loaded._dense_cache is not None and not loaded._dense_cache.entries
    assert not copy.deepcopy(layer)._dense_cache.entries
    layer(x).sum().backward()  # a training step: the matrices are freed, not kept stale
    assert not layer._dense_cache.entries


def test_dense_weight_cache_skips_cores_made_in_inference_mode():
    with torch.inference_mode():
        layer = make(24, 30, (2, 3, 4), (5, 3, 2), 3).cache_dense_weight()
        x = torch.randn(3, 24, dtype=torch.float64)
        y = layer(x)  # inference tensors have no version counter: the uncached path runs
    assert not layer._dense_cache.entries
    weight, bias = dense_reference(layer)
    np.testing.assert_allclose(as_numpy(y), as_numpy(x @ weight.T + bias), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tokens", [1, 8, 300])
@pytest.mark.parametrize("how", ["vector_to_parameters", "functional_call"])
def test_packed_cores_that_are_views_into_a_flat_vector_are_read_where_they_live(tokens, how):
    # vector_to_parameters and functional_call hand a layer parameters that are slices of one vector (a
    # nonzero storage offset); the product must read them there, on every route and in the backward too
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 64), TTMLinear(64, 64, rank=4, in_shape=(4, 4, 4), out_shape=(4, 4, 4))
    )
    flat = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone().requires_grad_()
    sizes = [p.numel() for p in model.parameters()]
    views = {name: v.view_as(p) for (name, p), v in zip(model.named_parameters(), flat.split(sizes))}
    x = torch.randn(tokens, 64)
    if how == "vector_to_parameters":
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(flat.detach(), model.parameters())
        assert model[1].packed_cores.storage_offset() > 0
        y = model(x)
    else:
        y = torch.func.functional_call(model, views, (x,))
    layer = model[1]
    cores = [
        v.view(s)
        for v, s in zip(
            views["1.packed_cores"].split([math.prod(s) for s in layer.core_shapes]), layer.core_shapes
        )
    ]
    hidden = nn.functional.linear(x, views["0.weight"], views["0.bias"])
    expected = nn.functional.linear(hidden, tn.full(tn.TTM(cores)), views["1.bias"])
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    params = list(model.parameters()) if how == "vector_to_parameters" else [flat]
    got = torch.autograd.grad(y.square().sum(), params)
    want = torch.autograd.grad(expected.square().sum(), [flat])[0]
    got_flat = torch.cat([g.reshape(-1) for g in got])
    torch.testing.assert_close(got_flat, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lead", [(0,), (2, 0)])
@pytest.mark.parametrize("needs", ["x", "cores", "both"])
@pytest.mark.parametrize("materialized", [False, True])
def test_zero_tokens_with_gradients_give_a_graph_and_zero_gradients_as_nn_linear(lead, needs, materialized):
    # an expert or masked branch that gets no tokens in a step: nn.Linear returns a connected graph and
    # zero parameter gradients; so must a TT layer (it returned a constant, and backward raised)
    torch.manual_seed(0)
    layer = TTMLinear(64, 48, rank=4, in_shape=(4, 4, 4), out_shape=(4, 4, 3))
    if materialized:
        layer = tn.nn.materialize(layer)
    layer.requires_grad_(needs != "x")
    x = torch.randn(*lead, 64, requires_grad=needs != "cores")
    y = layer(x)
    assert tuple(y.shape) == (*lead, 48) and y.requires_grad
    (y.sum() + 1.0).backward()
    if needs != "cores":
        assert x.grad is not None and tuple(x.grad.shape) == tuple(x.shape)
    if needs != "x":
        assert torch.equal(layer.packed_cores.grad, torch.zeros_like(layer.packed_cores))
        assert torch.equal(layer.bias.grad, torch.zeros_like(layer.bias))


@pytest.mark.parametrize("tokens", [1, 8, 300])
def test_a_strided_packed_parameter_is_read_where_it_lives(tokens):
    torch.manual_seed(0)
    layer = TTMLinear(64, 64, rank=4, in_shape=(4, 4, 4), out_shape=(4, 4, 4))
    values = layer.packed_cores.detach().clone()
    with torch.no_grad():
        layer.packed_cores.data = torch.stack([values, -values], 1).reshape(-1)[::2]  # stride 2, same values
    assert layer.packed_cores.stride(0) == 2
    x = torch.randn(tokens, 64)
    reference = values.clone().requires_grad_()
    cores = [
        v.view(s)
        for v, s in zip(reference.split([math.prod(s) for s in layer.core_shapes]), layer.core_shapes)
    ]
    expected = nn.functional.linear(x, tn.full(tn.TTM(cores)), layer.bias)
    y = layer(x)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    (got,) = torch.autograd.grad(y.square().sum(), [layer.packed_cores])
    (want,) = torch.autograd.grad(expected.square().sum(), [reference])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)  # torch.func's import
@pytest.mark.parametrize("route", [("rebuild", "dense"), ("sweep", "sweep"), ("einsum", "einsum")])
@pytest.mark.parametrize("save_weight", [False, True])
def test_torch_func_grad_vmap_and_jvp_match_dense(route, save_weight, force_route):
    # torch.func transforms over a TT layer, as over nn.Linear: gradients (torch.func.grad), per-sample
    # gradients (vmap of grad) and forward-mode derivatives (jvp), on every route, against dense math
    force_route(*route)
    torch.manual_seed(0)
    layer = TTMLinear(
        48, 96, rank=4, in_shape=(4, 4, 3), out_shape=(4, 4, 6), dtype=torch.float64, save_weight=save_weight
    )
    params = {k: v.detach() for k, v in layer.named_parameters()}
    sizes = [math.prod(s) for s in layer.core_shapes]
    x = torch.randn(5, 48, dtype=torch.float64)

    def tt(p, x):
        return torch.func.functional_call(layer, p, (x,))

    def dense(p, x):
        cores = [v.view(s) for v, s in zip(p["packed_cores"].split(sizes), layer.core_shapes)]
        return nn.functional.linear(x, tn.full(tn.TTM(cores)), p["bias"])

    def close(a, b):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-10)

    def loss(fn):
        return lambda p, x: fn(p, x).square().sum()

    close(torch.func.grad(loss(tt))(params, x), torch.func.grad(loss(dense))(params, x))
    per_sample = torch.func.vmap(torch.func.grad(loss(tt)), in_dims=(None, 0))(params, x[:, None, :])
    close(per_sample, torch.func.vmap(torch.func.grad(loss(dense)), in_dims=(None, 0))(params, x[:, None, :]))
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    x_tangent = torch.randn_like(x)
    got = torch.func.jvp(tt, (params, x), (tangent, x_tangent))
    want = torch.func.jvp(dense, (params, x), (tangent, x_tangent))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    # forward-mode AD outside torch.func (dual tensors): the eager Function's jvp
    import torch.autograd.forward_ad as fwad

    with fwad.dual_level():
        duals = {k: fwad.make_dual(v, tangent[k]) for k, v in params.items()}
        y = fwad.unpack_dual(tt(duals, fwad.make_dual(x, x_tangent)))
    torch.testing.assert_close(y.primal, want[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y.tangent, want[1], rtol=1e-9, atol=1e-10)
