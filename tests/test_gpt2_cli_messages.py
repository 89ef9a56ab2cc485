"""What the command line says: help that needs no torch and states every default, the compile modes,
progress that survives evaluation lines and Ctrl-C, numbers that say what they were computed on and agree
between train and eval, warnings for results that would mislead, errors before any work, and no
empty folder left by a failed run."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_status

from tensornet.gpt2.app import _commands, _data, _precheck
from tensornet.gpt2.app._cli import main
from tensornet.gpt2.app._commands import log_spaced
from tensornet.gpt2.app._compare import table
from tensornet.gpt2.app._data import cached_tokenizer, eval_token_count, stdlib_corpus, val_batches

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

ROOT = Path(__file__).resolve().parents[1]
SIZE = ("--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16")
TINY = [*SIZE, "--vocab-size", "300", "--max-chars", "20000", "--batch-size", "4", "--device", "cpu"]


code = cli_status


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished 3-step dense run (evaluated on 512 tokens), its printed output and its cache."""
    root = tmp_path_factory.mktemp("newcomer")
    cache, out = root / "cache", root / "run"
    argv = ["train", *TINY, "--steps", "3", "--warmup", "5", "--eval-tokens", "512", "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert main([*argv, "--cache-dir", str(cache), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"cache": cache, "out": out, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


# ------------------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", ["compare", "train", "compress", "eval"])
def test_help_loads_neither_torch_nor_transformers(command):
    # what makes --help fast: the parser needs only the flags (timings are measured, not asserted)
    program = (
        "import sys\nfrom tensornet.gpt2.app._cli import main\n"
        f"try:\n    main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "LOADED False False" in out.stdout and "usage:" in out.stdout


def test_compress_help_shows_defaults_and_the_files_a_model_folder_needs(capsys):
    assert code(["compress", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for needle in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json + merges.txt",
        "(default auto)",
        "TT cores for --shapes balanced (in [1, 64]; default 3)",  # the range and the default
        "(in [1, 65536]; default 8)",  # --batch-size
        "(default mlp)",
        "tokens to evaluate at most (0: all) (in [0, 1099511627776]; default 0)",  # a default of 0 is stated too
    ):
        assert needle in text, needle


def test_compile_modes_are_documented_and_checked_while_parsing(capsys):
    assert code(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(mode in text for mode in ("'default'", "'reduce-overhead'", "'max-autotune'"))
    assert code(["train", "--compile", "fastest"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--compile" in err and "reduce-overhead" in err
    assert code(["compare", "--compile", "fastest"]) == 2
    assert "--compile" in capsys.readouterr().err


def test_bare_compile_means_default(tmp_path):
    from tensornet.gpt2.app._args import parser

    args = parser().parse_args(["train", "--compile"])
    assert args.compile == "default"
    assert parser().parse_args(["train"]).compile is None
    args = parser().parse_args(["compare", "--compile", "max-autotune"])
    assert _precheck.train_config(args).compile == "max-autotune"


def test_compile_without_a_cpp_compiler_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(_precheck.shutil, "which", lambda name: None)
    argv = ["train", *TINY, "--steps", "2", "--warmup", "1", "--compile", "--out", str(tmp_path / "out")]
    assert code([*argv, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --compile default") and "C++ compiler" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)  # inductor's import
def test_compile_default_trains_a_tiny_model_on_cpu(run, tmp_path, capsys):
    # inductor's C++ kernels on CPU (this machine has g++); a couple of steps, the losses finite
    out = tmp_path / "compiled"
    argv = ["train", *TINY, "--steps", "2", "--warmup", "1", "--compile", "--no-progress"]
    assert main([*argv, "--cache-dir", str(run["cache"]), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "compiled (default)" in printed.out and "finished at step 2/2" in printed.out
    assert "Dynamo detected" not in printed.err
    log = (out / "log.jsonl").read_text().splitlines()
    assert len([line for line in log if '"loss"' in line]) == 2


# ------------------------------------------------------------------------ numbers say what they are of
def test_eval_token_count_is_what_evaluation_reads():
    ids = torch.arange(1000)
    for block in (1, 7, 16, 999):
        for limit in (None, block, 100, 998, 5000):
            if limit is not None and limit < block:
                continue
            windows = val_batches(ids, block_size=block, max_tokens=limit)
            assert eval_token_count(ids.numel(), block, limit) == windows.shape[0] * block


def test_train_states_its_validation_tokens_and_eval_reproduces_the_number(run, capsys):
    printed = run["stdout"]
    assert "evaluation at the end, on 512 validation tokens" in printed
    final = re.search(r"validation perplexity ([\d.]+) on 512 validation tokens", printed)
    assert final, printed
    # the same evaluation of the saved model: the run's text (--max-chars), window and token count
    argv = [
        "eval",
        str(run["out"] / "model"),
        "--max-chars",
        "20000",
        "--block-size",
        "16",
        "--eval-tokens",
        "512",
    ]
    assert code([*argv, "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    again = re.search(r"perplexity ([\d.]+) on 512 tokens of the embedded corpus's validation split", said)
    assert again, said
    assert abs(float(again.group(1)) - float(final.group(1))) < 0.01


def test_eval_says_the_tokens_it_measured(run, capsys):
    model = str(run["out"] / "model")
    assert code(["eval", model, "--max-chars", "20000", "--eval-tokens", "320", "--device", "cpu"]) == 0
    said = capsys.readouterr().out
    assert "on 320 tokens of the embedded corpus's validation split (--max-chars 20000)" in said
    assert code(["eval", model, "--max-chars", "20000", "--eval-tokens", "100", "--device", "cpu"]) == 0
    assert "on 96 tokens" in capsys.readouterr().out  # six windows of 16: what was measured, not asked


def test_compare_table_says_its_memory_column_is_peak_rss_on_cpu():
    result = dict(variant="dense", params=10, percent_of_dense=100.0, val_ppl=5.0, ppl_vs_dense_percent=0.0)
    result |= dict(tokens_per_s=1.0, peak_memory_mib=2.0)
    assert "peak RSS of its process (MiB)" in table(
        {"spec": {"device": "cpu", "rank": 4, "train": {}}, "results": [result]}
    )
    cuda = table({"spec": {"device": "cuda:0", "rank": 4, "train": {}}, "results": [result]})
    assert "peak allocated CUDA memory (MiB)" in cuda


# ------------------------------------------------------------------------------------------- warnings
def test_a_clipped_rank_is_warned_in_one_line(run, tmp_path, capsys):
    # c_fc (128, 32) in 4 balanced cores: bonds of useful maxima (4, 32, 16), so rank 20 is clipped in 2 layers
    argv = [
        "train",
        *TINY,
        "--rank",
        "20",
        "--ncores",
        "4",
        "--shapes",
        "balanced",
        "--steps",
        "1",
        "--warmup",
        "1",
    ]
    assert code([*argv, "--no-progress", "--cache-dir", str(run["cache"]), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "warning: --rank 20 is clipped to the useful maximum of some TT bonds in 2 layers" in err, err


def test_a_tokenizer_smaller_than_the_model_vocabulary_is_warned(run, tmp_path, capsys):
    small = cached_tokenizer(stdlib_corpus(max_chars=20000), 280, run["cache"])
    path = tmp_path / "tokenizer.json"
    small.save(str(path))
    model = str(run["out"] / "model")
    argv = ["eval", model, "--tokenizer", str(path), "--max-chars", "20000", "--eval-tokens", "64"]
    assert code([*argv, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: the tokenizer has 280 tokens and the model" in err and "300" in err


# ------------------------------------------------------------------------- errors before any work
ISSUE_EXAMPLES = [
    (["--steps", "0"], "--steps"),
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr"),
    (["--shapes", "papr"], "--shapes"),
    (["--rank", "8", "--shapes", "paper"], "--shapes balanced"),  # the tiny preset has no paper shapes
]


@pytest.mark.parametrize(("flags", "needle"), ISSUE_EXAMPLES)
def test_impossible_settings_fail_before_any_work(flags, needle, tmp_path, capsys, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the arguments were checked")

    monkeypatch.setattr(_data, "load_corpus", no_data)
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["train", "--steps", "2", "--out", str(out), "--cache-dir", str(cache), "--device", "cpu", *flags]
    assert code(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and "shapes='" not in err, err
    assert not out.exists() and not cache.exists()
    assert code(["compare", "--rank", "0", "--out", str(out), "--cache-dir", str(cache)]) == 2
    assert not out.exists()


def test_a_failed_run_leaves_no_folder_behind(run, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")

    def fails(command: str, out: Path) -> None:
        rank = ["--rank", "4"] if command == "compare" else []
        argv = [command, *TINY, *rank, "--steps", "2", "--warmup", "1", "--no-progress", "--data", str(empty)]
        assert code([*argv, "--cache-dir", str(run["cache"]), "--out", str(out)]) == 2
        assert "only empty text" in capsys.readouterr().err

    for command in ("train", "compare"):
        out = tmp_path / command / "out"
        fails(command, out)
        assert not out.exists() and not out.parent.exists()  # neither it nor the parent it created
    kept = tmp_path / "kept"  # an empty folder the user made stays, empty
    kept.mkdir()
    fails("compare", kept)
    assert kept.is_dir() and list(kept.iterdir()) == []


# ---------------------------------------------------------------------------------- resume messages
def test_resume_names_the_setting_that_differs(run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run["out"], out, ignore=shutil.ignore_patterns(".tensornet-run.lock"))
    base = [
        "train",
        *TINY,
        "--warmup",
        "5",
        "--eval-tokens",
        "512",
        "--no-progress",
        "--cache-dir",
        str(run["cache"]),
    ]
    assert code([*base, "--steps", "3", "--lr", "0.002", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: checkpoint 0.001, now 0.002 (--lr)" in err and "{" not in err
    assert code([*base, "--steps", "6", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "train.steps: checkpoint 3, now 6 (--steps)" in err and "start a new run in another --out" in err
    assert code([*base, "--steps", "3", "--compile", "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "train.compile: checkpoint None, now 'default' (--compile)" in err
    assert len(err.strip().splitlines()) == 1 and "only with the settings it started with" in err


def test_resume_says_where_it_resumed_and_a_finished_run_has_no_nan(run, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", *TINY, "--steps", "3", "--warmup", "5", "--eval-tokens", "512", "--no-progress"]
    base += ["--cache-dir", str(run["cache"]), "--out", str(out)]
    assert code([*base, "--stop-at", "2"]) == 0
    capsys.readouterr()
    assert code([*base, "--resume"]) == 0
    assert "resumed from step 2/3" in capsys.readouterr().out
    assert code([*base, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert (
        "nothing to train" in printed and "already finished at step 3/3" in printed and "nan" not in printed
    )


# ------------------------------------------------------------------------------------------ progress
def _last_segments(err: str) -> list[str]:
    """Every line of terminal output as it ends up on screen (the text after its last carriage return)."""
    return [line.split("\r")[-1] for line in err.split("\n")]


def test_evaluation_lines_and_ctrl_c_do_not_break_the_progress_bar(run, tmp_path, capsys, monkeypatch):
    argv = ["train", *TINY, "--steps", "3", "--warmup", "1", "--eval-every", "1", "--eval-tokens", "64"]
    assert code([*argv, "--cache-dir", str(run["cache"]), "--out", str(tmp_path / "a")]) == 0
    lines = _last_segments(capsys.readouterr().err)
    evals = [line for line in lines if "validation loss" in line]
    assert len(evals) == 3 and all(line.startswith("step ") for line in evals), lines
    assert all("on 64 validation tokens" in line for line in evals)

    def interrupted(model, train_ids, val_ids, cfg, *, on_step, **kwargs):
        on_step(1, 5.0)
        raise KeyboardInterrupt

    monkeypatch.setattr(_commands, "train", interrupted)
    assert code([*argv, "--cache-dir", str(run["cache"]), "--out", str(tmp_path / "b")]) == 130
    lines = _last_segments(capsys.readouterr().err)
    assert any(line.startswith("interrupted") for line in lines), lines


@pytest.mark.slow
def test_compare_shows_one_bar_and_a_line_per_model(run, tmp_path, capsys):
    argv = ["compare", *TINY, "--rank", "4", "--steps", "3", "--warmup", "1", "--eval-tokens", "64"]
    assert code([*argv, "--cache-dir", str(run["cache"]), "--out", str(tmp_path / "c")]) == 0
    captured = capsys.readouterr()
    lines = _last_segments(captured.err)
    for variant in ("dense", "ttm", "lowrank"):
        line = next(line for line in lines if line.startswith(f"{variant}: validation perplexity"))
        assert "on 64 tokens" in line and "parameters" in line
    assert "lowrank (3/3)" in captured.err and "9/9" in captured.err  # one bar over every model's steps
    assert "peak RSS of its process (MiB)" in captured.out
    # without --eval-every, log-spaced evaluations give loss_curves.png its validation curves
    assert "evaluation after steps 1, 2, 3, on 64 validation tokens" in captured.out
    results = json.loads((tmp_path / "c" / "results.json").read_text())["results"]
    assert all([step for step, _ in r["val"]] == [1, 2, 3] for r in results)


def test_log_spaced_evaluations():
    assert log_spaced(300) == (3, 7, 17, 45, 116, 300)
    assert log_spaced(1) == (1,) and log_spaced(4) == (1, 2, 3, 4)
    for steps in (1, 2, 10, 999, 10**6):
        points = log_spaced(steps)
        assert points[-1] == steps and list(points) == sorted(set(points)) and points[0] >= 1


def test_a_killed_compare_worker_is_a_clear_error(run, tmp_path, capsys, monkeypatch):
    import multiprocessing

    from tensornet.gpt2.app import _compare

    real = _compare.compare

    def killing(spec, *, on_step, **kwargs):
        def kill(*event):  # as the system's out-of-memory killer would, at the first step
            for child in multiprocessing.active_children():
                child.kill()

        return real(spec, on_step=kill, **kwargs)

    monkeypatch.setattr(_compare, "compare", killing)
    argv = ["compare", *TINY, "--rank", "4", "--steps", "50", "--warmup", "1", "--no-progress"]
    assert code([*argv, "--cache-dir", str(run["cache"]), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "error: compare: the process training the dense model ended without a result" in err
    assert "Traceback" not in err and not (tmp_path / "c").exists()


def test_an_error_in_a_compare_worker_is_raised_in_the_parent():
    from tensornet.gpt2.app import _compare

    config = dict(vocab_size=300, block_size=32, preset=None, n_layer=1, n_embd=8, n_head=1)
    spec = {"ids": (torch.arange(10), torch.arange(10)), "config": config, "variant": "dense", "seed": 0}
    spec |= {"train": {"steps": 1, "batch_size": 1, "block_size": 32}, "device": "cpu"}
    with pytest.raises(ValueError, match="the training text has 10 tokens"):  # its own type and message
        _compare._in_worker(spec, None)
