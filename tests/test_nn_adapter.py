"""TT adapters: adapt, merge, unmerge, adapter_state_dict, save_adapter/load_adapter."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_nn_linear import compile_marks

import tensornet as tn
from tensornet.nn import TTAdapter, TTMLinear

nn = torch.nn


def mlp(seed: int = 0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(24, 30, dtype=dtype),
        nn.Tanh(),
        nn.Linear(30, 24, dtype=dtype),
        nn.Linear(24, 6, dtype=dtype),
    )


def train(model: nn.Module, x: torch.Tensor, steps: int = 3, lr: float = 1e-2, optimizer=None):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    return optimizer


@pytest.mark.filterwarnings("ignore::tensornet.nn.RankClipWarning")  # small layers clip the rank
@settings(deadline=None)
@given(
    in_f=st.sampled_from([6, 12, 24]),
    out_f=st.sampled_from([4, 10, 30]),
    rank=st.integers(1, 4),
    ncores=st.integers(1, 3),
    seed=st.integers(0, 100),
)
def test_adapted_model_equals_base_bit_for_bit_at_step_zero(in_f, out_f, rank, ncores, seed):
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(in_f, out_f), nn.ReLU(), nn.Linear(out_f, 3))
    x = torch.randn(4, 5, in_f) * 10.0 ** (seed % 7 - 3)  # any scale of the input
    expected = base(x)
    tn.nn.adapt(base, ["0", "2"], rank=rank, ncores=ncores)
    assert torch.equal(base(x), expected)


def test_last_core_zero_others_orthonormal_and_gradient_reaches_the_zero_core():
    model = tn.nn.adapt(mlp(), ["0"], rank=3)
    delta = model[0].delta
    *first, last = delta.cores
    assert not last.any()
    interface = first[0].detach().reshape(-1, first[0].shape[-1])
    for core in first[1:]:  # left-orthonormal interface: ||delta W|| = scaling ||G_d||
        interface = (interface @ core.detach().reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    np.testing.assert_allclose(interface.T @ interface, np.eye(interface.shape[1]), atol=1e-5)
    model(torch.randn(8, 24)).square().sum().backward()
    grads = delta.core_grads
    assert grads[-1].abs().sum() > 0  # the zero core gets a gradient: the update can train
    assert all(not g.any() for g in grads[:-1])  # (the others wait for it, as LoRA's A waits for B)


def test_only_adapter_parameters_train_base_weights_unchanged_bit_for_bit():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tn.nn.adapt(model, r".*[02]", rank=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"0.delta.packed_cores", "2.delta.packed_cores"}
    x = torch.randn(16, 24)
    y0 = model(x)
    train(model, x, steps=4)
    assert not torch.equal(model(x), y0)  # it trained
    state = model.state_dict()
    assert torch.equal(state["3.weight"], before["3.weight"])  # not targeted: frozen too (PEFT's default)
    for key, value in before.items():
        k = key if key.startswith("3") else key.replace(".", ".base.", 1)
        assert torch.equal(state[k], value), key


def test_merge_unmerge_round_trip_and_merged_forward_is_the_base_layer():
    model = tn.nn.adapt(mlp(), ["0", "2"], rank=3)
    x = torch.randn(10, 24)
    train(model, x)
    weights = [model[0].base.weight.clone(), model[2].base.weight.clone()]
    y = model(x)
    tn.nn.merge(model)
    assert model[0].merged and model[2].merged
    calls = []
    handle = model[0].delta.register_forward_hook(lambda *a: calls.append(1))
    merged = model(x)
    handle.remove()
    assert not calls  # merged: the update is not run
    np.testing.assert_allclose(merged.detach(), y.detach(), rtol=1e-5, atol=1e-6)
    tn.nn.merge(model)  # idempotent: merged adapters are left as they are
    np.testing.assert_allclose(model(x).detach(), merged.detach())
    tn.nn.unmerge(model)
    assert not model[0].merged
    for w, adapter in zip(weights, (model[0], model[2])):
        # one rounding of float32 per entry: W + d - d
        np.testing.assert_allclose(
            adapter.base.weight.detach(), w, rtol=0, atol=4 * float(w.abs().max()) * 2**-23
        )
    np.testing.assert_allclose(model(x).detach(), y.detach(), rtol=1e-5, atol=1e-6)


def test_unmerge_refuses_after_the_update_changed_and_changes_nothing():
    model = tn.nn.adapt(mlp(), ["0", "2"], rank=3)
    x = torch.randn(10, 24)
    train(model, x, steps=1)
    tn.nn.merge(model)
    with torch.no_grad():
        model[2].delta.packed_cores.add_(1.0)
    weight = model[0].base.weight.clone()
    with pytest.raises(RuntimeError, match=r"unmerge: the update of 2 changed after merge"):
        tn.nn.unmerge(model)
    assert torch.equal(model[0].base.weight, weight) and model[0].merged


def test_adapter_save_load_gives_the_same_outputs(tmp_path):
    model = tn.nn.adapt(mlp(), ["0", "2"], rank=3, alpha=4.0)
    x = torch.randn(10, 24)
    train(model, x)
    path = tn.nn.save_adapter(tmp_path / "a.safetensors", model)
    assert path.stat().st_size < 4096  # the adapters alone, not the model
    fresh = tn.nn.adapt(mlp(), ["0", "2"], rank=3, alpha=4.0)  # same base, new random adapters
    assert not torch.equal(fresh(x) - model(x), torch.zeros(10, 6))
    tn.nn.load_adapter(path, fresh)
    assert torch.equal(fresh(x), model(x))
    sd = tn.nn.adapter_state_dict(model)
    assert set(sd) == {f"{n}.delta.{k}" for n in "02" for k in ("packed_cores", "_extra_state")}
    other = tn.nn.adapt(mlp(), ["0", "2"], rank=3, alpha=4.0)
    other.load_state_dict(sd, strict=False)
    assert torch.equal(other(x), model(x))
    with pytest.raises(FileExistsError, match="save_adapter"):
        tn.nn.save_adapter(path, model)


def test_load_adapter_rebuilds_truncated_ranks_and_refuses_damaged_files(tmp_path):
    model = tn.nn.adapt(mlp(), ["0", "2"], rank=4)
    x = torch.randn(10, 24)
    train(model, x, steps=5)
    tn.nn.truncate(model, budget=0.5)
    path = tn.nn.save_adapter(tmp_path / "a.safetensors", model)
    fresh = tn.nn.adapt(mlp(), ["0", "2"], rank=4)
    tn.nn.load_adapter(path, fresh)
    assert fresh[0].delta.ranks == model[0].delta.ranks
    assert torch.equal(fresh(x), model(x))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the cores
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="missing or damaged"):
        tn.nn.load_adapter(bad, fresh)
    only_one = tn.nn.adapt(mlp(), ["0"], rank=4)
    with pytest.raises(ValueError, match="holds an adapter for 2, which the model has not"):
        tn.nn.load_adapter(path, only_one)
    plain = tmp_path / "plain.safetensors"
    tn.save(plain, tn.random_tt((2, 3), 2, seed=0))
    with pytest.raises(ValueError, match="no tensornet adapter header"):
        tn.nn.load_adapter(plain, fresh)


def test_bad_arguments_raise_and_change_nothing():
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"adapt: targets \['q_proj'\] matches no module"):
        tn.nn.adapt(model, ["q_proj"], rank=2)
    with pytest.raises(ValueError, match="adapt: rank must be >= 1, got 0"):
        tn.nn.adapt(model, ["0"], rank=0)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        tn.nn.adapt(model, ["0"], rank=(2, 0))
    with pytest.raises(TypeError, match=r"matches 1, a Tanh"):
        tn.nn.adapt(model, ["0", "1"], rank=2)
    with pytest.raises(ValueError, match="alpha"):
        tn.nn.adapt(model, ["0"], rank=2, alpha=0)
    with pytest.raises(ValueError, match="dropout"):
        tn.nn.adapt(model, ["0"], rank=2, dropout=1.0)
    with pytest.raises(TypeError, match="targets must be"):
        tn.nn.adapt(model, 3, rank=2)
    with pytest.raises(ValueError, match="targets is empty"):
        tn.nn.adapt(model, [], rank=2)
    with pytest.raises(ValueError, match="not a valid regular expression"):
        tn.nn.adapt(model, "(", rank=2)
    with pytest.raises(ValueError, match="in_shape"):
        tn.nn.adapt(model, ["0"], rank=2, shapes=((5, 6), (5, 5)))
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen, nothing swapped
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="merge: the model has no TT adapters"):
        tn.nn.merge(model)
    tn.nn.adapt(model, ["0"], rank=2)
    with pytest.raises(ValueError, match="adapt: 0 is already adapted"):
        tn.nn.adapt(model, ["0"], rank=2)


def test_shapes_dropout_and_a_second_adapt():
    model = tn.nn.adapt(mlp(), ["0"], rank=2, shapes={"0": ((5, 6), (4, 6))}, dropout=0.5)
    assert model[0].delta.out_shape == (5, 6) and model[0].delta.in_shape == (4, 6)
    assert isinstance(model[0].dropout, nn.Dropout)
    tn.nn.adapt(model, ["2"], rank=2)  # earlier adapters stay trainable
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "0.delta.packed_cores",
        "2.delta.packed_cores",
    }
    assert [n for n, _ in tn.nn.adapters(model)] == ["0", "2"]


def test_materialized_adapted_model_matches_per_layer_path():
    x = torch.randn(64, 24)
    models = [tn.nn.adapt(mlp(), ["0", "2"], rank=3) for _ in range(2)]
    tn.nn.materialize(models[1])
    for m in models:
        with torch.no_grad():  # a nonzero update, the same in both
            torch.manual_seed(3)
            for _, a in tn.nn.adapters(m):
                a.delta.packed_cores.copy_(torch.randn_like(a.delta.packed_cores))
    outs = [m(x) for m in models]
    grads = [
        torch.autograd.grad(o.square().sum(), [a.delta.packed_cores for _, a in tn.nn.adapters(m)])
        for o, m in zip(outs, models)
    ]
    # float32 sums in another order (the group's batched rebuild): relative to the output scale
    scale = float(outs[0].detach().abs().max())
    np.testing.assert_allclose(outs[0].detach(), outs[1].detach(), rtol=1e-5, atol=1e-5 * scale)
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_autocast_bf16_adapter_runs_in_bf16_like_nn_linear():
    model = tn.nn.adapt(mlp(), ["0", "2"], rank=3)
    x = torch.randn(8, 24)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert model[0].delta.packed_cores.grad.dtype == torch.float32
    # bf16 keeps 8 bits: a few percent of the output scale, as for nn.Linear under autocast
    np.testing.assert_allclose(
        y.float().detach(), reference.detach(), atol=0.05 * float(reference.detach().abs().max())
    )


@compile_marks
def test_torch_compile_adapted_model_matches_eager():
    model = tn.nn.adapt(mlp(), ["0", "2"], rank=3)
    with torch.no_grad():
        for _, a in tn.nn.adapters(model):
            a.delta.packed_cores.normal_()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(6, 24)
    params = [p for p in model.parameters() if p.requires_grad]
    eager = torch.autograd.grad(model(x).square().sum(), params)
    y = compiled(x)
    got = torch.autograd.grad(y.square().sum(), params)
    np.testing.assert_allclose(y.detach(), model(x).detach(), rtol=1e-5, atol=1e-6)
    for a, b in zip(got, eager):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_hf_gpt2_adapted_on_conv1d_layers():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=16)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (2, 10))
    expected = model(ids).logits
    tn.nn.adapt(model, ["c_attn", "c_fc", "c_proj"], rank=4)
    names = [n for n, _ in tn.nn.adapters(model)]
    assert len(names) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    assert torch.equal(model(ids).logits, expected)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.1 * sum(p.numel() for p in model.parameters())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()
    tuned = model(ids).logits
    assert not torch.allclose(tuned, expected)
    tn.nn.merge(model)
    np.testing.assert_allclose(model(ids).logits.detach(), tuned.detach(), rtol=1e-4, atol=1e-5)
    tn.nn.unmerge(model)
    np.testing.assert_allclose(model(ids).logits.detach(), tuned.detach(), rtol=1e-4, atol=1e-5)


def test_scaling_is_alpha_over_rank_as_lora():
    model = tn.nn.adapt(mlp(), ["0"], rank=4, alpha=16.0)
    assert model[0].scaling == 4.0
    with torch.no_grad():
        model[0].delta.packed_cores.normal_()
    x = torch.randn(3, 24)
    expected = model[0].base(x) + 4.0 * model[0].delta(x)
    # the folded forward (W + s dW) and the two products sum in other orders: float32 rounding
    scale = float(expected.detach().abs().max())
    np.testing.assert_allclose(model[0](x).detach(), expected.detach(), rtol=1e-6, atol=1e-6 * scale)
    model[0].dropout = nn.Dropout(0.5)  # the unfolded path; inactive in eval mode
    model.eval()
    np.testing.assert_allclose(model[0](x).detach(), expected.detach(), rtol=1e-6, atol=1e-6 * scale)
    model.train()
    assert not torch.allclose(model[0](x), expected)  # dropout on the update's input in training
    dense = model[0].delta_weight()
    np.testing.assert_allclose(dense, 4.0 * tn.full(model[0].delta.weight).detach(), rtol=1e-6)
    assert isinstance(model[0], TTAdapter) and isinstance(model[0].delta, TTMLinear)
    assert math.isclose(model[0].delta.nparams, model[0].delta.packed_cores.numel())


def _ddp_model() -> nn.Module:
    model = tn.nn.adapt(mlp(), ["0", "2"], rank=3)
    with torch.no_grad():  # a nonzero update, so that every core gets a gradient
        torch.manual_seed(5)
        for _, adapter in tn.nn.adapters(model):
            adapter.delta.packed_cores.normal_()
    return model


def _ddp_worker(rank: int, store: str, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_ddp_model())  # frozen base: only adapters sync
        x = torch.randn(8, 24, generator=torch.Generator().manual_seed(1)).chunk(2)[rank]
        model(x).square().mean().backward()
        if rank == 0:
            queue.put([p.grad.numpy().copy() for p in model.module.parameters() if p.requires_grad])
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ddp_gloo_two_processes_adapter_gradients_equal_single_process(tmp_path):
    import torch.multiprocessing as mp

    model = _ddp_model()
    x = torch.randn(8, 24, generator=torch.Generator().manual_seed(1))
    model(x).square().mean().backward()
    expected = [p.grad.numpy() for p in model.parameters() if p.requires_grad]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    mp.start_processes(
        _ddp_worker, args=(str(tmp_path / "store"), queue), nprocs=2, join=True, start_method="spawn"
    )
    got = queue.get()
    assert len(got) == len(expected) == 2
    for a, b in zip(got, expected):  # float32 sums of two halves: relative to the gradient's scale
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(b).max()))


def test_adapt_refuses_a_layer_whose_weight_is_tied_to_another_and_changes_nothing():
    embed = nn.Embedding(16, 8)
    head = nn.Linear(8, 16, bias=False)
    head.weight = embed.weight  # tied, as GPT-2's lm_head and wte
    model = nn.Sequential(embed, nn.Linear(8, 8), head)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"adapt: 2's weight is shared with 0\.weight.*Untie"):
        tn.nn.adapt(model, ["1", "2"], rank=2)
    assert all(p.requires_grad for p in model.parameters())
    assert not list(tn.nn.adapters(model))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    same = nn.Linear(8, 8)
    twice = nn.Sequential(same, nn.Tanh(), same)  # one layer under two names: also a shared weight
    with pytest.raises(ValueError, match=r"adapt: 0's weight is shared with 2\.weight"):
        tn.nn.adapt(twice, ["0"], rank=2)


def test_hf_gpt2_tied_lm_head_is_refused():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32, n_positions=8)
    model = transformers.GPT2LMHeadModel(config)
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.raises(ValueError, match=r"lm_head's weight is shared with transformer\.wte\.weight"):
        tn.nn.adapt(model, ["lm_head"], rank=4)
    assert not list(tn.nn.adapters(model))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_unmerge_works_on_a_deepcopy_or_pickled_copy_of_a_merged_model(how):
    import copy
    import io

    model = tn.nn.adapt(mlp(), ["0", "2"], rank=3)
    x = torch.randn(10, 24)
    weights = [model[0].base.weight.clone(), model[2].base.weight.clone()]
    train(model, x)
    tn.nn.merge(model)
    if how == "deepcopy":
        twin = copy.deepcopy(model)
    else:  # a whole-module pickle: the user's own choice (tensornet's files never pickle)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        twin = torch.load(buffer, weights_only=False)
    assert twin[0].merged and twin[2].merged
    tn.nn.unmerge(twin)
    for w, adapter in zip(weights, (twin[0], twin[2])):
        np.testing.assert_allclose(
            adapter.base.weight.detach(), w, rtol=0, atol=4 * float(w.abs().max()) * 2**-23
        )
    with torch.no_grad():  # the copy's check still sees a changed update
        tn.nn.merge(twin)
        twin[0].delta.packed_cores.mul_(2.0)
    with pytest.raises(RuntimeError, match="unmerge: the update of 0 changed after merge"):
        tn.nn.unmerge(twin)


def _rewrite(src, dst, edit):
    """A copy of the adapter file ``src`` at ``dst`` whose JSON header went through ``edit``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as handle:
        header = handle.metadata()["tensornet_adapter"]
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    text = edit(json.loads(header))
    save_file(
        tensors, str(dst), metadata={"tensornet_adapter": text if isinstance(text, str) else json.dumps(text)}
    )
    return dst


def _set(path, value):
    def edit(header):
        target = header
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return header

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            _set(("adapters", "0", "scaling"), float("nan")),
            r"adapters\.0\.scaling must be a finite number > 0",
        ),
        (_set(("adapters", "2", "scaling"), "big"), r"adapters\.2\.scaling must be a finite number > 0"),
        (_set(("adapters", "2", "scaling"), -1.0), r"adapters\.2\.scaling must be a finite number > 0"),
        (_set(("adapters", "2", "core_shapes"), [[1, 5, 3, 2], [2, 6, 8, 1]]), r"adapters\.2\.core_shapes"),
        # the same sizes and element count, the factors swapped: only the layer's shapes tell
        (
            _set(("adapters", "0", "core_shapes"), [[1, 6, 6, 2], [2, 5, 4, 1]]),
            r"adapters\.0\.core_shapes factors 0",
        ),
        (_set(("format_version",), "1"), "format_version must be an int"),
        (_set(("adapters", "2", "in_features"), True), r"adapters\.2\.in_features must be"),
        (_set(("adapters",), []), "adapters must be an object"),
        (lambda header: "{not json", "header is not valid JSON"),
    ],
)
def test_load_adapter_validates_the_whole_header_and_loads_nothing_on_error(tmp_path, edit, match):
    model = tn.nn.adapt(mlp(), ["0", "2"], rank=2, shapes={"0": ((5, 6), (4, 6)), "2": ((3, 8), (5, 6))})
    train(model, torch.randn(10, 24))
    path = tn.nn.save_adapter(tmp_path / "a.safetensors", model)
    fresh = tn.nn.adapt(mlp(), ["0", "2"], rank=2, shapes={"0": ((5, 6), (4, 6)), "2": ((3, 8), (5, 6))})
    state = {k: v.clone() for k, v in fresh.state_dict().items()}
    scalings = [a.scaling for _, a in tn.nn.adapters(fresh)]
    bad = _rewrite(path, tmp_path / "bad.safetensors", edit)
    with pytest.raises(ValueError, match=rf"load_adapter: {re.escape(str(bad))}.*{match}"):
        tn.nn.load_adapter(bad, fresh)
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())  # all or nothing
    assert [a.scaling for _, a in tn.nn.adapters(fresh)] == scalings
    tn.nn.load_adapter(
        _rewrite(path, tmp_path / "good.safetensors", lambda h: h), fresh
    )  # the same, unedited
    x = torch.randn(4, 24)
    assert torch.equal(fresh(x), model(x))


def test_adapt_refuses_shapes_keys_that_name_no_target_and_changes_nothing():
    model = mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = {"0": ((5, 6), (4, 6)), "layer2": ((5, 6), (4, 6)), "3": ((2, 3), (4, 6))}
    with pytest.raises(
        ValueError, match=r"adapt: shapes has keys \['3', 'layer2'\] that name no target.*\['0', '2'\]"
    ):
        tn.nn.adapt(model, ["0", "2"], rank=2, shapes=shapes)
    assert not list(tn.nn.adapters(model)) and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_errors_name_the_function_the_user_called(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 16))
    with pytest.raises(ValueError, match=r"^adapt: 0: rank has 3 entries but the layer has 3 cores"):
        tn.nn.adapt(m, ["0"], rank=(2, 3, 4))
    with pytest.raises(ValueError, match=r"^adapt: 0: out_shape \(4, 5\) multiplies to 20"):
        tn.nn.adapt(m, ["0"], rank=2, shapes=((4, 5), (4, 4)))
    with pytest.raises(ValueError, match=r"^save_adapter: the model has no TT adapters"):
        tn.nn.save_adapter(tmp_path / "a.safetensors", m)
    assert not (tmp_path / "a.safetensors").exists()
    for call in (tn.nn.adapter_state_dict, tn.nn.merge, tn.nn.unmerge):
        with pytest.raises(TypeError, match=rf"^{call.__name__}: expected an nn.Module, got int"):
            call(3)
    with pytest.raises(TypeError, match=r"^save_adapter: expected an nn.Module, got int"):
        tn.nn.save_adapter(tmp_path / "a.safetensors", 3)
    tn.nn.save_adapter(tmp_path / "b.safetensors", tn.nn.adapt(m, ["0"], rank=2))
    with pytest.raises(TypeError, match=r"^load_adapter: expected an nn.Module, got int"):
        tn.nn.load_adapter(tmp_path / "b.safetensors", 3)
