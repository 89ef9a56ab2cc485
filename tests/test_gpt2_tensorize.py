"""tensornet.gpt2.tensorize / lowrank: the paper's parameter counts, exact conversion, save/load, errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

import tensornet as tn
from tensornet.gpt2 import (
    LowRankLinear,
    TiedTTHead,
    build_model,
    count_params,
    gpt2_config,
    load_model,
    lowrank,
    paper_pairs,
    save_model,
    tensorize,
)
from tensornet.nn import RankClipWarning, TTMLinear

SMALL = GPT2Config()  # GPT-2 small: 12 x 768, vocabulary 50,257, 1,024 positions
MEDIUM = GPT2Config(n_layer=24, n_embd=1024, n_head=16)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
        dense = count_params(model)
        model, report = tensorize(model, rank=rank, shapes="paper", bias=bias)
    assert dense == (124_439_808 if config is SMALL else 354_823_168)
    assert report.params_before == dense and report.params_after == count_params(model) == expected
    assert len(report.layers) == 2 * config.n_layer
    fc, proj = report.layers[:2]
    assert len(fc.pairs) == cores and proj.pairs == tuple((o, i) for i, o in fc.pairs)  # mirrored
    assert fc.ranks == (1, *[rank] * (cores - 1), 1)  # the paper keeps r next to a (1, 6) core
    layer = model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, TTMLinear) and (layer.bias is not None) == bias
    assert layer.weight.shape == (4 * config.n_embd, config.n_embd)  # (out, in) like nn.Linear
    assert model.config.tensornet["shapes"]["mlp.c_fc"] == [list(p) for p in fc.pairs]


def test_paper_pairs_table():
    assert paper_pairs(768, 3072, 16) == ((4, 4), (4, 4), (4, 4), (4, 4), (3, 12))
    assert paper_pairs(768, 3072, 64) == ((8, 8), (8, 8), (12, 8), (1, 6))
    assert paper_pairs(3072, 768, 80) == ((16, 16), (16, 16), (12, 3))
    assert paper_pairs(1024, 4096, 72) == ((16, 16), (16, 16), (4, 16))
    assert paper_pairs(256, 1024, 16) is None


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
    assert report.layers[-1].name == "transformer.wte" and report.max_error < 1e-12
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
        shapes={"mlp.c_fc": [(2, 4), (4, 6)], "mlp.c_proj": [(4, 2), (6, 4)]},
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
        assert "layer_ranks" in model.config.tensornet
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
    with pytest.raises(ValueError, match="multiply to in=60"):
        tensorize(tiny(), rank=4, shapes={"mlp.c_fc": [(6, 16), (10, 16)], "mlp.c_proj": [(16, 8), (16, 8)]})
    with pytest.raises(ValueError, match=r"no entry for .mlp\.c_proj."):
        tensorize(tiny(), rank=4, shapes={"mlp.c_fc": [(8, 16), (8, 16)]})
    with pytest.raises(ValueError, match="paper gives shapes only"):
        tensorize(tiny(), rank=4, shapes="paper")
    with pytest.raises(ValueError, match="shapes must be 'paper', 'balanced'"):
        tensorize(tiny(), rank=4, shapes="even")
    with pytest.raises(ValueError, match="layers must be a non-empty subset"):
        tensorize(tiny(), rank=4, shapes="balanced", layers=("mlp", "lm_head"))
    with pytest.raises(ValueError, match="needs from_weights=True"):
        tensorize(tiny(), rank=None, eps=0.1, shapes="balanced")
    with pytest.raises(TypeError, match="expected a GPT2LMHeadModel"):
        tensorize(torch.nn.Linear(4, 4), rank=2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no config\.json"):
        load_model(tmp_path / "empty")
