"""tensornet.gpt2 training: corpus, tokenizer, batches, the loop and its learning rates, exact resume, DDP (gloo)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from tensornet.gpt2 import TrainConfig, build_model, gpt2_config, stdlib_corpus, train
from tensornet.gpt2.app._checkpoint import load_checkpoint
from tensornet.gpt2.app._data import (
    cached_tokenizer,
    cached_tokens,
    check_windows,
    load_corpus,
    read_text_file,
    stdlib_files,
    train_batch,
    val_batches,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    corpus = stdlib_corpus(max_chars=60_000)
    tokenizer = cached_tokenizer(corpus, 384, cache)
    train_ids, val_ids = cached_tokens(corpus, tokenizer, cache)
    return corpus, tokenizer, train_ids, val_ids


def tiny_model(vocab: int, *, seed: int = 0, dropout: float = 0.1):
    config = gpt2_config(vocab_size=vocab, block_size=32, n_layer=2, n_embd=64, n_head=2, dropout=dropout)
    return build_model(config, seed=seed)


def test_stdlib_corpus_is_deterministic_and_split_by_file():
    files = stdlib_files()
    assert files == sorted(files, key=lambda p: p.as_posix())
    assert not any("site-packages" in p.parts or "test" in p.parts[:-1] for p in files)
    a, b = stdlib_corpus(max_chars=50_000), stdlib_corpus(max_chars=50_000)
    assert a == b and a.fingerprint() == b.fingerprint()
    assert sum(map(len, a.train)) == 50_000 and sum(map(len, a.val)) == 5_000
    assert set(a.train).isdisjoint(a.val)
    assert "standard library" in a.description
    # the split is a function of the relative path alone: about 5% of files validate
    flags = [zlib.crc32(p.name.encode("utf-8")) % 20 == 0 for p in files]
    assert 0 < sum(flags) < len(flags) // 5


def test_load_corpus_file_folder_and_errors(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("".join(f"line {i}\n" for i in range(200)))
    c = load_corpus(one)
    assert "".join(c.train + c.val) == one.read_text() and c.val[0].startswith("line ")
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(5):
        (folder / f"d{i}.txt").write_text(f"document {i}\n" * 20)
    (folder / ".hidden").write_text("ignored")
    c = load_corpus(folder)
    assert len(c.train) + len(c.val) == 5 and c.val

    with pytest.raises(ValueError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="only empty text"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "bin.dat").write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(ValueError, match="binary"):
        read_text_file(tmp_path / "bin.dat")
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not a UTF-8 text file: 'utf-8' codec can't decode"):
        load_corpus(tmp_path / "latin.txt")
    (tmp_path / "void").mkdir()
    with pytest.raises(ValueError, match="contains no files"):
        load_corpus(tmp_path / "void")


def test_tokenizer_is_cached_and_round_trips(data, tmp_path):
    corpus, tokenizer, train_ids, _ = data
    assert tokenizer.get_vocab_size() == 384 and tokenizer.token_to_id("<|endoftext|>") == 0
    text = "def f(x):\n    return x + 1  # é\n"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    again = cached_tokenizer(corpus, 384, tmp_path)
    files = list((tmp_path / "tokenizers").iterdir())
    assert len(files) == 1 and again.to_str() == cached_tokenizer(corpus, 384, tmp_path).to_str()
    assert train_ids.dtype == torch.int64 and int(train_ids.max()) < 384
    assert (train_ids == 0).sum() == len(corpus.train)  # one <|endoftext|> after every document


def test_batches_are_a_function_of_the_step_and_sliced_for_ddp(data):
    _, _, train_ids, val_ids = data
    x, y = train_batch(train_ids, step=3, seed=1, batch_size=4, block_size=16)
    x2, _ = train_batch(train_ids, step=3, seed=1, batch_size=4, block_size=16)
    x3, _ = train_batch(train_ids, step=4, seed=1, batch_size=4, block_size=16)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    assert torch.equal(x[:, 1:], y[:, :-1]) and x.shape == (4, 16)
    halves = [
        train_batch(train_ids, step=3, seed=1, batch_size=4, block_size=16, rank=r, world=2)[0]
        for r in (0, 1)
    ]
    assert torch.equal(torch.cat(halves), x)
    with pytest.raises(ValueError, match="training text has 10 tokens; --block-size 16 needs at least 18"):
        check_windows(train_ids[:10], val_ids, 16)
    with pytest.raises(ValueError, match="validation text has 10 tokens; --block-size 16 needs at least 17"):
        check_windows(train_ids, val_ids[:10], 16)
    check_windows(train_ids[:18], val_ids[:17], 16)  # one window each: enough
    windows = val_batches(val_ids, block_size=16)
    assert windows.shape[1] == 17 and torch.equal(windows[0, -1], windows[1, 0])


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    lrs = [cfg.lr_at(s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert cfg.lr_at(100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"steps must be in \[1, "):
        TrainConfig(steps=0).check()


def test_train_settings_are_one_schema_the_cli_and_check_agree():
    """Every optimisation flag refuses what ``TrainConfig.check`` refuses, at both ends of its range."""
    from dataclasses import fields

    from tensornet.gpt2.app._args import parser

    with pytest.raises(ValueError, match=r"lr must be a finite number in \(0, 1\]"):
        TrainConfig(lr=2.0).check()  # the CLI caps --lr at 1: so does the API
    flagged = [f for f in fields(TrainConfig) if f.metadata.get("help")]
    assert len(flagged) == 15
    for f in flagged:
        r = f.metadata["range"]
        outside = [r.lo if r.lo_open else r.lo - 1]
        if r.hi != math.inf:
            outside.append(r.hi if r.hi_open else r.hi + 1)
        for value in outside:
            with pytest.raises(ValueError, match=f"TrainConfig: {f.name} must be"):
                TrainConfig(**{f.name: value}).check()
            with pytest.raises(SystemExit) as exit_info:
                parser().parse_args(["train", "--" + f.name.replace("_", "-"), str(value)])
            assert exit_info.value.code == 2
        inside = r.hi if r.hi != math.inf and not r.hi_open else r.lo if not r.lo_open else r.lo + 0.5
        TrainConfig(**{f.name: inside}).check()
        assert parser().parse_args(["train", "--" + f.name.replace("_", "-"), str(inside)])


def test_tt_cores_get_their_own_learning_rate(data):
    from tensornet.gpt2 import lowrank, tensorize
    from tensornet.gpt2.app._train import make_optimizer, set_lr
    from tensornet.nn import TTMLinear

    _, tokenizer, train_ids, val_ids = data
    vocab = tokenizer.get_vocab_size()
    cfg = TrainConfig(steps=2, batch_size=2, block_size=32, lr=1e-3, warmup=1, tt_lr_scale=3.0)
    model, _ = tensorize(tiny_model(vocab, dropout=0.0), rank=4, shapes="balanced", ncores=2)
    cores = [m.packed_cores for m in model.modules() if isinstance(m, TTMLinear)]
    optimizer = make_optimizer(model, cfg)
    assert [group["lr_scale"] for group in optimizer.param_groups] == [1.0, 1.0, 3.0]
    assert {id(p) for p in optimizer.param_groups[2]["params"]} == {id(p) for p in cores}
    # every parameter in exactly one group
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    # dense and low-rank models: no cores, no third group (low-rank factors at lowrank_lr_scale 1: the dense
    # group, as runs from before that setting, whose checkpoints keep resuming)
    assert len(make_optimizer(tiny_model(vocab), cfg).param_groups) == 2
    assert len(make_optimizer(lowrank(tiny_model(vocab), rank=3)[0], cfg).param_groups) == 2
    # the loop applies the scale on top of the schedule
    set_lr(optimizer, cfg, 1)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 3e-3])
    history = train(model, train_ids, val_ids, cfg, device="cpu")
    assert len(history.loss) == 2 and all(math.isfinite(v) for v in history.loss)
    with pytest.raises(ValueError, match="tt_lr_scale must be a finite number > 0"):
        TrainConfig(tt_lr_scale=0.0).check()


def test_the_lowrank_baseline_gets_its_own_measured_learning_rate(data):
    from tensornet.gpt2 import LowRankLinear, lowrank
    from tensornet.gpt2.app._args import COMPARE_RECIPE, LOWRANK_LR_SCALE, TT_LR_SCALE
    from tensornet.gpt2.app._compare import table
    from tensornet.gpt2.app._train import make_optimizer, set_lr

    _, tokenizer, _, _ = data
    cfg = TrainConfig(steps=2, batch_size=2, block_size=32, lr=1e-3, warmup=1, lowrank_lr_scale=9.0)
    model, _ = lowrank(tiny_model(tokenizer.get_vocab_size(), dropout=0.0), rank=3)
    factors = {id(p) for m in model.modules() if isinstance(m, LowRankLinear) for p in (m.a, m.b)}
    optimizer = make_optimizer(model, cfg)
    assert [group["lr_scale"] for group in optimizer.param_groups] == [1.0, 1.0, 9.0]
    assert {id(p) for p in optimizer.param_groups[2]["params"]} == factors
    set_lr(optimizer, cfg, 1)
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 9e-3])
    # compare trains its baseline at its best measured multiplier, as its own, and says so in its table
    assert COMPARE_RECIPE.lowrank_lr_scale == LOWRANK_LR_SCALE and COMPARE_RECIPE.tt_lr_scale == TT_LR_SCALE
    results = (ROOT / "benchmarks" / "results" / "gpt2_compare_cpu.md").read_text()
    assert f"low-rank r=33, factors at {LOWRANK_LR_SCALE:g}x lr" in results
    row = dict(variant="lowrank", params=10, percent_of_dense=50.0, val_ppl=5.0, ppl_vs_dense_percent=1.0)
    row |= dict(tokens_per_s=1.0, peak_memory_mib=2.0)
    spec = {"device": "cpu", "rank": 4, "lowrank_rank": 3, "train": {"lowrank_lr_scale": LOWRANK_LR_SCALE}}
    assert f"| low-rank r=3, factors at {LOWRANK_LR_SCALE:g}x lr |" in table({"spec": spec, "results": [row]})
    with pytest.raises(ValueError, match="lowrank_lr_scale must be a finite number > 0"):
        TrainConfig(lowrank_lr_scale=0.0).check()


def test_training_lowers_the_loss_and_resume_is_exact(data, tmp_path):
    _, tokenizer, train_ids, val_ids = data
    vocab = tokenizer.get_vocab_size()
    cfg = TrainConfig(
        steps=8, batch_size=4, block_size=32, lr=3e-3, warmup=2, checkpoint_every=3, eval_every=4
    )
    full = train(tiny_model(vocab), train_ids, val_ids, cfg, out=tmp_path / "a")
    assert len(full.loss) == 8 and [s for s, _ in full.val] == [4, 8]
    assert full.loss[-1] < full.loss[0]

    first = train(tiny_model(vocab), train_ids, val_ids, cfg, out=tmp_path / "b", stop_at=5)
    assert len(first.loss) == 5 and load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 5
    # a different seed for the fresh model: everything must come from the checkpoint
    resumed = train(tiny_model(vocab, seed=123), train_ids, val_ids, cfg, out=tmp_path / "b", resume=True)
    assert resumed.loss == full.loss  # bit-exact, dropout included
    assert resumed.val == full.val

    with pytest.raises(ValueError, match=r"different settings: train\.lr: checkpoint 0\.003, now 0\.001"):
        train(
            tiny_model(vocab),
            train_ids,
            val_ids,
            TrainConfig(**{**cfg.__dict__, "lr": 1e-3}),
            out=tmp_path / "b",
            resume=True,
        )
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_model(vocab), train_ids, val_ids, cfg, out=tmp_path / "c", resume=True)
    # a run folder whose checkpoint was cut short: a clear error naming the file, nothing resumed
    train(tiny_model(vocab), train_ids, val_ids, cfg, out=tmp_path / "d", stop_at=1)
    ckpt = tmp_path / "d" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    with pytest.raises(ValueError, match="not a readable checkpoint") as err:
        train(tiny_model(vocab), train_ids, val_ids, cfg, out=tmp_path / "d", resume=True)
    assert str(ckpt) in str(err.value)
    # a new run in a folder holding a run: refused unless resumed or overwritten
    with pytest.raises(FileExistsError, match="holds a previous train run"):
        train(tiny_model(vocab), train_ids, val_ids, cfg, out=tmp_path / "b")


def test_a_global_batch_the_processes_cannot_share_is_refused_before_step_one(data, tmp_path, monkeypatch):
    _, tokenizer, train_ids, val_ids = data
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before the process group starts
    monkeypatch.setenv("RANK", "0")
    cfg = TrainConfig(steps=2, batch_size=3, block_size=32, warmup=1)
    with pytest.raises(ValueError, match="--batch-size 3 is not divisible by the 2 processes"):
        train(tiny_model(tokenizer.get_vocab_size()), train_ids, val_ids, cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ddp_gloo_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of the same global batch, so the losses equal a
    single-process run's up to float reduction order."""
    env = {
        **os.environ,
        "TENSORNET_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    common = [
        "-m",
        "tensornet.gpt2",
        "train",
        "--n-layer",
        "2",
        "--n-embd",
        "64",
        "--n-head",
        "2",
        "--max-chars",
        "40000",
        "--vocab-size",
        "300",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--block-size",
        "32",
        "--no-progress",
        "--device",
        "cpu",
    ]
    single = subprocess.run(
        [sys.executable, *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            "--standalone",  # torchrun binds a free port itself: no race with other processes
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    two = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    assert len(two["history"]["loss"]) == 3
    assert two["history"]["loss"] == pytest.approx(one["history"]["loss"], rel=1e-4)
    assert two["history"]["val"][-1][1] == pytest.approx(one["history"]["val"][-1][1], rel=1e-4)
    # float32, gradients all-reduced over 2 processes (a different summation order than one process), then
    # 3 AdamW steps, whose division by sqrt(v) magnifies last-bit differences of near-zero gradients
    for k, v in one["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=1e-3, atol=1e-5)
    log = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 3] and "val_loss" in log[-1]
