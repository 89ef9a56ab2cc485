"""tensorize(model, rules, budget=b): the budget is met (exactly or just under), errors within the TT-SVD bound,
the allocation against brute force where greedy is optimal, rank caps, and every bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tensornet as tn
from tensornet.nn import Rule, TTMLinear, tensorize


def stack(*shapes: tuple[int, int], seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """Linear layers of weight shapes ``(out, in)``, random weights (full spectra)."""
    torch.manual_seed(seed)
    return nn.Sequential(*(nn.Linear(n, m, dtype=dtype) for m, n in shapes))


def cores(report) -> int:
    return sum(layer.params_after - layer.bias_params for layer in report.layers)


def step_costs(layer) -> list[int | None]:
    """Per bond, the parameters one more rank adds (None at the bond's useful maximum)."""
    sizes = [m * n for m, n in zip(layer.row_shape, layer.col_shape)]
    useful = tn.shapes.useful_ranks(sizes)
    ranks = layer.ranks
    return [
        None if ranks[k + 1] >= useful[k] else ranks[k] * sizes[k] + sizes[k + 1] * ranks[k + 2]
        for k in range(len(sizes) - 1)
    ]


def assert_budget_met(report, budget: float) -> None:
    """TT cores within the budget, and no single rank step that would still fit (just under)."""
    dense = sum(layer.shape[0] * layer.shape[1] for layer in report.layers)
    allowed = math.floor(budget * dense)
    used = cores(report)
    assert used <= allowed
    assert report.weight_ratio == pytest.approx(used / dense)
    for layer in report.layers:
        for cost in step_costs(layer):
            assert cost is None or used + cost > allowed, (layer.name, layer.ranks, cost, allowed - used)


@pytest.mark.parametrize("budget", [0.05, 0.2, 0.6, 1.0])
def test_budget_is_met_exactly_or_just_under(budget):
    model = stack((48, 16), (16, 48), (24, 16))
    x = torch.randn(5, 16, dtype=torch.float64)
    _, report = tensorize(model, [Rule("0"), Rule("1"), Rule("2")], budget=budget)
    assert all(isinstance(layer, TTMLinear) for layer in model)
    assert_budget_met(report, budget)
    assert (
        report.budget == budget
        and "greedy allocations" in report.allocation
        and f"budget {budget:g}" in str(report)
    )
    assert model(x).shape == (5, 24)


def test_measured_error_is_within_the_bound_and_matches_the_layers():
    model = stack((64, 32), (32, 64))
    weights = [layer.weight.detach().clone() for layer in model]
    _, report = tensorize(model, [Rule("*", ncores=2)], budget=0.3)
    for layer, dense, record in zip(model, weights, report.layers):
        rebuilt = tn.full(layer.weight).detach()
        error = float(torch.linalg.norm(rebuilt - dense) / torch.linalg.norm(dense))
        assert record.error == pytest.approx(error, rel=1e-9)
        assert record.error <= record.error_bound * (1 + 1e-9)  # the TT-SVD bound holds
        # and the lower bound: no TT of these ranks beats the best approximation of any one unfolding
        rows = list(record.row_shape)
        tensor = (
            dense.reshape(*rows, *record.col_shape)
            .permute(0, 2, 1, 3)
            .reshape(math.prod(rows[:1]) * record.col_shape[0], -1)
        )
        singular = torch.linalg.svdvals(tensor)
        tail = float(torch.sum(singular[record.ranks[1] :] ** 2) / torch.sum(singular**2))
        assert record.error**2 >= tail * (1 - 1e-9)
        assert record.norm == pytest.approx(float(torch.linalg.norm(dense)), rel=1e-12)
    expected = math.sqrt(
        sum((r.error * r.norm) ** 2 for r in report.layers) / sum(r.norm**2 for r in report.layers)
    )
    assert report.total_error == pytest.approx(expected, rel=1e-12)


def test_low_rank_layer_gets_no_more_than_it_needs_and_beats_uniform():
    # layer 0 is exactly TT rank 2 (bond spectra of two values), layer 1 is random: the budget goes to layer 1
    torch.manual_seed(1)
    model = stack((64, 64), (64, 64))
    exact = tn.random_ttm((4, 4, 4), (4, 4, 4), 2, seed=3)
    with torch.no_grad():
        model[0].weight.copy_(torch.as_tensor(tn.full(exact)))
    _, report = tensorize(model, [Rule("*")], budget=0.25)
    assert all(r <= 2 for r in report.layers[0].ranks)
    assert report.layers[0].error < 1e-10
    uniform_model = stack((64, 64), (64, 64))
    with torch.no_grad():
        uniform_model[0].weight.copy_(torch.as_tensor(tn.full(exact)))
    # the largest uniform rank whose cores fit the same parameters
    dense = 2 * 64 * 64
    rank = max(r for r in range(1, 17) if 2 * tn.random_ttm((4, 4, 4), (4, 4, 4), r).nparams <= 0.25 * dense)
    _, uniform = tensorize(uniform_model, [Rule("*", rank=rank)])
    assert cores(uniform) <= 0.25 * dense
    assert report.total_error < uniform.total_error


def brute_force(spectra, sizes, allowed):
    """The least total bound over all single-bond rank pairs within ``allowed`` (2-core layers)."""
    best = math.inf
    for ranks in itertools.product(*(range(1, len(s) + 1) for s in spectra)):
        if sum(r * sum(sizes) for r in ranks) <= allowed:
            best = min(best, sum(float(np.sum(s[r:] ** 2)) for s, r in zip(spectra, ranks)))
    return best


@settings(max_examples=15, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 2**16), min_size=2, max_size=3),
    decay=st.floats(0.3, 3.0),
    budget=st.floats(0.1, 1.0),
)
def test_greedy_is_optimal_when_every_step_costs_the_same(seeds, decay, budget):
    # 2-core layers of equal core sizes: each rank step adds m_1 n_1 + m_2 n_2 parameters, so the greedy is
    # exact for the bound; checked against every rank combination
    torch.manual_seed(seeds[0])
    model = nn.Sequential(*(nn.Linear(8, 8, bias=False, dtype=torch.float64) for _ in seeds))
    spectra = []
    with torch.no_grad():
        for layer, seed in zip(model, seeds):
            gen = torch.Generator().manual_seed(seed)
            u, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
            v, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))
            s = torch.exp(-decay * torch.arange(4, dtype=torch.float64)) * (1 + torch.rand(1, generator=gen))
            unfolding = u[:, :4] @ torch.diag(s) @ v.T  # (m1 n1, m2 n2) = (16, 4) of rank 4
            # the TTM tensor (m1, n1, m2, n2) back to the (M, N) = (m1 m2, n1 n2) matrix
            layer.weight.copy_(unfolding.reshape(4, 4, 2, 2).permute(0, 2, 1, 3).reshape(8, 8))
            spectra.append(s.numpy())
    allowed = math.floor(budget * 64 * len(seeds))
    if 20 * len(seeds) > allowed:
        return  # below rank 1 everywhere: the error case has its own test
    _, report = tensorize(model, [Rule("*", in_shape=(4, 2), out_shape=(4, 2))], budget=budget)
    got = sum(float(np.sum(s[r.ranks[1] :] ** 2)) for s, r in zip(spectra, report.layers))
    assert got == pytest.approx(brute_force(spectra, (16, 4), allowed), rel=1e-9, abs=1e-12)
    assert_budget_met(report, budget)


def converted_within_budget(model, rules, budget, dtype, **options) -> bool:
    """Convert under ``budget`` and check the report; False when the budget is below rank 1 (refused)."""
    try:
        _, report = tensorize(model, rules, budget=budget, **options)
    except ValueError as error:
        assert "rank 1 at every bond already takes" in str(error)
        return False
    assert_budget_met(report, budget)
    for record in report.layers:
        assert record.error <= record.error_bound * (1 + 1e-5) + 1e-6  # float32 layers: rounding of W
    assert all(layer.weight.dtype == dtype for layer in model)
    return True


@settings(max_examples=10, deadline=None)
@given(
    shapes=st.lists(
        st.tuples(st.sampled_from([8, 12, 16, 24]), st.sampled_from([8, 12, 16, 24])), min_size=1, max_size=3
    ),
    budget=st.floats(0.15, 1.0),
    seed=st.integers(0, 1000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_budget_property(shapes, budget, seed, dtype):
    model = stack(*shapes, seed=seed, dtype=dtype)
    rules = [Rule(str(i), ncores=2) for i in range(len(shapes))]
    converted_within_budget(model, rules, budget, dtype)


def test_allocation_is_deterministic_and_scale_free():
    ranks = []
    for scale in (1.0, 1e-150, 1e150):
        model = stack((32, 32), (32, 32), (32, 32))
        with torch.no_grad():
            for i, layer in enumerate(model):
                layer.weight.mul_(scale * (1 + i))
        _, report = tensorize(model, [Rule("*", ncores=2)], budget=0.3)
        ranks.append([layer.ranks for layer in report.layers])
        assert all(math.isfinite(layer.error) for layer in report.layers)
    assert ranks[0] == ranks[1] == ranks[2]


def test_rule_rank_caps_the_budget_ranks():
    model = stack((64, 64), (64, 64))
    _, report = tensorize(model, [Rule("0", rank=2), Rule("1", rank=(3, 5))], budget=0.9)
    assert max(report.layers[0].ranks) <= 2
    assert report.layers[1].ranks[1] <= 3 and report.layers[1].ranks[2] <= 5
    assert cores(report) <= 0.9 * 2 * 64 * 64


def test_shapes_from_the_rule_and_bias_kept():
    model = stack((64, 32), (32, 64))
    _, report = tensorize(
        model, [Rule("0", in_shape=(4, 8), out_shape=(8, 8)), Rule("1", bias=False)], budget=0.5
    )
    assert report.layers[0].row_shape == (8, 8) and report.layers[0].col_shape == (4, 8)
    assert model[0].bias is not None and model[1].bias is None
    assert report.layers[0].bias_params == 64 and report.layers[1].bias_params == 0


def test_too_small_budget_names_the_smallest_that_fits():
    model = stack((64, 64), (64, 64))
    before = [layer.weight.clone() for layer in model]
    with pytest.raises(
        ValueError, match=r"rank 1 at every bond already takes 96; give budget >= 0\.0118"
    ) as info:
        tensorize(model, [Rule("*")], budget=0.001)
    assert all(isinstance(layer, nn.Linear) for layer in model)
    assert all(torch.equal(layer.weight, w) for layer, w in zip(model, before))
    smallest = float(str(info.value).rsplit(">= ", 1)[1].split(" ")[0])
    _, report = tensorize(model, [Rule("*")], budget=smallest)
    assert all(r == 1 for layer in report.layers for r in layer.ranks)


@pytest.mark.parametrize("budget", [0, 0.0, -0.1, 1.0001, 2, math.nan, math.inf])
def test_budget_outside_the_interval_is_refused(budget):
    model = stack((16, 16))
    with pytest.raises(ValueError, match=r"tensorize: budget must be in \(0, 1\]"):
        tensorize(model, Rule("*"), budget=budget)
    assert isinstance(model[0], nn.Linear)


@pytest.mark.parametrize("budget", ["0.5", True, [0.5], 1j])
def test_non_numeric_budget_is_refused(budget):
    with pytest.raises(TypeError, match="tensorize: budget must be a real number"):
        tensorize(stack((16, 16)), Rule("*"), budget=budget)


def test_rules_that_do_not_fit_a_budget_are_refused():
    class WithEmbedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(16, 16)
            self.out = nn.Linear(16, 16)

    with pytest.raises(ValueError, match="neither rank nor eps; give one, or a budget"):
        tensorize(stack((16, 16)), Rule("*"))
    with pytest.raises(ValueError, match="with a budget the budget sets the accuracy; drop eps"):
        tensorize(stack((16, 16)), Rule("*", eps=0.1), budget=0.5)
    with pytest.raises(ValueError, match="builds from scratch, but a budget chooses ranks"):
        tensorize(stack((16, 16)), Rule("*", rank=2, from_weights=False), budget=0.5)
    model = WithEmbedding()
    with pytest.raises(
        ValueError, match=r"layer embed \(Embedding\): a budget allocates the ranks of Linear"
    ):
        tensorize(model, Rule("*"), budget=0.5)
    assert isinstance(model.embed, nn.Embedding) and isinstance(model.out, nn.Linear)
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\).*in_shape"):
        tensorize(stack((16, 16)), Rule("*", in_shape=(3, 5)), budget=0.5)


def test_gpt2_conv1d_layers_under_a_budget():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 50, (2, 8))
    _, report = tensorize(model, [Rule("*.mlp.c_fc"), Rule("*.mlp.c_proj")], budget=0.4)
    assert [layer.name for layer in report.layers] == [
        f"transformer.h.{i}.mlp.{n}" for i in range(2) for n in ("c_fc", "c_proj")
    ]
    assert_budget_met(report, 0.4)
    assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_no_more_error_than_uniform_ranks_of_the_same_size(seed):
    # layers of different spectra (scaled, smoothed, random): uniform rank 4 against its own budget
    torch.manual_seed(seed)
    shapes = ((64, 32), (32, 64), (64, 64))

    def build() -> nn.Sequential:
        model = stack(*shapes, seed=seed)
        with torch.no_grad():
            model[1].weight.mul_(3.0)
            model[2].weight.copy_(torch.cumsum(torch.cumsum(model[2].weight, 0), 1) / 64)  # decaying spectra
        return model

    _, uniform = tensorize(build(), [Rule("*", rank=4)])
    _, report = tensorize(build(), [Rule("*")], budget=uniform.weight_ratio)
    assert cores(report) <= cores(uniform)
    assert report.total_error <= uniform.total_error * (1 + 1e-9)
    assert_budget_met(report, uniform.weight_ratio)


def test_conversion_reuses_the_decomposition_the_budget_measured(monkeypatch):
    # every distinct (layer, ranks) is decomposed once: the chosen TTM is not computed again to convert
    calls = []
    original = tn.ttm_svd

    def counting(a, *args, **kwargs):
        calls.append((hash(np.asarray(a).tobytes()), tuple(kwargs.get("max_rank") or ())))
        return original(a, *args, **kwargs)

    monkeypatch.setattr(tn, "ttm_svd", counting)
    model = stack((64, 32), (32, 64), (48, 16))
    weights = [layer.weight.detach().clone() for layer in model]
    _, report = tensorize(model, [Rule("*")], budget=0.3)
    assert len(calls) == len(set(calls)) >= len(report.layers)
    for layer, dense, record in zip(model, weights, report.layers):  # and the layers hold that TTM
        rebuilt = tn.full(layer.weight).detach()
        assert record.error == pytest.approx(
            float(torch.linalg.norm(rebuilt - dense) / torch.linalg.norm(dense)), rel=1e-9
        )


class TwoBranches(nn.Module):
    """``a(x * sa) + b(x * sb)``: two layers of equal weights' norm whose inputs differ in scale."""

    def __init__(self, sa: float, sb: float, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(32, 64, dtype=torch.float64)
        self.b = nn.Linear(32, 64, dtype=torch.float64)
        self.sa, self.sb = sa, sb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x * self.sa) + self.b(x * self.sb)


def output_error(model: nn.Module, dense: list[torch.Tensor], x: torch.Tensor, scales) -> float:
    """``sum_l ||(W_l - W~_l) X_l^T||_F^2`` of the two branches on the inputs ``x``."""
    total = 0.0
    for layer, weight, scale in zip((model.a, model.b), dense, scales):
        inputs = x * scale
        total += float(torch.sum((inputs @ (weight - tn.full(layer.weight).detach()).T) ** 2))
    return total


@pytest.mark.parametrize("scale", [1.0, 1e-150, 1e150])
def test_calibration_spends_the_budget_where_the_outputs_are(scale):
    # branch b sees inputs 100x smaller: the weights' error splits the budget evenly, the output error
    # gives a the ranks; its output error on the calibration inputs is lower than both alternatives'
    torch.manual_seed(5)
    x = torch.randn(3, 8, 32, dtype=torch.float64)
    batches = [x[0] * scale, (x[1] * scale,), {"x": x[2] * scale}]  # the three forms of a batch
    models = {key: TwoBranches(1.0, 0.01) for key in ("plain", "calibrated", "uniform")}
    dense = [models["plain"].a.weight.detach().clone(), models["plain"].b.weight.detach().clone()]
    _, uniform = tensorize(models["uniform"], [Rule("*", rank=4, ncores=2)])
    _, plain = tensorize(models["plain"], [Rule("*", ncores=2)], budget=uniform.weight_ratio)
    _, report = tensorize(
        models["calibrated"], [Rule("*", ncores=2)], budget=uniform.weight_ratio, calibration=batches
    )
    assert_budget_met(report, uniform.weight_ratio)
    assert "output error on the calibration inputs" in report.allocation
    assert "weight error" in plain.allocation
    a, b = (layer.ranks[1] for layer in report.layers)
    assert a > b and a > plain.layers[0].ranks[1]
    inputs = torch.cat([x[0], x[1], x[2]])
    errors = {key: output_error(m, dense, inputs, (1.0, 0.01)) for key, m in models.items()}
    assert errors["calibrated"] < errors["plain"] and errors["calibrated"] < errors["uniform"]


def test_calibration_restores_the_mode_and_removes_its_hooks():
    model = TwoBranches(1.0, 1.0).train()
    model.b.eval()
    seen = []
    old = model.a
    old.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    tensorize(model, [Rule("a", ncores=2)], budget=0.5, calibration=torch.randn(4, 32, dtype=torch.float64))
    assert seen == [False]  # the calibration pass ran in eval mode
    assert model.training and not model.b.training
    assert len(old._forward_pre_hooks) == 1 and not model.b._forward_pre_hooks  # the user's hook only


def test_calibration_gram_is_the_inputs_gram():
    from tensornet.nn._calibration import record_grams

    model = TwoBranches(1.0, 3.0)
    batches = [torch.randn(5, 32, dtype=torch.float64), torch.randn(2, 3, 32, dtype=torch.float64) * 7]
    grams = record_grams(model, [("a", model.a), ("b", model.b)], batches)
    for name, scale in (("a", 1.0), ("b", 3.0)):
        inputs = torch.cat([batches[0], batches[1].reshape(-1, 32)]) * scale
        gram = grams[name]
        assert gram.rows == 11
        assert gram.scale == pytest.approx(float(inputs.abs().max()), rel=1e-15)
        torch.testing.assert_close(gram.matrix * gram.scale**2, inputs.T @ inputs, rtol=1e-12, atol=0)


def test_bad_calibration_is_refused_and_the_model_kept():
    model = TwoBranches(1.0, 1.0)
    x = torch.randn(4, 32, dtype=torch.float64)
    with pytest.raises(ValueError, match="calibration is used only to choose the ranks under a budget"):
        tensorize(model, [Rule("*", rank=2)], calibration=x)
    with pytest.raises(ValueError, match="calibration is an empty list"):
        tensorize(model, [Rule("*")], budget=0.5, calibration=[])
    with pytest.raises(TypeError, match=r"calibration must be the model's input .* got str"):
        tensorize(model, [Rule("*")], budget=0.5, calibration="text")
    with pytest.raises(TypeError, match="calibration batch 1 is a int"):
        tensorize(model, [Rule("*")], budget=0.5, calibration=[x, 3])
    with pytest.raises(ValueError, match="non-finite activations at the input of layer a"):
        tensorize(model, [Rule("*")], budget=0.5, calibration=x * math.inf)

    class OnlyA(TwoBranches):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x)

    only = OnlyA(1.0, 1.0)
    with pytest.raises(ValueError, match=r"calibration batches never reached layer\(s\) b"):
        tensorize(only, [Rule("*")], budget=0.5, calibration=x)
    assert isinstance(model.a, nn.Linear) and isinstance(only.b, nn.Linear)
    assert not model.a._forward_pre_hooks and not only.a._forward_pre_hooks


@settings(max_examples=10, deadline=None)
@given(
    dims=st.lists(st.sampled_from([8, 12, 16, 24]), min_size=2, max_size=4),
    budget=st.floats(0.15, 1.0),
    seed=st.integers(0, 1000),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_calibrated_budget_property(dims, budget, seed, dtype):
    # a chain of layers on random inputs: the budget is met, the errors within the bound, the layers' dtype
    model = stack(*zip(dims[1:], dims[:-1]), seed=seed, dtype=dtype)
    x = torch.randn(2, 6, dims[0], generator=torch.Generator().manual_seed(seed), dtype=dtype)
    rules = [Rule(str(i), ncores=2) for i in range(len(dims) - 1)]
    if converted_within_budget(model, rules, budget, dtype, calibration=[x[0], x[1]]):
        assert model(x).shape == (2, 6, dims[-1])
