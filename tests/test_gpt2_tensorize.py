"""tensornet.gpt2.tensorize / lowrank: the paper's parameter counts, exact conversion, save/load, errors."""

from __future__ import annotations

import contextlib
import copy
import json
import os

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

import tensornet as tn
from tensornet.gpt2 import (
    LowRankLinear,
    TensorizeConfig,
    TiedTTHead,
    build_model,
    gpt2_config,
    load_model,
    lowrank,
    paper_shapes,
    save_model,
    tensorize,
)
from tensornet.nn import RankClipWarning, TTMLinear

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

SMALL = GPT2Config()  # GPT-2 small: 12 x 768, vocabulary 50,257, 1,024 positions
MEDIUM = GPT2Config(n_layer=24, n_embd=1024, n_head=16)


def nparams(model):
    return sum(p.numel() for p in model.parameters())


def pairs(layer):
    return tuple(zip(layer.row_shape, layer.col_shape))


@pytest.mark.parametrize(
    ("config", "rank", "bias", "expected", "cores"),
    [
        (SMALL, 16, False, 68_085_504, 5),
        (SMALL, 32, False, 71_756_544, 4),
        (SMALL, 64, False, 83_606_784, 4),
        (SMALL, 80, True, 107_698_944, 3),
        (MEDIUM, 72, True, 218_303_488, 3),
    ],
)
def test_paper_parameter_counts(config, rank, bias, expected, cores):
    with torch.device("meta"):  # nothing big is allocated
        model = GPT2LMHeadModel(config)
        dense = nparams(model)
        model, report = tensorize(model, rank=rank, shapes="paper", bias=bias)
    assert dense == (124_439_808 if config is SMALL else 354_823_168)
    assert report.model_params_before == dense and report.model_params_after == nparams(model) == expected
    assert len(report.layers) == 2 * config.n_layer
    fc, proj = report.layers[:2]
    assert len(pairs(fc)) == cores and pairs(proj) == tuple((n, m) for m, n in pairs(fc))  # mirrored
    assert fc.ranks == (1, *[rank] * (cores - 1), 1)  # the paper keeps r next to a (6, 1) core
    layer = model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, TTMLinear) and (layer.bias is not None) == bias
    assert layer.weight.shape == fc.shape == (4 * config.n_embd, config.n_embd)  # (out, in) like nn.Linear
    assert model.config.tensornet["shapes"]["mlp.c_fc"] == [list(p) for p in pairs(fc)]


def test_paper_shapes_table():
    # (out_k, in_k) pairs: c_fc is (3072, 768) = (out, in), c_proj the reverse
    assert paper_shapes((3072, 768), 16) == ((4, 4), (4, 4), (4, 4), (4, 4), (12, 3))
    assert paper_shapes((3072, 768), 64) == ((8, 8), (8, 8), (8, 12), (6, 1))
    assert paper_shapes((768, 3072), 80) == ((16, 16), (16, 16), (3, 12))
    assert paper_shapes((4096, 1024), 72) == ((16, 16), (16, 16), (16, 4))
    assert paper_shapes((1024, 256), 16) is None


def tiny(seed=0, **kw):
    config = gpt2_config(vocab_size=97, block_size=16, n_layer=2, n_embd=64, n_head=2, **kw)
    return build_model(config, seed=seed).double().eval()


def test_from_weights_at_full_rank_is_exact():
    dense = tiny()
    x = torch.randint(0, 97, (3, 16))
    ref = dense(input_ids=x).logits
    # 2 cores (8,16)(8,16): the one bond's useful maximum is 128, so rank 128 represents W exactly
    ttm, report = tensorize(
        copy.deepcopy(dense), rank=128, shapes="balanced", ncores=2, from_weights=True, layers=("mlp", "attn")
    )
    assert len(report.layers) == 8 and report.max_error < 1e-12
    torch.testing.assert_close(ttm(input_ids=x).logits, ref, rtol=1e-9, atol=1e-9)
    low, report = lowrank(copy.deepcopy(dense), rank=64, from_weights=True, layers=("mlp", "attn"))
    assert report.max_error < 1e-12
    torch.testing.assert_close(low(input_ids=x).logits, ref, rtol=1e-9, atol=1e-9)
    # the token embedding as a TT embedding with the tied head: exact at full rank too
    emb, report = tensorize(
        copy.deepcopy(dense), rank=512, shapes="balanced", ncores=2, from_weights=True, embeddings=True
    )
    assert "transformer.wte" in [layer.name for layer in report.layers] and report.max_error < 1e-12
    torch.testing.assert_close(emb(input_ids=x).logits, ref, rtol=1e-9, atol=1e-9)
    # truncation is visible in the report and in the output
    ttm4, report = tensorize(copy.deepcopy(dense), rank=4, shapes="balanced", ncores=2, from_weights=True)
    assert 0.1 < report.max_error < 1 and not torch.allclose(ttm4(input_ids=x).logits, ref)


def test_conv1d_is_transposed_on_purpose():
    conv = Conv1D(24, 8).double()  # weight (in=8, out=24)
    torch.nn.init.normal_(conv.weight)
    torch.nn.init.normal_(conv.bias)
    x = torch.randn(5, 8, dtype=torch.float64)
    model = tiny()
    model.transformer.h[0].mlp.c_fc = conv
    model.transformer.h[0].mlp.c_proj = Conv1D(8, 24).double()
    model.transformer.h[1].mlp.c_fc, model.transformer.h[1].mlp.c_proj = Conv1D(24, 8), Conv1D(8, 24)
    tensorize(
        model,
        rank=24,
        shapes={"mlp.c_fc": [(4, 2), (6, 4)], "mlp.c_proj": [(2, 4), (4, 6)]},  # (out_k, in_k)
        from_weights=True,
    )
    layer = model.transformer.h[0].mlp.c_fc
    assert layer.weight.shape == (24, 8)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-10, atol=1e-10)


def test_from_scratch_init_and_clip_warning():
    model, _ = tensorize(tiny(), rank=8, shapes="balanced")
    w = model.transformer.h[0].mlp.c_fc.weight.full()
    assert w.shape == (256, 64) and 0.015 < float(w.detach().std()) < 0.025  # GPT-2's N(0, 0.02)
    with pytest.warns(RankClipWarning):
        tensorize(tiny(), rank=20, shapes="balanced")  # bond 1 of (4,4)(4,8)(4,8) can use only 16


def test_lowrank_matches_a_parameter_budget():
    model, report = lowrank(tiny(), rank=8, bias=False)
    layer = model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, LowRankLinear) and layer.weight.shape == (256, 64)
    assert report.layers[0].params_after == 8 * (64 + 256)
    assert 0.015 < float(layer.weight.detach().std()) < 0.025


@pytest.mark.parametrize("method", ["ttm", "ttm-eps", "ttm-emb", "lowrank", "dense"])
def test_save_load_round_trip_and_generate(tmp_path, method):
    model = tiny()
    if method == "ttm":
        tensorize(model, rank=6, shapes="balanced", layers=("mlp", "attn"), bias=False)
    elif method == "ttm-eps":
        tensorize(model, rank=None, eps=0.6, shapes="balanced", ncores=2, from_weights=True)
        record = model.config.tensornet
        assert record["rank"] is None and len(record["ranks"]) == 4  # the ranks eps chose, per layer
    elif method == "ttm-emb":
        tensorize(model, rank=6, shapes="balanced", embeddings=True, embedding_rank=12)
        assert isinstance(model.lm_head, TiedTTHead)
    elif method == "lowrank":
        lowrank(model, rank=5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "trained": not the init
    path = save_model(model, tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    assert ("tensornet" in config) == (method != "dense")
    loaded = load_model(path)
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    if method == "ttm-emb":  # the head computes its logits from the embedding's own cores
        assert loaded.lm_head._embedding[0] is loaded.transformer.wte
    else:
        assert loaded.lm_head.weight is loaded.transformer.wte.weight
    prompt = torch.tensor([[1, 2, 3]])
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    out = loaded.generate(prompt, **kwargs)
    assert out.shape == (1, 8) and torch.equal(out, model.generate(prompt, **kwargs))
    # decoding with the dense weights cached (tensornet.nn.dense_weights): the same logits and tokens
    with torch.no_grad():
        logits = loaded(prompt).logits
        with tn.nn.dense_weights(loaded):
            cached_logits = loaded(prompt).logits
            assert torch.equal(loaded.generate(prompt, **kwargs), out)
            caches = [m._dense_cache for m in loaded.modules() if hasattr(m, "_dense_cache")]
            assert all(c is not None and c.entries for c in caches)  # every TT layer ran the cached path
            assert len(caches) == {"ttm": 8, "ttm-eps": 4, "ttm-emb": 5}.get(method, 0)
    torch.testing.assert_close(cached_logits, logits, rtol=1e-5, atol=1e-5)
    if method == "dense":  # a plain Hugging Face folder
        hf = GPT2LMHeadModel.from_pretrained(path).double()
        assert torch.equal(hf(prompt).logits, model(prompt).logits)


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="rank must be >= 1"):
        tensorize(tiny(), rank=0, shapes="balanced")
    with pytest.raises(TypeError, match="rank must be an int"):
        tensorize(tiny(), rank=2.5, shapes="balanced")
    with pytest.raises(ValueError, match="larger than useful"):
        tensorize(tiny(), rank=10_000, shapes="balanced")
    with pytest.raises(ValueError, match="larger than useful"):
        lowrank(tiny(), rank=65)
    with pytest.raises(ValueError, match=r"multiply to \(out, in\) = \(256, 60\)"):
        tensorize(tiny(), rank=4, shapes={"mlp.c_fc": [(16, 6), (16, 10)], "mlp.c_proj": [(8, 16), (8, 16)]})
    fc, proj = [(16, 8), (16, 8)], [(8, 16), (8, 16)]
    for bad in ([(16.5, 8), (16, 8)], [(16, 8), (16, True)], [(16, "8"), (16, 8)], [16, 8]):
        # a fraction is never cut to an int: (16.5, 8) would have become (16, 8) and been accepted
        with pytest.raises(TypeError, match="pairs of integers"):
            tensorize(tiny(), rank=4, shapes={"mlp.c_fc": bad, "mlp.c_proj": proj})
    _, report = tensorize(
        tiny(), rank=4, shapes={"mlp.c_fc": [tuple(np.int64(v) for v in p) for p in fc], "mlp.c_proj": proj}
    )
    assert len(report.layers) == 4  # numpy integers are integers
    with pytest.raises(ValueError, match=r"no entry for .mlp\.c_proj."):
        tensorize(tiny(), rank=4, shapes={"mlp.c_fc": [(16, 8), (16, 8)]})
    with pytest.raises(ValueError, match="paper gives shapes only"):
        tensorize(tiny(), rank=4, shapes="paper")
    with pytest.raises(ValueError, match="shapes must be 'paper', 'balanced'"):
        tensorize(tiny(), rank=4, shapes="even")
    with pytest.raises(ValueError, match="layers must be a non-empty subset"):
        tensorize(tiny(), rank=4, shapes="balanced", layers=("mlp", "lm_head"))
    with pytest.raises(ValueError, match="from_weights=False needs rank and no eps"):  # tensornet.nn's Rule
        tensorize(tiny(), rank=None, eps=0.1, shapes="balanced")
    with pytest.raises(ValueError, match="give rank"):
        tensorize(tiny(), rank=None, shapes="balanced")
    with pytest.raises(TypeError, match="expected a GPT2LMHeadModel"):
        tensorize(torch.nn.Linear(4, 4), rank=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_model(tmp_path / "empty")


def test_the_record_is_a_frozen_config_that_rebuilds_the_model(tmp_path):
    model, _ = tensorize(tiny(), rank=6, shapes="balanced", layers=("mlp", "attn"), embeddings=True)
    config = TensorizeConfig.of(model)
    assert config is not None and config.method == "ttm" and config.layers == ("mlp", "attn")
    assert config.shapes["mlp.c_fc"] == ((4, 4), (8, 4), (8, 4))  # (out_k, in_k): c_fc is (256, 64)
    assert config.ranks["transformer.h.1.attn.c_proj"] == (1, 6, 6, 1) and "transformer.wte" in config.ranks
    assert TensorizeConfig.from_json(config.to_json()) == config
    with pytest.raises(AttributeError):
        config.rank = 3  # frozen
    with torch.device("meta"):  # apply builds the same layers in a dense model of the same size
        again = config.apply(build_model(tiny().config))
    assert {k: v.shape for k, v in again.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert isinstance(again.lm_head, TiedTTHead) and again.lm_head.embedding is again.transformer.wte
    assert TensorizeConfig.of(tiny()) is None  # dense
    low, _ = lowrank(tiny(), rank=3)
    assert TensorizeConfig.of(low) == TensorizeConfig("lowrank", ("mlp",), True, 3)


def test_a_saved_model_is_the_same_bytes_every_time(tmp_path):
    # safetensors writes its metadata keys in the order of a randomly seeded hash map (a new seed per map, so
    # per save): save_model's weights carry one key, {"format": "pt"}, the checksum is in config.json
    model, _ = tensorize(tiny(), rank=4, shapes="balanced")
    saved = {
        save_model(model, tmp_path / str(i)).joinpath("model.safetensors").read_bytes() for i in range(6)
    }
    assert len(saved) == 1
    assert load_model(tmp_path / "0").config.tensornet["rank"] == 4


def test_a_dense_model_re_saved_by_hugging_face_loads(tmp_path):
    """from_pretrained keeps config.json's checksum key and save_pretrained writes it again with other
    weights: only a folder save_model marked is checked against it (one saved elsewhere is not save_model's)."""
    model = build_model(gpt2_config(vocab_size=64, block_size=16, n_layer=1, n_embd=32, n_head=2), seed=0)
    save_model(model, tmp_path / "ours")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "ours")
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(2)  # fine-tuned elsewhere
    hf.save_pretrained(tmp_path / "theirs")
    assert "tensornet_sha256" in json.loads((tmp_path / "theirs" / "config.json").read_text())
    loaded = load_model(tmp_path / "theirs")
    assert torch.equal(loaded.transformer.wte.weight, hf.transformer.wte.weight)
    (tmp_path / "theirs" / "tensornet-model.json").write_text("{}")  # marked: save_model's, so checked
    with pytest.raises(ValueError, match="fails its checksum"):
        load_model(tmp_path / "theirs")


def test_a_model_saved_with_the_checksum_in_its_weights_is_still_verified(tmp_path):
    """Folders saved before the checksum moved to config.json carry it in the weights' metadata."""
    from safetensors.torch import load_file, save_file

    from tensornet.gpt2.files import content_sha256

    model = build_model(gpt2_config(vocab_size=64, block_size=16, n_layer=1, n_embd=32, n_head=2), seed=0)
    folder = save_model(model, tmp_path / "old")
    config = json.loads((folder / "config.json").read_text())
    del config["tensornet_sha256"]
    (folder / "config.json").write_text(json.dumps(config))
    state = load_file(folder / "model.safetensors")
    metadata = {"format": "pt", "tensornet.sha256": content_sha256(state)}
    save_file(state, folder / "model.safetensors", metadata=metadata)
    assert torch.equal(load_model(folder).transformer.wte.weight, model.transformer.wte.weight)
    state["transformer.wte.weight"][0, 0] += 1  # damaged after it was written
    save_file(state, folder / "model.safetensors", metadata=metadata)
    with pytest.raises(ValueError, match="fails its checksum"):
        load_model(folder)


class Killed(BaseException):
    """What a SIGKILL leaves: the files as they are, nothing cleaned up."""


@pytest.mark.parametrize("second_tokenizer", [True, False])
def test_save_model_killed_at_any_rename_leaves_the_old_model_the_new_one_or_an_error(
    tmp_path, monkeypatch, second_tokenizer
):
    from tokenizers import Tokenizer, models

    from tensornet.gpt2 import files

    def tokenizer(*words):
        return Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))

    old, new = tiny(), tiny()
    with torch.no_grad():  # the same sizes (config.json the same but for its checksum), other weights
        new.transformer.h[0].mlp.c_fc.weight.add_(1.0)
    prompt = torch.tensor([[1, 2, 3]])
    outcomes = set()
    replace, calls = os.replace, []
    for kill_at in range(5):
        folder = save_model(old, tmp_path / str(kill_at), tokenizer=tokenizer("[UNK]", "old"))

        def dying(src, dst, kill_at=kill_at):
            calls.append(dst)
            if len(calls) > kill_at:
                raise Killed
            return replace(src, dst)

        calls.clear()
        monkeypatch.setattr(os, "replace", dying)
        with contextlib.suppress(Killed):
            save_model(
                new, folder, tokenizer=tokenizer("[UNK]", "new") if second_tokenizer else None, overwrite=True
            )
        monkeypatch.setattr(os, "replace", replace)
        try:
            logits = load_model(folder)(prompt).logits
        except ValueError as err:
            assert "fails its checksum" in str(err) and str(folder) in str(err)
            outcomes.add("error")
        else:
            text = (folder / "tokenizer.json").read_text() if (folder / "tokenizer.json").exists() else ""
            if torch.equal(logits, old(prompt).logits):
                outcomes.add("old")
                assert '"old"' in text
            else:
                torch.testing.assert_close(logits, new(prompt).logits, rtol=0, atol=0)
                outcomes.add("new")
                assert ('"new"' in text) if second_tokenizer else not text
        for leftover in folder.glob(".*.tmp*"):  # as a killed process leaves them
            leftover.rename(leftover.with_name(leftover.name.rpartition(".tmp")[0] + ".tmp4206289"))
        save_model(new, folder, overwrite=True)  # the next save removes them and replaces the folder
        assert sorted(p.name for p in folder.iterdir()) == sorted(set(files.MODEL_FILES) - {"tokenizer.json"})
    assert outcomes == {"old", "error", "new"}


def test_a_model_saved_by_an_older_tensornet_is_refused_with_a_reason(tmp_path):
    model, _ = tensorize(tiny(), rank=4, shapes="balanced")
    folder = save_model(model, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    record = config["tensornet"]
    # what tensornet wrote before TensorizeConfig: (in_k, out_k) pairs, layer_ranks, no version
    old = {**{k: v for k, v in record.items() if k not in ("version", "ranks")}, "clip_rank": True}
    old["shapes"] = {key: [[n, m] for m, n in pairs] for key, pairs in record["shapes"].items()}
    (folder / "config.json").write_text(json.dumps({**config, "tensornet": old}))
    with pytest.raises(ValueError, match=r"format version None \(an older tensornet.*tensorize or compress"):
        load_model(folder)


def test_a_model_saved_before_the_tt_layers_recorded_their_core_shapes_still_loads(tmp_path):
    # the TT layers' state dicts gained "_extra_state" (their core shapes, checked on load); folders and
    # checkpoints written without it must still load and resume
    from safetensors import safe_open
    from safetensors.torch import save_file

    from tensornet.gpt2 import files

    model, _ = tensorize(tiny(), rank=4, shapes="balanced")
    folder = save_model(model, tmp_path / "m")
    weights = folder / "model.safetensors"
    with safe_open(str(weights), "pt") as f:
        names = list(f.keys())  # a safe_open handle is not iterable
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in names}
    assert any(k.endswith("._extra_state") for k in tensors)
    tensors = {k: v for k, v in tensors.items() if not k.endswith("._extra_state")}
    weights.unlink()
    save_file(tensors, weights, metadata=metadata)
    config = json.loads((folder / "config.json").read_text())
    config["tensornet_sha256"] = files.content_sha256(tensors)
    (folder / "config.json").write_text(json.dumps(config))
    loaded = load_model(folder)
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(prompt).logits, model(prompt).logits)
    old_state = {k: v for k, v in model.state_dict().items() if not k.endswith("._extra_state")}
    loaded.load_state_dict(old_state)  # as --resume loads a checkpoint's model (strict)
    loaded.load_state_dict(model.state_dict())
    assert torch.equal(loaded(prompt).logits, model(prompt).logits)


def test_lowrank_and_rules_convert_conv1d_in_place_and_can_drop_biases():
    model = tiny()
    conv = model.transformer.h[0].mlp.c_fc
    low, report = lowrank(copy.deepcopy(model), rank=64, from_weights=True, bias=False)
    layer = low.transformer.h[0].mlp.c_fc
    assert layer.bias is None and report.layers[0].kind == "Conv1D" and report.layers[0].shape == (256, 64)
    x = torch.randn(3, 64, dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x) - conv.bias, rtol=1e-9, atol=1e-9)
    ttm, _ = tensorize(
        copy.deepcopy(model), rank=128, shapes="balanced", ncores=2, from_weights=True, bias=False
    )
    assert ttm.transformer.h[0].mlp.c_fc.bias is None
    torch.testing.assert_close(ttm.transformer.h[0].mlp.c_fc(x), conv(x) - conv.bias, rtol=1e-9, atol=1e-9)


def test_linear_weight_reads_linear_and_conv1d_as_out_in():
    from tensornet.nn import linear_weight

    linear = torch.nn.Linear(3, 5)
    weight, bias = linear_weight(linear)
    assert weight is linear.weight and bias is linear.bias
    conv = Conv1D(5, 3)  # nf=5 outputs, nx=3 inputs: its weight is stored (in, out)
    weight, bias = linear_weight(conv)
    assert weight.shape == (5, 3) and torch.equal(weight, conv.weight.T) and bias is conv.bias
    assert weight.data_ptr() == conv.weight.data_ptr()  # a view, not a copy
    with pytest.raises(TypeError, match=r"linear_weight: expected an nn\.Linear"):
        linear_weight(torch.nn.ReLU())
    with pytest.raises(TypeError, match=r"mine: expected an nn\.Linear"):
        linear_weight(torch.nn.ReLU(), where="mine")
