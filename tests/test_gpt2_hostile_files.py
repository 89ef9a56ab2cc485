"""Hostile files and flags: temporary files never written through planted
links, a run never lost at its final evaluation, --overwrite and compress never replace what tensornet did not
write, crafted config.json/checkpoints/tokenizers refused before anything is built or trained, every size flag
bounded, empty paths refused, and errors that say what the file is."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import GPT2_TINY, cli_status

import tensornet.gpt2 as gpt2
from tensornet.gpt2 import (
    _model,
    build_model,
    files,
    gpt2_config,
    load_model,
    save_model,
)
from tensornet.gpt2.app import _checkpoint, _data, _resume, _train
from tensornet.gpt2.app._checkpoint import load_checkpoint, save_checkpoint, write_json
from tensornet.gpt2.app._data import cached_tokenizer, cached_tokens, stdlib_corpus, token_cache_path

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

TINY = GPT2_TINY
COMPARE = ["compare", *(a for a in TINY if a != "--no-progress")]
PID = os.getpid()
DEAD = 2**22 + 12345  # above Linux's default pid_max: no such process


code = cli_status


def train_argv(shared, out: Path, *extra: str, cache: Path | None = None) -> list[str]:
    cache = cache or shared["cache"]
    return ["train", *TINY, "--steps", "3", "--cache-dir", str(cache), "--out", str(out), *extra]


def copy_run(shared, dst: Path) -> Path:
    shutil.copytree(shared["run"], dst, ignore=shutil.ignore_patterns(".tensornet-run.lock"))
    return dst


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def victim(tmp_path: Path) -> Path:
    file = tmp_path / "victim.txt"
    file.write_text("precious")
    return file


# ------------------------------------------------------------------ 1. no write through a planted link
FIRST = "0123abcd"  # the random part of the first temporary name mkstemp picks (``predictable``)


def predictable(monkeypatch) -> None:
    """mkstemp's names made predictable (FIRST, then others, for each file), so links can be planted at them."""
    names = lambda: iter([FIRST, *(f"{i:08x}" for i in range(1, 10_000))])  # noqa: E731
    monkeypatch.setattr(tempfile, "_get_candidate_names", names)


def planted(target: Path) -> Path:
    """The first temporary name of ``target`` under ``predictable``."""
    return target.with_name(f".{target.name[:50]}.{FIRST}.tmp{PID}")


def test_atomic_writes_never_follow_a_planted_link(tmp_path, monkeypatch):
    target, precious = tmp_path / "out.json", victim(tmp_path)
    predictable(monkeypatch)
    planted(target).symlink_to(precious)
    write_json(target, {"a": 1})  # the taken name is passed over, its link left alone
    assert precious.read_text() == "precious" and planted(target).is_symlink()
    assert not target.is_symlink() and json.loads(target.read_text()) == {"a": 1}
    # the final name a link: the link itself is replaced, never its target
    link = tmp_path / "link.safetensors"
    link.symlink_to(precious)
    _checkpoint.save_tensors(link, {"train": torch.arange(3), "val": torch.arange(2)})
    assert precious.read_text() == "precious" and not link.is_symlink()
    # a folder at the temporary name is not the package's: another name is taken, the folder left alone
    blocked = tmp_path / "blocked.json"
    planted(blocked).mkdir()
    (planted(blocked) / "keep").write_text("x")
    write_json(blocked, {})
    assert (planted(blocked) / "keep").read_text() == "x" and json.loads(blocked.read_text()) == {}


def test_a_run_never_writes_through_links_planted_at_its_temporary_names(
    shared, tmp_path, capsys, monkeypatch
):
    precious = victim(tmp_path)
    run = copy_run(shared, tmp_path / "run")
    predictable(monkeypatch)  # every temporary name is known ahead
    for name in ("tensornet-run.json", "checkpoint.pt", "log.jsonl"):
        planted(run / name).symlink_to(precious)  # links named as this process's temporaries
    for name in files.MODEL_FILES:
        planted(run / "model" / name).symlink_to(precious)
    # a cache whose tokenizer and tokens must be written again, with links at their temporary names
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    for folder in ("tokenizers", "tokens"):
        for file in (cache / folder).iterdir():
            file.unlink()
            planted(file).symlink_to(precious)
            planted(file).with_name(planted(file).name.replace(str(PID), str(DEAD))).symlink_to(precious)
    assert code(train_argv(shared, run, "--overwrite", cache=cache)) == 0
    capsys.readouterr()
    assert precious.read_text() == "precious"
    for file in [*run.iterdir(), *(run / "model").iterdir(), *(cache / "tokens").iterdir()]:
        assert not file.is_symlink(), file  # every output a regular file, every planted link gone
    assert not list((cache / "tokenizers").glob(".*"))
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 3
    assert load_model(run / "model") is not None


def test_save_model_and_the_tokenizer_cache_never_follow_links(shared, tmp_path, monkeypatch):
    precious = victim(tmp_path)
    config = gpt2_config(vocab_size=97, block_size=16, n_layer=1, n_embd=32, n_head=2)
    model = build_model(config, seed=0)
    target = tmp_path / "model"
    save_model(model, target)
    predictable(monkeypatch)
    links = [planted(target / name) for name in files.MODEL_FILES]
    for link in links:
        link.symlink_to(precious)
    save_model(model, target, overwrite=True)
    assert precious.read_text() == "precious" and not any(os.path.lexists(link) for link in links)
    assert load_model(target) is not None
    corpus = stdlib_corpus(max_chars=20000)
    cache = tmp_path / "cache"
    path = cache / "tokenizers" / f"bpe-300-{corpus.fingerprint()}-v2.json"  # cached_tokenizer's name
    path.parent.mkdir(parents=True)
    planted(path).symlink_to(precious)
    tokenizer = cached_tokenizer(corpus, 300, cache)
    assert precious.read_text() == "precious" and not path.is_symlink()
    assert cached_tokenizer(corpus, 300, cache).to_str() == tokenizer.to_str()


# ------------------------------------------------------------ 2. a run is not lost at its final evaluation
def test_a_failing_final_evaluation_keeps_the_finished_run(shared, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = _train.evaluate

    def failing(*args, **kwargs):
        raise ValueError("evaluation failed")

    monkeypatch.setattr(_train, "evaluate", failing)
    assert code(train_argv(shared, out)) == 2
    assert "evaluation failed" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3  # the trained state was kept
    monkeypatch.setattr(_train, "evaluate", real)
    assert code(train_argv(shared, out, "--resume")) == 0  # runs the final evaluation
    ref = shared["run"]
    assert (out / "log.jsonl").read_bytes() == (ref / "log.jsonl").read_bytes()
    assert (
        load_checkpoint(out / "checkpoint.pt")["history"] == load_checkpoint(ref / "checkpoint.pt")["history"]
    )


def test_too_little_text_is_refused_before_step_one(shared, tmp_path, capsys):
    text = tmp_path / "short.txt"
    text.write_text("".join(f"line {i} of the training text, a few words each\n" for i in range(200)))
    out = tmp_path / "run"
    assert code(train_argv(shared, out, "--data", str(text), "--block-size", "256")) == 2
    one_line_error(capsys, "validation text has", "--block-size 256")
    assert not (out / "log.jsonl").exists() and not (out / "checkpoint.pt").exists()
    argv = [*COMPARE, "--rank", "4", "--steps", "2", "--cache-dir", str(shared["cache"])]
    assert code([*argv, "--out", str(tmp_path / "c"), "--data", str(text), "--block-size", "256"]) == 2
    assert "validation text has" in capsys.readouterr().err
    assert not (tmp_path / "c" / "results.json").exists()
    # --eval-tokens below one window: at parse time, and the library's message names the flag
    assert code(train_argv(shared, tmp_path / "e", "--eval-tokens", "5")) == 2
    one_line_error(capsys, "--eval-tokens 5", "--block-size 16")
    assert not (tmp_path / "e").exists()
    with pytest.raises(ValueError, match="--eval-tokens 5 is fewer than one window"):
        _data.val_batches(torch.arange(100), block_size=16, max_tokens=5)


# --------------------------------------------------- 3. compress and --overwrite replace only tensornet's own
def test_compress_never_replaces_its_source_or_an_unmarked_folder(shared, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(shared["run"] / "model", src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    base = ["compress", "--rank", "2", "--shapes", "balanced", "--device", "cpu"]
    for out in (src, src / "sub", tmp_path):
        assert code([*base, str(src), "--out", str(out), "--overwrite"]) == 2
        assert "source model folder" in one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    # a TTM model is not compressed again (tensorize takes dense layers: it was a TypeError traceback)
    assert code([*base, str(src), "--out", str(tmp_path / "ttm")]) == 0
    capsys.readouterr()
    assert code([*base, str(tmp_path / "ttm"), "--out", str(tmp_path / "again")]) == 2
    one_line_error(capsys, "is already tensorized")
    assert not (tmp_path / "again").exists()
    # a folder with save_model's file names that save_model did not write (no mark): refused
    hf = tmp_path / "hf"
    shutil.copytree(src, hf)
    (hf / files.MODEL_MARK).unlink()
    kept = {p.name: p.read_bytes() for p in hf.iterdir()}
    assert code([*base, str(src), "--out", str(hf), "--overwrite"]) == 2
    one_line_error(capsys, "was not written by tensornet's save_model")
    with pytest.raises(FileExistsError, match="not written by tensornet's save_model"):
        save_model(load_model(src), hf, overwrite=True)
    assert {p.name: p.read_bytes() for p in hf.iterdir()} == kept
    # save_model's own folder is replaced
    save_model(load_model(src), tmp_path / "copy")
    save_model(load_model(src), tmp_path / "copy", overwrite=True)
    # and a run folder's model/ from before the mark is still replaced when the run finishes
    run = copy_run(shared, tmp_path / "run")
    (run / "model" / files.MODEL_MARK).unlink()
    assert code(train_argv(shared, run, "--overwrite")) == 0
    assert (run / "model" / files.MODEL_MARK).is_file()


# ------------------------------------------------------------------------- 4. cache cleanup: own names only
def test_cache_cleanup_removes_only_the_cache_files_leftovers(shared, tmp_path):
    corpus = stdlib_corpus(max_chars=20000)
    tokenizer = cached_tokenizer(corpus, 300, shared["cache"])
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    path = token_cache_path(corpus, tokenizer, cache)
    path.unlink()  # the next call writes it, cleaning the folder first
    users = [path.parent / f".notes.txt.{FIRST}.tmp{DEAD}", path.parent / f".bashrc.{FIRST}.old{DEAD}"]
    for file in users:
        file.write_text("mine")
    own = path.parent / f".{path.name}.{FIRST}.tmp{DEAD}"
    own.write_bytes(b"partial")
    cached_tokens(corpus, tokenizer, cache)
    assert all(file.read_text() == "mine" for file in users) and not own.exists()


# -------------------------------------------------------------- 5. crafted config.json: refused, nothing built
CONFIG_EDITS = [  # sizes capped before anything is allocated; the rest refused by transformers or the record
    {"vocab_size": 10**9},
    {"n_positions": 10**9},
    {"n_embd": 2**20, "n_head": 1},
    {"n_layer": 10**7},
    {"n_layer": 5},
    {"n_positions": 32},
    {"n_embd": -32},
    {"n_head": 0},
    {"n_head": 3},
    {"n_layer": 1.5},
    {"n_embd": "32"},
    {"n_layer": [1]},
    {"activation_function": "__import__('os')"},
    {"model_type": "llama"},
    {"tie_word_embeddings": "yes"},
    {"tensornet": {"method": "ttm", "layers": ["mlp"], "bias": True, "shapes": [1]}},
    {"tensornet": {"method": "ttm", "layers": "mlp", "bias": True}},
    {"tensornet": {"method": "lowrank", "layers": ["mlp"], "bias": True, "rank": 2.7}},
    {"tensornet": [1, 2]},
]


def test_crafted_configs_are_refused_before_anything_is_built(shared, tmp_path, capsys, monkeypatch):
    src = shared["run"] / "model"
    base = json.loads((src / "config.json").read_text())
    built = []
    monkeypatch.setattr(_model.TensorizeConfig, "apply", lambda *a: built.append(a))
    for i, edit in enumerate(CONFIG_EDITS):
        folder = tmp_path / str(i)
        shutil.copytree(src, folder)
        (folder / "config.json").write_text(json.dumps({**base, **edit}))
        with pytest.raises(ValueError) as err:
            load_model(folder)
        assert str(folder / "config.json") in str(err.value), (edit, str(err.value))
    assert not built
    # through the command line: one line, exit 2
    assert code(["eval", str(tmp_path / "0"), "--device", "cpu", "--max-chars", "2000"]) == 2
    one_line_error(capsys, "vocab_size", "config.json")
    assert code(["eval", str(tmp_path / "14"), "--device", "cpu", "--max-chars", "2000"]) == 2
    one_line_error(capsys, "tie_word_embeddings", "config.json")
    # deep nesting, a device, and a model that cannot fit this machine's memory
    (tmp_path / "1" / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        load_model(tmp_path / "1")
    (tmp_path / "2" / "config.json").unlink()
    (tmp_path / "2" / "config.json").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="not a regular file"):
        load_model(tmp_path / "2")
    monkeypatch.setattr(_model, "memory_bytes", lambda device=None: 2**10)
    meta = []  # refused before the model the config describes is built, even on the meta device
    monkeypatch.setattr(_model, "_build", lambda *a, **k: meta.append(a))
    with pytest.raises(ValueError, match="more than this machine's") as err:
        load_model(src)
    assert not meta and "n_layer" in str(err.value) and "vocab_size" in str(err.value)


# ------------------------------------------------------------- 6. crafted metadata, checkpoints, tokenizers
def crafted(shared, tmp_path: Path, name: str, edit) -> Path:
    run = copy_run(shared, tmp_path / name)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    edit(ckpt)
    save_checkpoint(run / "checkpoint.pt", ckpt)  # a valid checksum: crafted, not damaged
    return run


# what a crafted file breaks, said by the exception that loading it raises (field-specific messages went: the
# checksum is the guard against damage, and these values arise only from files crafted with a valid checksum)
CHECKPOINT_EDITS = {
    "opt-state-shape": (
        lambda c: c["optimizer"]["state"][0].update(exp_avg=torch.zeros(1)),
        "its optimizer state does not fit",
    ),
    "step-past-end": (lambda c: c.update(step=10, history={"loss": [1.0] * 10, "val": []}), "--steps 3"),
    "losses": (lambda c: c["history"].update(loss=[1.0]), "its step 3 does not match its 1 losses"),
    "model-shape": (
        lambda c: c["model"].update({k: v[:1] for k, v in c["model"].items()}),
        "Error(s) in loading state_dict",
    ),
}


def model_and_config(shared) -> tuple:
    corpus = stdlib_corpus(max_chars=20000)
    tokenizer = cached_tokenizer(corpus, 300, shared["cache"])
    config = gpt2_config(vocab_size=tokenizer.get_vocab_size(), block_size=16, n_layer=1, n_embd=32, n_head=2)
    cfg = _train.TrainConfig(steps=3, batch_size=4, block_size=16, lr=1e-3, warmup=2)
    return build_model(config), cfg


@pytest.mark.parametrize("case", sorted(CHECKPOINT_EDITS))
def test_crafted_checkpoints_are_refused_before_the_tokens(shared, tmp_path, capsys, monkeypatch, case):
    edit, needle = CHECKPOINT_EDITS[case]
    run = crafted(shared, tmp_path, case, edit)
    before = tree(run)

    def no_tokens(*args, **kwargs):
        raise AssertionError("the tokens were read before the checkpoint was checked")

    monkeypatch.setattr(_data, "cached_tokens", no_tokens)
    assert code(train_argv(shared, run, "--resume")) == 2
    one_line_error(capsys, "is not a checkpoint this run can resume", str(run / "checkpoint.pt"), needle)
    assert tree(run) == before  # nothing changed on disk
    # the library's resume says the same, on the loaded checkpoint
    monkeypatch.undo()
    model, cfg = model_and_config(shared)
    signature = _resume.signature(cfg, load_checkpoint(run / "checkpoint.pt")["signature"])
    with pytest.raises(ValueError, match="is not a checkpoint this run can resume"):
        _resume.restore(run / "checkpoint.pt", signature, model, _train.make_optimizer(model, cfg), cfg)


def test_a_resumed_run_keeps_its_own_optimizer_settings(shared, tmp_path):
    # AdamW settings in the file are not this run's: the run's own (its signature matched) are kept
    def edit(c):
        for group in c["optimizer"]["param_groups"]:
            group.update(betas=(0.5, 0.5), lr_scale=1e30, weight_decay=0.5)

    run = crafted(shared, tmp_path, "opt-settings", edit)
    model, cfg = model_and_config(shared)
    signature = _resume.signature(cfg, load_checkpoint(run / "checkpoint.pt")["signature"])
    optimizer = _train.make_optimizer(model, cfg)
    own = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    assert _resume.restore(run / "checkpoint.pt", signature, model, optimizer, cfg)[0] == 3
    assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups] == own
    assert optimizer.param_groups[0]["betas"] != (0.5, 0.5)


def deeply_nested_checkpoint(path: Path, depth: int) -> None:
    """A checkpoint whose signature holds lists nested ``depth`` deep (pickle opcodes by hand: a pickler recurses)."""
    ckpt = load_checkpoint(path)
    ckpt["signature"]["deep"] = "PLACEHOLDER"
    raw = pickle.dumps(
        {
            "format": _checkpoint.CHECKPOINT_FORMAT,
            "version": _checkpoint.CHECKPOINT_VERSION,
            "sha256": "0" * 64,
            "payload": {
                k: ckpt[k] for k in ("step", "history", "signature")
            },  # no tensors: torch pickles those
        },
        protocol=2,
    )
    raw = raw.replace(b"X\x0b\x00\x00\x00PLACEHOLDER", b"]" * depth + b"a" * (depth - 1))
    with zipfile.ZipFile(path, "w") as z:  # the layout of torch.save's archive
        z.writestr("archive/data.pkl", raw)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")


def test_deeply_nested_metadata_is_an_error_not_a_crash(shared, tmp_path, capsys):
    run = copy_run(shared, tmp_path / "run")
    deeply_nested_checkpoint(run / "checkpoint.pt", 100_000)
    assert code(train_argv(shared, run, "--resume")) == 2
    one_line_error(capsys, "checkpoint.pt")
    with pytest.raises(ValueError, match=r"not a readable checkpoint \(RecursionError"):
        load_checkpoint(run / "checkpoint.pt")
    (run / "tensornet-run.json").write_text("[" * 100_000 + "]" * 100_000)
    assert code(train_argv(shared, run, "--resume")) == 2
    one_line_error(capsys, "tensornet-run.json", "nested too deeply")


def test_malformed_gpt2_tokenizer_files_are_errors(tmp_path, capsys, shared):
    cases = {
        "not-json": ("x", "a b\n"),
        "unknown-token": ('{"a": 0, "<|endoftext|>": 1}', "#version: 0.2\nx y\n"),
        "not-a-merge": ('{"a": 0}', "a b c\n"),
    }
    for name, (vocab, merges) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "vocab.json").write_text(vocab)
        (folder / "merges.txt").write_text(merges)
        with pytest.raises(ValueError, match="--tokenizer"):
            _data.load_tokenizer(folder)
    model = str(shared["run"] / "model")
    assert code(["eval", model, "--tokenizer", str(tmp_path / "unknown-token"), "--device", "cpu"]) == 2
    one_line_error(capsys, "cannot read a tokenizer from", "vocab.json")
    # a device or a FIFO: refused at once, not read forever
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        assert code(["eval", model, "--tokenizer", path, "--device", "cpu", "--max-chars", "2000"]) == 2
        one_line_error(capsys, "not a regular file")


# ------------------------------------------------------------------ 7 and 8. flags bounded, paths not empty
BIG = "99999999999999999999999"
BAD = [
    ("train", ["--n-layer", "100000"], "--n-layer"),
    ("train", ["--n-layer", BIG], "--n-layer"),
    ("train", ["--n-embd", "1048576"], "--n-embd"),
    ("train", ["--n-head", BIG], "--n-head"),
    ("train", ["--block-size", BIG], "--block-size"),
    ("train", ["--batch-size", BIG], "--batch-size"),
    ("train", ["--steps", BIG], "--steps"),
    ("train", ["--rank", BIG], "--rank"),
    ("train", ["--ncores", "100"], "--ncores"),
    ("train", ["--n-layer", "256", "--n-embd", "16384", "--n-head", "16"], "--n-layer"),
    ("train", ["--eval-tokens", "15"], "--eval-tokens"),
    ("train", ["--data", ""], "--data"),
    ("train", ["--tokenizer", ""], "--tokenizer"),
    ("train", ["--cache-dir", ""], "--cache-dir"),
    ("train", ["--out", ""], "--out"),
    ("compare", ["--threads", BIG], "--threads"),
    ("compare", ["--block-size", BIG], "--block-size"),
    ("compare", ["--rank", "32"], "--no-lowrank"),
    ("compress", ["--rank", "2", "--ncores", "99999"], "--ncores"),
    ("compress", ["--rank", BIG], "--rank"),
    ("compress", ["--rank", "2", "--shapes", "paper"], "--shapes balanced"),
    ("compress", ["--rank", "2", "--shapes", "balanced", "--eval-tokens", "3"], "--eval-tokens"),
    ("compress", ["--rank", "2", "--shapes", "balanced", "--text", ""], "--text"),
    ("eval", ["--text", ""], "--text"),
    ("eval", ["--tokenizer", ""], "--tokenizer"),
    ("eval", ["--batch-size", BIG], "--batch-size"),
    ("eval", ["--eval-tokens", "3"], "--eval-tokens"),
    ("eval", ["--batch-size", "65536", "--block-size", "16"], "--batch-size"),
]


@pytest.mark.parametrize(("command", "flags", "names"), BAD)
def test_out_of_bound_flags_are_one_line_errors_before_any_work(
    shared, tmp_path, capsys, monkeypatch, command, flags, names
):
    out, cache = tmp_path / "out", tmp_path / "fresh-cache"
    if command == "eval" and "65536" in flags:  # the logits of one batch cannot fit 1 GiB
        monkeypatch.setattr(gpt2, "memory_bytes", lambda device=None: 2**30)
    if command in ("train", "compare"):
        argv = [*(COMPARE if command == "compare" else ["train", *TINY]), "--steps", "2"]
        if "--out" not in flags:
            argv += ["--out", str(out)]
        if "--cache-dir" not in flags:
            argv += ["--cache-dir", str(cache)]
    else:
        argv = [command, str(shared["run"] / "model"), "--device", "cpu"]
        argv += ["--out", str(out)] if command == "compress" else []
    assert code(argv + flags) == 2
    one_line_error(capsys, names)
    assert not out.exists() and not cache.exists()


def test_a_malformed_torchrun_environment_is_an_error(shared, tmp_path, capsys, monkeypatch):
    for value in ("0", "-2", "abc"):
        monkeypatch.setenv("WORLD_SIZE", value)
        compare = [*COMPARE, "--cache-dir", str(shared["cache"]), "--out", str(tmp_path / "c")]
        for argv in (train_argv(shared, tmp_path / "t"), compare):
            assert code(argv) == 2
            one_line_error(capsys, "WORLD_SIZE")
    assert not (tmp_path / "t").exists() and not (tmp_path / "c").exists()


def test_eval_text_is_named_and_not_split(shared, tmp_path, capsys):
    model = str(shared["run"] / "model")
    short = tmp_path / "short.txt"
    short.write_text("hello world\n")
    assert code(["eval", model, "--text", str(short), "--device", "cpu"]) == 2
    line = one_line_error(capsys, "--text")
    assert "--data" not in line and "split" not in line
    text = tmp_path / "text.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 20)
    assert code(["eval", model, "--text", str(text), "--device", "cpu"]) == 0
    assert "perplexity" in capsys.readouterr().out


# ---------------------------------------------------------------------- 9. errors that say what happened
def test_resume_says_what_the_checkpoint_is(shared, tmp_path, capsys):
    run = copy_run(shared, tmp_path / "dir")
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").mkdir()
    assert code(train_argv(shared, run, "--resume")) == 2
    assert "stopped before" not in one_line_error(capsys, "is a folder")
    run = copy_run(shared, tmp_path / "link")
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").symlink_to(tmp_path / "gone")
    assert code(train_argv(shared, run, "--resume")) == 2
    one_line_error(capsys, "broken symbolic link")
    # resuming a finished run: no "nan tokens/s"
    run = copy_run(shared, tmp_path / "done")
    assert code(train_argv(shared, run, "--resume")) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "already finished at step 3/3" in out and "nan" not in out


def test_a_full_disk_names_the_file(shared, tmp_path, capsys, monkeypatch):
    fsync = os.fsync

    def full(fd: int) -> None:
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    assert code(train_argv(shared, out)) == 2
    one_line_error(capsys, "cannot write", str(out / "checkpoint.pt"), "No space left", "free some")
    assert not list(out.glob(".checkpoint.pt.*"))  # the partial file is removed


def test_a_full_disk_inside_torch_save_names_the_file(shared, tmp_path, capsys, monkeypatch):
    save = torch.save

    def full(obj, f, *args, **kwargs):
        if ".checkpoint.pt." not in str(getattr(f, "name", "")):
            return save(obj, f, *args, **kwargs)
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what torch.save raises from a failed write

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    assert code(train_argv(shared, out)) == 2
    one_line_error(capsys, "cannot write", str(out / "checkpoint.pt"), "No space left", "free some")
    assert not list(out.glob(".checkpoint.pt.*"))  # the partial file is removed
