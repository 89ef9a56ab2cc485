"""tensornet.gpt2's guarantees end to end: files are data (nothing is unpickled, damage is an error naming the
file), nothing the user owns is deleted, every CLI flag is checked before any work, one run per folder, and a
run killed at any point resumes to exactly the uninterrupted run (losses, log, weights)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import GPT2_TINY, cli_status, train_argv

from tensornet.gpt2 import build_model, gpt2_config, load_model, save_model, stdlib_corpus, tensorize
from tensornet.gpt2.app._checkpoint import load_checkpoint, load_token_file, save_checkpoint
from tensornet.gpt2.app._cli import main
from tensornet.gpt2.app._data import cached_tokenizer, cached_tokens, token_cache_path
from tensornet.gpt2.app._runfolder import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

ROOT = Path(__file__).resolve().parents[1]
TINY = GPT2_TINY
COMPARE = ["compare", *(a for a in TINY if a != "--no-progress")]  # compare shows no progress bar
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


class Payload:
    """Unpickling this creates ``marker``: any loader that runs pickle's code would leave the file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(Payload(marker), path)  # a real torch pickle file, as torch.save writes them


code = cli_status


def copy_run(shared, dst: Path) -> Path:
    shutil.copytree(shared["run"], dst, ignore=shutil.ignore_patterns(".tensornet-run.lock"))
    return dst


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ files are data
def test_pickles_are_never_unpickled(shared, tmp_path, capsys):
    marker = tmp_path / "pwned"
    # 1. a pickle at the checkpoint's name (tensornet 0.1 wrote pickles there): torch.load(weights_only=True)
    # builds tensors and plain values only, so it is refused, naming the file, and its code never runs
    run = copy_run(shared, tmp_path / "old")
    plant_pickle(run / "checkpoint.pt", marker)
    assert code(train_argv(shared, run, "--resume")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "never unpickled" in err and "Traceback" not in err
    assert "not a readable checkpoint" in err and str(run / "checkpoint.pt") in err
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(run / "checkpoint.pt")
    # ... and in a folder an older tensornet wrote (no tensornet-run.json): not a run folder, nothing read
    (run / "tensornet-run.json").unlink()
    assert code(train_argv(shared, run, "--resume")) == 2
    assert "not a tensornet train run folder" in capsys.readouterr().err
    assert not marker.exists()
    # 3. a model folder with only pytorch_model.bin: eval and load_model refuse it
    model = tmp_path / "hf"
    model.mkdir()
    shutil.copy(shared["run"] / "model" / "config.json", model)
    shutil.copy(shared["run"] / "model" / "tokenizer.json", model)
    plant_pickle(model / "pytorch_model.bin", marker)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin.*pickle.*safetensors"):
        load_model(model)
    assert code(["eval", str(model), "--max-chars", "2000", "--device", "cpu"]) == 2
    assert "pickle" in capsys.readouterr().err
    # 4. a token cache (and compare's token file): a pickle at the cache's name is not the cache's file: an
    # error, the file left alone; once it is moved away the cache is rebuilt
    corpus = stdlib_corpus(max_chars=20000)
    tokenizer = cached_tokenizer(corpus, 300, shared["cache"])
    expected = cached_tokens(corpus, tokenizer, shared["cache"])
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    path = token_cache_path(corpus, tokenizer, cache)
    plant_pickle(path, marker)
    plant_pickle(path.with_suffix(".pt"), marker)  # the name older versions used
    with pytest.raises(ValueError, match="tensornet did not write it"):
        cached_tokens(corpus, tokenizer, cache)
    assert path.is_file() and not marker.exists()
    path.unlink()
    train_ids, val_ids = cached_tokens(corpus, tokenizer, cache)
    assert torch.equal(train_ids, expected[0]) and torch.equal(val_ids, expected[1])
    assert torch.equal(cached_tokens(corpus, tokenizer, cache)[0], expected[0])
    plant_pickle(tmp_path / "tokens.safetensors", marker)
    with pytest.raises(ValueError, match="not a readable token file"):
        load_token_file(tmp_path / "tokens.safetensors", 300, "compare")
    assert not marker.exists()


def test_token_cache_contents_are_validated(shared, tmp_path):
    corpus = stdlib_corpus(max_chars=20000)
    tokenizer = cached_tokenizer(corpus, 300, shared["cache"])
    expected = cached_tokens(corpus, tokenizer, shared["cache"])[0]
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    path = token_cache_path(corpus, tokenizer, cache)
    from safetensors import safe_open

    from tensornet.gpt2.app._checkpoint import save_tensors

    with safe_open(str(path), framework="pt") as f:  # the cache's own record: what the file was built from
        record = f.metadata()

    bad = {
        "ids outside the vocabulary": {"train": torch.tensor([1, 2, 300]), "val": torch.tensor([1, 2])},
        "2-D": {"train": torch.ones(2, 2, dtype=torch.int32), "val": torch.tensor([1, 2])},
        "floats": {"train": torch.ones(3), "val": torch.tensor([1, 2])},
    }
    for tensors in bad.values():  # the cache's own file (its record), with bad contents
        save_tensors(path, tensors, metadata=record)
        with pytest.warns(UserWarning, match="rebuilding"):
            assert torch.equal(cached_tokens(corpus, tokenizer, cache)[0], expected)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the ids
    path.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="checksum"):
        assert torch.equal(cached_tokens(corpus, tokenizer, cache)[0], expected)


def test_damaged_checkpoints_are_errors_naming_the_file(shared, tmp_path, capsys):
    ckpt_name = "checkpoint.pt"
    saved = load_checkpoint(shared["run"] / ckpt_name)
    weight = next(iter(saved["model"].values())).numpy().tobytes()
    for case in ("flip-data", "flip-loss", "truncate", "foreign"):
        run = copy_run(shared, tmp_path / case)
        ckpt = run / ckpt_name
        data = bytearray(ckpt.read_bytes())
        if case == "flip-data":
            data[data.index(weight[:64]) + 3] ^= 0x01  # one bit of a model tensor
        elif case == "flip-loss":  # one bit of a plain value: the first loss, a pickled big-endian double
            data[data.index(struct.pack(">d", saved["history"]["loss"][0])) + 7] ^= 0x01
        elif case == "truncate":
            data = data[: len(data) // 2]
        else:
            torch.save({"w": torch.zeros(3)}, ckpt)
            data = bytearray(ckpt.read_bytes())
        ckpt.write_bytes(bytes(data))
        assert code(train_argv(shared, run, "--resume")) == 2, case
        captured = capsys.readouterr()
        message = {
            "flip-data": "fails its checksum",
            "flip-loss": "fails its checksum",
            "truncate": "not a readable checkpoint",
            "foreign": "not a tensornet checkpoint",
        }[case]
        assert captured.err.startswith("error: ") and message in captured.err, (case, captured.err)
        assert str(ckpt) in captured.err and "Traceback" not in captured.err
        assert "finished" not in captured.out and "stopped" not in captured.out  # nothing resumed
        with pytest.raises(ValueError, match=message):
            load_checkpoint(ckpt)


def test_damaged_model_folders_are_errors(shared, tmp_path, capsys):
    config = gpt2_config(vocab_size=97, block_size=16, n_layer=1, n_embd=32, n_head=2)
    model, _ = tensorize(build_model(config, seed=0), rank=4, shapes="balanced")
    folder = save_model(model, tmp_path / "ttm")
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    # truncated weights
    weights.write_bytes(good[: len(good) - 100])
    with pytest.raises(ValueError, match="not a readable safetensors file") as err:
        load_model(folder)
    assert str(weights) in str(err.value)
    # one flipped bit: save_model's checksum catches it
    data = bytearray(good)
    data[-5] ^= 0x10
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fails its checksum"):
        load_model(folder)
    # a weights file that is no file: said what it is (a FIFO would block a reader forever)
    for make, what in (
        (os.mkfifo, "not a regular file"),
        (lambda p: p.symlink_to(tmp_path / "gone"), "broken"),
    ):
        weights.unlink()
        make(weights)
        with pytest.raises(ValueError, match=what):
            load_model(folder)
    weights.unlink()
    # TT cores, but config.json without the tensornet record: an error, not a randomly initialised model
    weights.write_bytes(good)
    settings = json.loads((folder / "config.json").read_text())
    del settings["tensornet"]
    (folder / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"do not match .*config\.json.*cores"):
        load_model(folder)
    # the CLI reports a truncated model folder with one line
    dense = tmp_path / "dense"
    shutil.copytree(shared["run"] / "model", dense)
    (dense / "model.safetensors").write_bytes((dense / "model.safetensors").read_bytes()[:-64])
    assert code(["eval", str(dense), "--max-chars", "2000", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a readable safetensors file" in err and "Traceback" not in err


# ----------------------------------------------------------------------- nothing the user owns is lost
def test_user_files_survive_every_output_flag(shared, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("my notes")
    model = str(shared["run"] / "model")
    compress = [
        "compress",
        model,
        "--rank",
        "2",
        "--shapes",
        "balanced",
        "--device",
        "cpu",
        "--out",
        str(user),
    ]
    attempts = [
        compress,
        [*compress, "--overwrite"],
        train_argv(shared, user),
        train_argv(shared, user, "--overwrite"),
        train_argv(shared, user, "--resume"),
        [
            *COMPARE,
            "--rank",
            "4",
            "--steps",
            "2",
            "--cache-dir",
            str(shared["cache"]),
            "--out",
            str(user),
        ],
        [
            *COMPARE,
            "--rank",
            "4",
            "--steps",
            "2",
            "--cache-dir",
            str(shared["cache"]),
            "--out",
            str(user),
            "--overwrite",
        ],
    ]
    for argv in attempts:
        assert code(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.err.startswith("error: ") and str(user) in captured.err, captured.err
        assert captured.out == ""  # refused before any data was read
        assert tree(user) == {"notes.txt": b"my notes"}, argv
    config = gpt2_config(vocab_size=97, block_size=16, n_layer=1, n_embd=32, n_head=2)
    tiny = build_model(config, seed=0)
    with pytest.raises(FileExistsError, match="not empty"):
        save_model(tiny, user)
    with pytest.raises(FileExistsError, match="does not write"):
        save_model(tiny, user, overwrite=True)
    assert tree(user) == {"notes.txt": b"my notes"}
    # a file is never replaced by a folder
    file = tmp_path / "file.txt"
    file.write_text("keep")
    for argv in (
        train_argv(shared, file),
        [*COMPARE, "--rank", "4", "--cache-dir", str(shared["cache"]), "--out", str(file)],
        ["compress", model, "--rank", "2", "--shapes", "balanced", "--out", str(file), "--overwrite"],
    ):
        assert code(argv) == 2
        assert "is a file" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="is a file"):
        save_model(tiny, file, overwrite=True)
    assert file.read_text() == "keep"
    # an empty folder is fine, and overwrite=True replaces a folder save_model wrote
    (tmp_path / "empty").mkdir()
    first = save_model(tiny, tmp_path / "empty")
    with torch.no_grad():
        tiny.transformer.wte.weight.add_(1.0)
    save_model(tiny, first, overwrite=True)
    assert torch.equal(load_model(first).transformer.wte.weight, tiny.transformer.wte.weight)


def test_overwrite_replaces_only_the_package_files(shared, tmp_path, capsys):
    run = copy_run(shared, tmp_path / "run")
    (run / "notes.txt").write_text("mine")
    before = load_checkpoint(run / "checkpoint.pt")
    assert code(train_argv(shared, run)) == 2  # a previous run: refused without --resume/--overwrite
    assert "--resume to continue it or --overwrite" in capsys.readouterr().err
    # a user file inside model/, which the run replaces when it finishes: refused up front, not at the end
    (run / "model" / "extra.txt").write_text("mine too")
    for extra in (["--overwrite"], ["--resume"]):
        assert code(train_argv(shared, run, *extra)) == 2
        captured = capsys.readouterr()
        assert "extra.txt" in captured.err and captured.out == ""
    assert (run / "model" / "extra.txt").read_text() == "mine too"
    (run / "model" / "extra.txt").unlink()
    assert code(train_argv(shared, run, "--overwrite", "--steps", "2", "--lr", "0.002")) == 0
    assert (run / "notes.txt").read_text() == "mine"
    after = load_checkpoint(run / "checkpoint.pt")
    assert after["step"] == 2 and after["history"]["loss"] != before["history"]["loss"][:2]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 2]  # the old run's lines are gone, not appended to


def test_unwritable_out_is_refused_before_training(shared, tmp_path, capsys):
    if os.geteuid() == 0:  # chmod does not stop root: a path under a file cannot be created by anyone
        blocker = tmp_path / "blocker"
        blocker.write_text("x")
        out = blocker / "run"
    else:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
        out = parent / "run"
    try:
        for argv in (
            train_argv(shared, out),
            [*COMPARE, "--rank", "4", "--cache-dir", str(shared["cache"]), "--out", str(out)],
            [
                "compress",
                str(shared["run"] / "model"),
                "--rank",
                "2",
                "--shapes",
                "balanced",
                "--out",
                str(out),
            ],
        ):
            assert code(argv) == 2
            captured = capsys.readouterr()
            assert captured.err.startswith("error: --out") and captured.out == ""
            assert not out.exists()
        if os.geteuid() != 0:  # an existing read-only run folder
            ro = tmp_path / "ro-run"
            ro.mkdir()
            ro.chmod(0o555)
            assert code(train_argv(shared, ro)) == 2
            assert "cannot write" in capsys.readouterr().err
    finally:
        for p in (tmp_path / "ro", tmp_path / "ro-run"):
            if p.exists():
                p.chmod(0o755)


def test_a_second_run_on_a_folder_is_refused(shared, tmp_path, capsys):
    out = tmp_path / "busy"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from tensornet.gpt2.app._runfolder import RunFolder; "
            "f = RunFolder.open(sys.argv[1], kind='train'); print('held', flush=True); time.sleep(60)",
            str(out),
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert code(train_argv(shared, out)) == 2
        captured = capsys.readouterr()
        assert "another run holds" in captured.err and captured.out == ""
    finally:
        holder.kill()
        holder.communicate()
    with RunFolder.open(out, kind="train"):  # the lock died with its process
        pass


def test_stale_temporary_files_are_removed_and_only_those(tmp_path):
    out = tmp_path / "run"
    with RunFolder.open(out, kind="train"):
        (out / "notes.txt").write_text("mine")  # the folder is kept (one with nothing in it is removed)
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = [out / f".checkpoint.pt.0123abcd.tmp{dead}", out / f".log.jsonl.0123abcd.tmp{os.getpid()}"]
    for p in stale:
        p.write_bytes(b"partial")
    half_model = out / "model" / f".config.json.0123abcd.tmp{dead}"  # a killed save_model's temporary file
    half_model.parent.mkdir()
    half_model.write_text("{}")
    kept = [
        out / f".notes.txt.0123abcd.tmp{dead}",
        out / "notes.txt",
        out / f".model.0123abcd.old{dead}" / "mine.txt",
    ]
    for p in kept:
        p.parent.mkdir(exist_ok=True)
        p.write_text("mine")
    with RunFolder.open(out, kind="train"):
        pass
    assert not any(p.exists() for p in [*stale, half_model])
    assert all(p.read_text() == "mine" for p in kept)
    # a lock file replaced by a link to someone's file: refused, the file untouched
    assert not (out / ".tensornet-run.lock").exists()  # the finished holder removed its lock file
    (out / ".tensornet-run.lock").symlink_to(out / "notes.txt")
    with pytest.raises(OSError, match="symbolic link"):  # (filelock opens it O_NOFOLLOW)
        RunFolder.open(out, kind="train")
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------- flags checked before work
BAD_FLAGS = [
    ("train", ["--steps", "0"], "--steps"),
    ("train", ["--steps", "1.5"], "--steps"),
    ("train", ["--batch-size", "0"], "--batch-size"),
    ("train", ["--block-size", "0"], "--block-size"),
    ("train", ["--lr", "1e6"], "--lr"),
    ("train", ["--lr", "0"], "--lr"),
    ("train", ["--lr", "nan"], "--lr"),
    ("train", ["--min-lr-ratio", "1.5"], "--min-lr-ratio"),
    ("train", ["--warmup", "-1"], "--warmup"),
    ("train", ["--weight-decay", "inf"], "--weight-decay"),
    ("train", ["--beta1", "1"], "--beta1"),
    ("train", ["--beta2", "-0.1"], "--beta2"),
    ("train", ["--clip", "nan"], "--clip"),
    ("train", ["--clip", "-1"], "--clip"),
    ("train", ["--tt-lr-scale", "0"], "--tt-lr-scale"),
    ("train", ["--seed", "-1"], "--seed"),
    ("train", ["--eval-every", "-1"], "--eval-every"),
    ("train", ["--eval-tokens", "-1"], "--eval-tokens"),
    ("train", ["--stop-at", "0"], "--stop-at"),
    ("train", ["--checkpoint-every", "-1"], "--checkpoint-every"),
    ("train", ["--vocab-size", "0"], "--vocab-size"),
    ("train", ["--vocab-size", "256"], "--vocab-size"),
    ("train", ["--max-chars", "0"], "--max-chars"),
    ("train", ["--rank", "-1"], "--rank"),
    ("train", ["--lowrank", "-2"], "--lowrank"),
    ("train", ["--ncores", "0"], "--ncores"),
    ("train", ["--dropout", "1"], "--dropout"),
    ("train", ["--n-layer", "0"], "--n-layer"),
    ("train", ["--n-embd", "0"], "--n-embd"),
    ("train", ["--n-head", "0"], "--n-head"),
    ("train", ["--rank", "4", "--embeddings", "--embedding-rank", "0"], "--embedding-rank"),
    ("train", ["--device", "cuda:99"], "--device"),
    ("train", ["--device", "banana"], "--device"),
    ("train", ["--rank", "4", "--shapes", '{"mlp.c_fc": 3}'], "--shapes"),
    ("train", ["--rank", "4", "--shapes", "[1, 2]"], "--shapes"),
    ("train", ["--rank", "4", "--shapes", '{"mlp.cfc": [[4, 8]]}'], "--shapes"),
    ("train", ["--rank", "4", "--layers", "mlp,emb"], "--layers"),
    ("train", ["--rank", "4", "--lowrank", "4"], "--lowrank"),
    ("train", ["--embeddings"], "--embeddings"),
    ("train", ["--resume"], "--resume"),
    ("train", ["--resume", "--overwrite"], "--overwrite"),
    ("train", ["--cache-dir", "{file}"], "cache"),
    ("train", ["--cache-dir", "{file}/sub"], "cache"),
    ("train", ["--data", "{tmp}/missing.txt"], "--data"),
    ("train", ["--tokenizer", "{tmp}/missing.json"], "--tokenizer"),
    ("train", ["--tokenizer", "{file}", "--vocab-size", "300"], "--vocab-size"),
    ("train", ["--n-embd", "60", "--n-head", "8"], "--n-head"),
    ("train", ["--rank", "5000", "--shapes", "balanced"], "larger than useful"),
    ("compare", ["--threads", "0"], "--threads"),
    ("compare", ["--rank", "0"], "--rank"),
    ("compare", ["--lr", "2"], "--lr"),
    ("compare", ["--rank", "64", "--ncores", "2", "--shapes", "balanced"], "larger than useful"),
    ("compress", ["--eps", "1"], "--eps"),
    ("compress", ["--eps", "0"], "--eps"),
    ("compress", ["--rank", "0"], "--rank"),
    ("compress", [], "--rank and --eps"),
    ("compress", ["--rank", "2", "--ncores", "0"], "--ncores"),
    ("compress", ["--rank", "2", "--batch-size", "0"], "--batch-size"),
    ("compress", ["--rank", "2", "--block-size", "0"], "--block-size"),
    ("compress", ["--rank", "2", "--eval-tokens", "-1"], "--eval-tokens"),
    ("compress", ["--rank", "2", "--device", "cuda:99"], "--device"),
    ("eval", ["--batch-size", "0"], "--batch-size"),
    ("eval", ["--max-chars", "0"], "--max-chars"),
    ("eval", ["--text", "{tmp}/missing.txt"], "--text"),
]
if not torch.cuda.is_available():
    BAD_FLAGS.append(("train", ["--device", "cuda"], "--device"))


def bad_argv(command: str, flags: list[str], tmp_path: Path, shared) -> tuple[list[str], Path, Path]:
    """The command with a fresh --out and --cache-dir that must both still not exist afterwards."""
    (tmp_path / "a-file").write_text("not a folder")
    flags = [f.replace("{tmp}", str(tmp_path)).replace("{file}", str(tmp_path / "a-file")) for f in flags]
    out, cache = tmp_path / "out", tmp_path / "fresh-cache"
    if command in ("train", "compare"):
        argv = [*(COMPARE if command == "compare" else ["train", *TINY]), "--steps", "2", "--out", str(out)]
        if not any(f.startswith("--cache-dir") for f in flags):
            argv += ["--cache-dir", str(cache)]
        return argv + flags, out, cache
    argv = [command, str(shared["run"] / "model"), "--device", "cpu"]
    if command == "compress":
        argv += ["--out", str(out)]
    return argv + flags, out, cache


@pytest.mark.parametrize(("command", "flags", "names"), BAD_FLAGS)
def test_bad_flags_are_one_line_errors_before_any_work(shared, tmp_path, capsys, command, flags, names):
    argv, out, cache = bad_argv(command, flags, tmp_path, shared)
    assert code(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], captured.err
    assert captured.out == ""
    assert not out.exists() and not cache.exists()  # no folder created, no tokenizer trained


def test_bad_flags_through_the_real_command(shared, tmp_path):
    cases = [
        ("train", ["--stop-at", "0"]),
        ("train", ["--clip", "nan"]),
        ("train", ["--lr", "1e6"]),
        ("compress", ["--rank", "2", "--device", "cuda:99"]),
    ]
    procs = []
    for i, (command, flags) in enumerate(cases):
        folder = tmp_path / str(i)
        folder.mkdir()
        argv, out, cache = bad_argv(command, flags, folder, shared)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tensornet.gpt2", *argv], env=ENV, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append((proc, out, cache))
    for proc, out, cache in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2 and stdout == ""
        assert stderr.startswith("error: argument --") and len(stderr.strip().splitlines()) == 1, stderr
        assert not out.exists() and not cache.exists()


def test_resume_with_other_settings_names_the_setting(shared, tmp_path, capsys):
    run = copy_run(shared, tmp_path / "run")
    assert code(train_argv(shared, run, "--resume", "--lr", "0.002")) == 2
    captured = capsys.readouterr()
    assert "train.lr: checkpoint 0.001, now 0.002" in captured.err and captured.out == ""
    assert code(train_argv(shared, run, "--resume", "--stop-at", "2")) == 2
    captured = capsys.readouterr()
    assert "--stop-at 2 is before the checkpoint's step 3" in captured.err and captured.out == ""


def test_interrupted_compare_does_not_advise_resume(shared, tmp_path, capsys, monkeypatch):
    from tensornet.gpt2.app import _data

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_data, "load_corpus", interrupt)
    argv = [
        *COMPARE,
        "--rank",
        "4",
        "--steps",
        "2",
        "--cache-dir",
        str(shared["cache"]),
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted") and "--resume" not in err
    assert main(train_argv(shared, tmp_path / "t")) == 130
    assert "nothing to resume" in capsys.readouterr().err


def test_checkpoint_round_trip_keeps_types_and_ties(tmp_path):
    w = torch.randn(3, 2, dtype=torch.float64)
    payload = {
        "model": {"a": w, "tied": w, "half": torch.ones(2, dtype=torch.bfloat16), "empty": torch.zeros(0)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]},
        "python": random.getstate(),
        "$odd": [1, None, True, 2.5, float("inf")],
    }
    save_checkpoint(tmp_path / "c.pt", payload)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["python"] == payload["python"] and isinstance(back["python"], tuple)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert list(back["optimizer"]["state"]) == [0] and back["$odd"] == payload["$odd"]
    assert back["model"]["a"] is back["model"]["tied"] and torch.equal(back["model"]["a"], w)
    assert back["model"]["half"].dtype == torch.bfloat16 and back["model"]["empty"].shape == (0,)


# ------------------------------------------------------------------------------- killed at any point
KILL_STEPS = 24
KILL_ARGS = ["--steps", str(KILL_STEPS), "--checkpoint-every", "1", "--eval-every", "5"]

# run in a child process: SIGKILL itself when about to rename the Nth checkpoint into place, i.e. after the
# temporary file is complete and before the checkpoint is replaced (the worst moment a kill can pick)
KILL_IN_WRITE = """
import os, signal, sys
from tensornet.gpt2 import files
from tensornet.gpt2.app._cli import main
replace, seen = os.replace, []
def dying_replace(src, dst):
    if os.path.basename(str(src)).startswith(".checkpoint.pt."):
        seen.append(src)
        if len(seen) == int(sys.argv[1]):
            os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst)
files.os.replace = dying_replace
sys.exit(main(sys.argv[2:]))
"""


def run_cli(argv: list[str], *, kill_in_write: int | None = None) -> subprocess.Popen:
    if kill_in_write is None:
        command = [sys.executable, "-m", "tensornet.gpt2", *argv]
    else:
        command = [sys.executable, "-c", KILL_IN_WRITE, str(kill_in_write), *argv]
    return subprocess.Popen(command, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen, status: int) -> None:
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr.decode()[-2000:]


def log_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return -1


def kill_at_random(shared, out: Path, rng: random.Random, kills: int) -> int:
    """Start the run, SIGKILL it at a random moment while it trains, continue it with --resume (or start
    over with --overwrite if it died before its first checkpoint); repeat until it finishes. Returns how
    many runs were killed."""
    killed = 0
    argv = train_argv(shared, out, *KILL_ARGS)
    for attempt in range(kills + 3):
        extra = []
        if attempt:
            extra = ["--resume"] if (out / "checkpoint.pt").exists() else ["--overwrite"]
        proc = run_cli(argv + extra)
        if killed < kills:
            target = rng.randrange(1, KILL_STEPS + KILL_STEPS // 5)
            while proc.poll() is None and log_lines(out / "log.jsonl") < target:
                time.sleep(0.0005)
            time.sleep(rng.uniform(0, 0.01))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
        _, stderr = proc.communicate(timeout=120)
        if proc.returncode == 0:
            return killed
        assert proc.returncode == -signal.SIGKILL, stderr.decode()
    raise AssertionError("the run did not finish")


def test_sigkill_anywhere_then_resume_is_the_uninterrupted_run(shared, tmp_path):
    results: dict[str, object] = {}

    def reference_and_kill_in_write() -> None:
        finish(run_cli(train_argv(shared, tmp_path / "ref", *KILL_ARGS)), 0)
        out = tmp_path / "in-write"
        finish(run_cli(train_argv(shared, out, *KILL_ARGS), kill_in_write=7), -signal.SIGKILL)
        stale = list(out.glob(".checkpoint.pt.*.tmp*"))
        assert len(stale) == 1  # the complete temporary file, never renamed into place
        assert load_checkpoint(out / "checkpoint.pt")["step"] == 6  # the previous one is intact
        finish(run_cli(train_argv(shared, out, *KILL_ARGS, "--resume")), 0)
        assert not stale[0].exists() and not list(out.glob(".*.tmp*"))
        results["done"] = True

    worker = threading.Thread(target=reference_and_kill_in_write)
    worker.start()
    killed = kill_at_random(shared, tmp_path / "killed", random.Random(20240607), kills=3)
    worker.join(timeout=300)
    assert results.get("done"), "the reference / kill-in-write runs failed (see the thread's assertion)"
    assert killed >= 1
    ref = tmp_path / "ref"
    expected = load_checkpoint(ref / "checkpoint.pt")
    for out in (tmp_path / "killed", tmp_path / "in-write"):
        got = load_checkpoint(out / "checkpoint.pt")
        assert got["history"] == expected["history"], out  # every loss and evaluation, bit for bit
        assert (out / "log.jsonl").read_bytes() == (ref / "log.jsonl").read_bytes(), out
        assert tree(out / "model") == tree(ref / "model"), out
        assert not list(out.glob(".*.tmp*")) and not list(out.glob(".*.old*"))
    log = [json.loads(line) for line in (ref / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == list(range(1, KILL_STEPS + 1))
    assert [e["step"] for e in log if "val_loss" in e] == [5, 10, 15, 20, 24]
