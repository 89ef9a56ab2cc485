"""tensornet.nn.materialize: the weights of TT layers with equal core shapes rebuilt together in training;
the same values and gradients as the per-layer path, fewer dispatched kernels, W released after backward."""

from __future__ import annotations

import copy
import io
import pickle
from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import tensornet as tn
from tensornet.nn import TTMLinear, materialize, release_weights


def stack(count: int, *, bias: bool = True, dtype=torch.float64, seed: int = 0) -> nn.Sequential:
    """``count`` TT layers of one shape (a group) with an odd one out and dense layers between them."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(count):
        layers += [TTMLinear(48, 96, rank=4, in_shape=(4, 4, 3), out_shape=(4, 4, 6), bias=bias, dtype=dtype)]
        layers += [nn.Tanh(), nn.Linear(96, 48, dtype=dtype)]
    layers += [TTMLinear(48, 24, rank=3, in_shape=(4, 12), out_shape=(4, 6), dtype=dtype)]
    return nn.Sequential(*layers)


def group_of(model: nn.Module):
    return model[0].__dict__["_weight_group"][0]


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


@given(st.integers(1, 3), st.sampled_from([1, 7, 300, 1000]), st.booleans(), st.integers(0, 99))
def test_same_values_and_gradients_as_the_per_layer_path(count, tokens, bias, seed):
    model = stack(count, bias=bias, seed=seed)
    reference = copy.deepcopy(model)
    materialize(model)
    x = torch.randn(tokens, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y, y_ref = model(x), reference(x)
    grouped = len(group_of(model)._weights) == count
    # the group path runs where the plan rebuilds W, or where sharing the rebuild's launches pays
    assert grouped == tn.contract.plan_linear((tokens, 48), model[0].cores).rebuilds_in_group(count)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for a, b in zip(grads(model), grads(reference)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert group_of(model)._weights == ()  # the backward used them: released


def test_a_group_rebuilds_where_sharing_the_launches_pays():
    # 64 x 64 layers at 1 token: alone, the sweep beats a rebuild (the per-layer path); in a group of 12 the
    # rebuild's launches are shared and the group path runs (it took 3x the time per layer otherwise)
    torch.manual_seed(0)
    layers = [TTMLinear(64, 64, rank=4, in_shape=(4, 4, 4), out_shape=(4, 4, 4)) for _ in range(12)]
    plan = tn.contract.plan_linear((1, 64), layers[0].cores)
    assert plan.forward.strategy != "rebuild" and not plan.rebuilds_in_group(1) and plan.rebuilds_in_group(12)
    reference = copy.deepcopy(nn.ModuleList(layers))
    alone = materialize(copy.deepcopy(layers[0]))
    group = materialize(nn.ModuleList(layers))
    x = torch.randn(1, 64)
    y = sum(m(x).square().sum() for m in group)
    assert len(group[0].__dict__["_weight_group"][0]._weights) == 12
    alone(x)
    assert alone.__dict__["_weight_group"][0]._weights == ()
    y_ref = sum(m(x).square().sum() for m in reference)
    torch.testing.assert_close(y, y_ref)
    y.backward()
    y_ref.backward()
    for a, b in zip(group.parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("create_graph", [False, True])
def test_a_group_layer_unused_in_a_step_gets_no_gradient(create_graph):
    # as on the per-layer path (and nn.Linear): None, not zeros, which AdamW's weight decay would move
    model = materialize(stack(2))
    reference = materialize(copy.deepcopy(model), enabled=False)
    x = torch.randn(600, 48, dtype=torch.float64)
    found = []
    for m in (reference, model):
        wanted = [m[0].packed_cores, m[3].packed_cores, m[3].bias]
        loss = m[0](x).square().sum()
        found.append(torch.autograd.grad(loss, wanted, create_graph=create_graph, allow_unused=True))
    assert len(group_of(model).layers) == 2 and found[1][1] is None and found[1][2] is None
    assert found[0][1] is None
    torch.testing.assert_close(found[1][0], found[0][0])
    model[0](x).square().sum().backward()
    assert model[3].packed_cores.grad is None
    before = model[3].packed_cores.detach().clone()
    torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1).step()
    assert torch.equal(model[3].packed_cores, before)


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_a_compiled_step_over_a_materialized_model_compiles_once():
    # the pass counter (a forward pre-hook) must not be traced: dynamo guarded on its value and recompiled
    # every step, and with fullgraph=True raised at the recompile limit
    torch._dynamo.reset()
    model = materialize(stack(1, dtype=torch.float32))
    step = torch.compile(lambda t: model(t).square().mean(), backend="eager", fullgraph=True)
    x = torch.randn(16, 48)
    step(x).backward()
    with torch.compiler.set_stance("fail_on_recompile"):
        for _ in range(3):
            step(x).backward()


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("region", ["first layer", "second layer", "both layers", "whole model"])
def test_activation_checkpointing_of_materialized_layers(reentrant, region):
    # the recomputation in the backward must save what the forward saved (non-reentrant checkpoint counts
    # them): where the forward built the group's matrices inside the region, the recomputation builds them too
    from torch.utils.checkpoint import checkpoint

    def run(m, x):
        def cp(fn, t):
            return checkpoint(fn, t, use_reentrant=reentrant)

        if region == "first layer":
            return m[1:](cp(m[0], x))
        if region == "second layer":
            return m[4:](cp(m[1:4], m[0](x)))
        if region == "both layers":
            return m[4:](cp(m[:4], x))
        return cp(m, x)

    model = materialize(stack(2))
    reference = materialize(copy.deepcopy(model), enabled=False)
    x = torch.randn(
        600, 48, dtype=torch.float64, requires_grad=reentrant
    )  # reentrant wants an input that does
    y = run(model, x)
    # the group path ran (a reentrant checkpoint runs its region's forward without gradients: no group there)
    assert (group_of(model)._stamps is not None) == (
        not reentrant or region in ("first layer", "second layer")
    )
    y.square().sum().backward()
    run(reference, x).square().sum().backward()
    for a, b in zip(grads(model), grads(reference)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradcheck_through_the_group_path(monkeypatch):
    model = materialize(stack(2))
    x = torch.randn(400, 48, dtype=torch.float64, requires_grad=True)
    params = [model[0].packed_cores, model[3].packed_cores, model[0].bias]
    from tensornet.nn import _materialize

    rebuilds = []
    apply = _materialize._GroupRebuild.apply
    monkeypatch.setattr(_materialize._GroupRebuild, "apply", lambda *args: rebuilds.append(1) or apply(*args))

    def f(x, *_):
        return model(x).sum(-1)

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)
    assert rebuilds  # the path under test was the group's
    # second derivatives through the group (e.g. a gradient penalty) are exact too
    assert torch.autograd.gradgradcheck(f, (x[:300].detach().requires_grad_(), *params), fast_mode=True)


def test_optimizer_steps_and_gradient_accumulation():
    model = materialize(stack(2))
    reference = copy.deepcopy(model)
    materialize(reference, enabled=False)
    x1, x2 = (torch.randn(500, 48, dtype=torch.float64) for _ in range(2))
    for m in (model, reference):
        optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
        # two forward passes, one backward of their sum; then an accumulating second backward; then a step
        (m(x1).square().mean() + m(x2).square().mean()).backward()
        m(x1).sum().backward()
        optimizer.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model(x2), reference(x2), rtol=1e-10, atol=1e-12)  # rebuilt after the step


def test_no_grad_and_released_weights_hold_nothing():
    model = materialize(stack(2))
    x = torch.randn(600, 48, dtype=torch.float64)
    with torch.no_grad():
        model(x)
    assert group_of(model)._weights == ()
    model(x)  # under gradients without a backward: held until the next pass, or released on request
    assert len(group_of(model)._weights) == 2
    release_weights(model)
    assert group_of(model)._weights == ()


def test_bf16_autocast_holds_bf16_weights_and_matches_the_per_layer_path():
    model = materialize(stack(2, dtype=torch.float32))
    reference = copy.deepcopy(model)
    materialize(reference, enabled=False)
    x = torch.randn(600, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
        y_ref = reference(x)
    assert group_of(model)._weights[0].dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    scale = float(y_ref.detach().float().abs().max())
    # both in bf16 (unit roundoff 2^-9), summed in different orders
    torch.testing.assert_close(y.detach().float(), y_ref.detach().float(), rtol=0, atol=3e-2 * scale)
    y.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


class Ops(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.overloadpacket is not torch.ops.aten._unsafe_view:
            self.count[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_a_group_dispatches_fewer_kernels_than_its_layers():
    model = stack(4)
    grouped = materialize(copy.deepcopy(model))
    x = torch.randn(1024, 48, dtype=torch.float64)
    counts = []
    for m in (model, grouped):
        m(x).sum().backward()  # warm the plans
        with Ops() as ops:
            m(x).sum().backward()
        counts.append(sum(ops.count.values()))
    # per layer the rebuild, its recomputation in backward and the core gradients (tens of kernels) become
    # F.linear's; the group adds one batched rebuild and one batched gradient pass
    assert counts[1] < 0.7 * counts[0], counts


def test_copies_pickles_state_dicts_and_turning_it_off():
    model = materialize(stack(2))
    x = torch.randn(400, 48, dtype=torch.float64)
    model(x)
    twin = copy.deepcopy(model)
    assert group_of(twin) is not group_of(model) and group_of(twin).layers[0] is twin[0]
    assert group_of(twin)._weights == ()  # copies carry the grouping, not the matrices
    torch.testing.assert_close(twin(x), model(x))
    restored = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(restored(x), model(x))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert not any("group" in key for key in model.state_dict())
    materialize(model, enabled=False)
    assert "_weight_group" not in model[0].__dict__ and not model._forward_pre_hooks
    with pytest.raises(TypeError, match=r"materialize: expected an nn\.Module"):
        materialize([model])


def test_layers_that_no_longer_share_a_dtype_fall_back_to_their_own_path():
    model = materialize(stack(2))
    model[3].float()
    x = torch.randn(500, 48, dtype=torch.float64)
    out = model[0](x)
    assert group_of(model)._weights == () and out.dtype == torch.float64


def test_tensorize_returns_a_materialized_model():
    model = nn.Sequential(nn.Linear(48, 96), nn.Linear(96, 48), nn.Linear(48, 96))
    rule = tn.nn.Rule("[02]", rank=3, from_weights=False, in_shape=(4, 4, 3), out_shape=(4, 4, 6))
    tn.nn.tensorize(model, rule)
    assert model[0].__dict__["_weight_group"][0] is model[2].__dict__["_weight_group"][0]


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*must be `None` or an integer within the vocabulary")
def test_a_tensorized_gpt2_compiles_as_one_graph():
    # fullgraph=True raises on any graph break; the compiled step must give the eager step's loss and gradients
    from tensornet.gpt2 import build_model, gpt2_config, tensorize

    config = gpt2_config(vocab_size=97, block_size=32, n_layer=2, n_embd=64, n_head=2)
    model, _ = tensorize(build_model(config, seed=0), rank=4, shapes="balanced", ncores=3)
    ids = torch.randint(0, 97, (4, 33), generator=torch.Generator().manual_seed(0))

    def step(m):
        logits = m(input_ids=ids[:, :-1], use_cache=False).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return loss.detach(), grads

    loss, expected = step(model)
    torch._dynamo.reset()
    compiled_loss, got = step(torch.compile(model, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled_loss, loss)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)  # torch.func's import
def test_torch_func_transforms_over_a_materialized_model():
    # under torch.func the layers take their own path (the group's Function has no functorch rules)
    model = materialize(stack(2))
    reference = materialize(copy.deepcopy(model), enabled=False)
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(600, 48, dtype=torch.float64)

    def loss(m):
        return lambda p: torch.func.functional_call(m, p, (x,)).square().sum()

    got, want = torch.func.grad(loss(model))(params), torch.func.grad(loss(reference))(params)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-10)
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    got_t = torch.func.jvp(lambda p: torch.func.functional_call(model, p, (x,)), (params,), (tangent,))[1]
    want_t = torch.func.jvp(lambda p: torch.func.functional_call(reference, p, (x,)), (params,), (tangent,))[
        1
    ]
    torch.testing.assert_close(got_t, want_t, rtol=1e-10, atol=1e-10)


# --- every call pattern nn.Linear accepts (issue 21) ------------------------------------------------------
# Each pattern runs on a materialized model and on its per-layer copy: the same outputs and gradients. A
# rebuilt W used by two graphs that are backpropagated one after the other used to raise "Trying to
# backward through the graph a second time" (the group's rebuild was one autograd node that the first
# backward freed), and a layer shared by two materialized models belonged to the second one's group only.


def _loss(y: torch.Tensor) -> torch.Tensor:
    return y.square().sum()


def _called_twice_directly(m, mat, x, x2):
    y1, y2 = m[0](x), m[0](x2)
    _loss(y1).backward()
    _loss(y2).backward()
    return [y1, y2]


def _two_group_layers_backpropagated_apart(m, mat, x, x2):
    a, b = m[0](x), m[3](x2)  # two layers of one group: one rebuild serves both
    _loss(b).backward()
    _loss(a).backward()
    return [a, b]


def _two_passes_backpropagated_in_reverse(m, mat, x, x2):
    y1, y2 = m(x), m(x2)
    _loss(y2).backward()
    _loss(y1).backward()
    return [y1, y2]


def _inside_and_outside_the_model(m, mat, x, x2):
    y, z = m(x), m[3](x2)
    _loss(y).backward()
    _loss(z).backward()
    return [y, z]


def _called_twice_in_one_pass(m, mat, x, x2):
    y = m[0](x) + m[0](x2)
    _loss(y).backward()
    return [y]


def _retain_graph(m, mat, x, x2):
    y = m(x)
    loss = _loss(y)
    loss.backward(retain_graph=True)
    loss.backward()
    return [y]


def _no_grad_then_grad(m, mat, x, x2):
    with torch.no_grad():
        y0 = m(x)
    y = m(x)
    _loss(y).backward()
    return [y0, y]


def _autograd_grad_of_some_then_backward(m, mat, x, x2):
    y = m(x)
    (g,) = torch.autograd.grad(_loss(y), [m[3].packed_cores])
    z = m(x2)
    _loss(z).backward()
    return [y, g, z]


def _gradient_penalty_then_backward(m, mat, x, x2):
    y, z = m(x), m(x2)
    (g,) = torch.autograd.grad(_loss(y), [m[0].packed_cores], create_graph=True)
    g.square().sum().backward()
    _loss(z).backward()
    return [y, g, z]


def _shared_by_two_models(m, mat, x, x2):
    torch.manual_seed(5)
    other = mat(nn.Sequential(m[0], nn.Tanh(), nn.Linear(96, 48, dtype=torch.float64), m[3]))
    y1, y2, y3 = m(x), other(x2), m(x2)
    _loss(y2).backward()
    _loss(y1).backward()
    _loss(y3).backward()
    y4 = other(x)  # a step of the second model alone
    _loss(y4).backward()
    return [y1, y2, y3, y4, *(p.grad for p in other.parameters())]


def _step_between_two_uses(m, mat, x, x2):
    optimizer = torch.optim.SGD(m.parameters(), lr=1e-3)
    y1 = m[0](x)
    _loss(y1).backward()
    optimizer.step()
    y2 = m[0](x)  # the cores changed in place: a new W
    _loss(y2).backward()
    return [y1, y2]


CALL_PATTERNS = [
    _called_twice_directly,
    _two_group_layers_backpropagated_apart,
    _two_passes_backpropagated_in_reverse,
    _inside_and_outside_the_model,
    _called_twice_in_one_pass,
    _retain_graph,
    _no_grad_then_grad,
    _autograd_grad_of_some_then_backward,
    _gradient_penalty_then_backward,
    _shared_by_two_models,
    _step_between_two_uses,
]


@pytest.mark.parametrize("pattern", CALL_PATTERNS, ids=lambda f: f.__name__.strip("_"))
def test_every_call_pattern_gives_the_per_layer_paths_values_and_gradients(pattern, monkeypatch):
    from tensornet.nn import _materialize

    builds = []
    apply = _materialize._GroupRebuild.apply
    monkeypatch.setattr(_materialize._GroupRebuild, "apply", lambda *a: builds.append(1) or apply(*a))
    x, x2 = (
        torch.randn(600, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in (1, 2)
    )
    found = []
    for mat in (materialize, lambda m: m):
        model = mat(stack(2))
        outputs = pattern(model, mat, x, x2)
        found.append((outputs, [p.grad for p in model.parameters()]))
    assert builds  # the materialized run took the group path
    (got, got_grads), (want, want_grads) = found
    for a, b in zip(got + got_grads, want + want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_a_shallow_copy_of_a_materialized_layer_uses_its_own_cores():
    # nn.DataParallel's replicas share the module's __dict__ (so its group) but hold their own parameters
    model = materialize(stack(2))
    replica = copy.copy(model[0])
    replica._parameters = {k: nn.Parameter(2.0 * v.detach()) for k, v in model[0]._parameters.items()}
    x = torch.randn(600, 48, dtype=torch.float64)
    expected = materialize(copy.deepcopy(replica), enabled=False)(x)
    model[0](x)  # the group holds the original's W
    torch.testing.assert_close(replica(x), expected, rtol=1e-12, atol=1e-12)


def test_a_layer_taken_by_a_second_materialize_leaves_the_first_models_group():
    model = materialize(stack(2))
    first = group_of(model)
    other = materialize(nn.Sequential(model[0], nn.Tanh()))
    assert group_of(other) is not first and group_of(other).layers == [model[0]]
    # the first model's group keeps its other layer, renumbered, and no longer rebuilds the taken one's W
    assert first.layers == [model[3]] and model[3].__dict__["_weight_group"] == (first, 0)
    materialize(other, enabled=False)
    assert "_weight_group" not in model[0].__dict__ and first.layers == [model[3]]
    # materializing a model removes the pass counters of submodules materialized on their own
    inner = materialize(stack(1))
    outer = materialize(nn.Sequential(inner, nn.Tanh()))
    assert not inner._forward_pre_hooks and "_tensornet_materialize" not in inner.__dict__
    assert len(outer._forward_pre_hooks) == 1 and group_of(inner).layers == [inner[0]]


@pytest.mark.parametrize("materialized", [True, False])
def test_double_backward_after_an_in_place_step_is_refused_on_both_paths(materialized):
    model = materialize(stack(2), enabled=materialized)
    x = torch.randn(600, 48, dtype=torch.float64)
    loss = model(x).square().sum()
    with torch.no_grad():
        model[0].packed_cores.mul_(1.5)
    with pytest.raises(RuntimeError, match=r"modified (by an inplace operation|in place)"):
        torch.autograd.grad(loss, [model[0].packed_cores], create_graph=True)
