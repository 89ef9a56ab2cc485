"""The commands a new user tries first: they work with the defaults and say what they chose, a mistyped flag
is an error (no abbreviations), help says what a flag does, a resume refuses every setting that would make its
log differ from an uninterrupted run's, a finished run leaves no lock file, a run folder stands for its model,
a run says its speed and memory, and the README says how to run the notebooks."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import cli_status, train_argv

from tensornet.gpt2.app import _precheck, _resume, _runfolder, _train
from tensornet.gpt2.app._args import parser
from tensornet.gpt2.app._compare import table

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the defaults work together
def test_train_rank_8_with_the_default_preset_passes_its_checks(tmp_path):
    # the first TTM command: the tiny preset (4 x 256) has no paper shapes, so the default takes balanced ones
    args = parser().parse_args(["train", "--rank", "8", "--out", str(tmp_path / "o"), "--device", "cpu"])
    _precheck.check(args)
    assert args.shapes == "balanced" and "not 256 <-> 1024" in args.shapes_note
    # GPT-2 small's width has the paper's shapes: the default takes them
    args = parser().parse_args(["train", "--preset", "small", "--rank", "64", "--out", str(tmp_path / "s")])
    _precheck.resolve_shapes(args, 768, 3072)
    assert args.shapes == "paper" and "paper" in args.shapes_note


def test_train_and_compress_of_a_small_model_with_default_shapes(shared, tmp_path, capsys):
    assert cli_status(train_argv(shared, tmp_path / "t", "--rank", "8")) == 0
    printed = capsys.readouterr().out
    assert "core shapes: balanced, 3 cores (--shapes auto" in printed, printed
    out = tmp_path / "c"
    argv = ["compress", str(shared["run"] / "model"), "--rank", "2", "--out", str(out), "--device", "cpu"]
    assert cli_status([*argv, "--max-chars", "4000"]) == 0
    assert "core shapes: balanced" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()


# ------------------------------------------------------------------ no abbreviations
@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--step", "5"],
        ["compare", "--step", "5"],
        ["train", "--eval-ev", "5"],
        ["eval", "m", "--block", "8"],
        ["compress", "m", "--out", "o", "--ran", "2"],
    ],
)
def test_abbreviated_flags_are_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        parser().parse_args(argv)
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


# ------------------------------------------------------------------ help says what happens
def _help(command: str, flag: str) -> str:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices[command]._actions if flag in a.option_strings)
    return " ".join((action.help or "").split())


def test_eval_every_0_means_what_each_command_does():
    from tensornet.gpt2.app._args import COMPARE_RECIPE, EVAL_POINTS
    from tensornet.gpt2.app._commands import log_spaced

    assert "only at the end" in _help("train", "--eval-every")
    compare = _help("compare", "--eval-every")
    assert "only at the end" not in compare and f"after {EVAL_POINTS} log-spaced steps" in compare
    steps = log_spaced(COMPARE_RECIPE.steps)
    assert len(steps) == EVAL_POINTS and steps[-1] == COMPARE_RECIPE.steps  # what compare evaluates at


# ------------------------------------------------------------------ resume refuses what changes the log
# every train flag: either it changes the log (a resume with another value is refused), or it does not
NOT_IN_THE_LOG = {
    "help",
    "out",
    "overwrite",
    "cache_dir",
    "no_progress",
    "checkpoint_every",
    "resume",
    "stop_at",
}


def _train_dests() -> set[str]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest for a in sub.choices["train"]._actions}


# flag -> (another value, or None for a switch; what the refusal names)
CHANGED = {
    "--data": ("DATA", "--data"),
    "--max-chars": ("19000", "--max-chars"),
    "--tokenizer": ("TOKENIZER", "--tokenizer"),
    "--vocab-size": ("290", "--vocab-size"),
    "--preset": ("small", "--lr"),  # the sizes are given: the preset's other default, lr, changes
    "--n-layer": ("2", "n_layer"),
    "--n-embd": ("16", "n_embd"),
    "--n-head": ("4", "n_head"),
    "--dropout": ("0.1", "--dropout"),
    "--threads": ("2", "--threads"),
    "--rank": ("3", "--rank"),
    "--shapes": ('{"mlp.c_fc": [[8, 4], [16, 8]], "mlp.c_proj": [[4, 8], [8, 16]]}', "--shapes"),
    "--ncores": ("2", "--ncores"),
    "--layers": ("mlp,attn", "--layers"),
    "--no-bias": (None, "--no-bias"),
    "--embeddings": (None, "--embeddings"),
    "--embedding-rank": ("2", "--embedding-rank"),
    "--lowrank": ("2", "--lowrank"),
    "--steps": ("4", "--steps"),
    "--batch-size": ("2", "--batch-size"),
    "--block-size": ("8", "--block-size"),
    "--lr": ("0.002", "--lr"),
    "--min-lr-ratio": ("0.5", "--min-lr-ratio"),
    "--warmup": ("1", "--warmup"),
    "--weight-decay": ("0.1", "--weight-decay"),
    "--beta1": ("0.8", "--beta1"),
    "--beta2": ("0.99", "--beta2"),
    "--clip": ("0.5", "--clip"),
    "--tt-lr-scale": ("2", "--tt-lr-scale"),
    "--lowrank-lr-scale": ("2", "--lowrank-lr-scale"),
    "--seed": ("1", "--seed"),
    "--eval-every": ("1", "--eval-every"),
    "--eval-tokens": ("64", "--eval-tokens"),
    "--compile": (None, "--compile"),
}


def test_every_train_flag_is_audited_against_the_checkpoint():
    audited = {flag[2:].replace("-", "_") for flag in CHANGED} | {"device"}  # --device: see below
    assert _train_dests() == audited | NOT_IN_THE_LOG


def test_a_changed_device_or_process_count_is_refused():
    # (no second device here: the signature's runtime entries, compared as --resume compares them)
    cfg = _train.TrainConfig(steps=3)
    cpu = _resume.signature(cfg, {}, {"device": "cpu", "processes": 1, "threads": 2})
    for runtime, flag in (
        ({"device": "cuda", "processes": 1}, "(--device)"),
        ({"device": "cpu", "processes": 2, "threads": 2}, "--nproc-per-node"),
    ):
        diff = _resume._diff(cpu, _resume.signature(cfg, {}, runtime))
        assert diff and all(line.startswith("runtime.") for line in diff) and flag in diff[0], diff


@pytest.mark.slow
def test_a_resume_with_any_changed_flag_that_shapes_the_log_is_refused(shared, tmp_path, capsys):
    base = train_argv(shared, tmp_path / "run", "--rank", "2")
    assert cli_status([*base, "--stop-at", "2"]) == 0
    text = tmp_path / "data.txt"
    text.write_text("def f(x):\n    return x\n" * 2000)
    from tensornet.gpt2.app._data import stdlib_corpus, train_tokenizer

    tokenizer = tmp_path / "tokenizer.json"
    train_tokenizer(stdlib_corpus(max_chars=20000).train, 280).save(str(tokenizer))
    base.remove("--no-progress")
    for flag, (value, needle) in CHANGED.items():
        value = {"DATA": str(text), "TOKENIZER": str(tokenizer)}.get(value, value)
        argv = (
            [a for a in base if a != "--vocab-size" and a != "300"] if flag == "--tokenizer" else list(base)
        )
        if flag in argv:  # replace the base run's value
            i = argv.index(flag)
            argv[i + 1] = value
        else:
            argv += [flag] if value is None else [flag, value]
        if flag == "--lowrank":
            argv[argv.index("--rank") + 1] = "0"
        if flag == "--embedding-rank":
            argv.append("--embeddings")
        assert cli_status([*argv, "--resume", "--no-progress"]) == 2, flag
        torch.set_num_threads(1)  # (the CLI sets --threads for the process it runs in: this one)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and needle in err and "Traceback" not in err, (flag, err)
    # the same settings resume, with a changed checkpoint frequency and stop (the log does not show them)
    assert cli_status([*base, "--resume", "--no-progress", "--checkpoint-every", "1"]) == 0


# ------------------------------------------------------------------ the lock file, the run folder's model
def test_a_finished_run_leaves_no_lock_file(shared, tmp_path):
    assert not (shared["run"] / _runfolder.LOCK).exists()
    out = tmp_path / "run"
    assert cli_status(train_argv(shared, out, "--stop-at", "1")) == 0
    assert not (out / _runfolder.LOCK).exists()  # stopped: no lock either
    assert cli_status(train_argv(shared, out, "--resume")) == 0
    assert not (out / _runfolder.LOCK).exists() and (out / "model").is_dir()


def test_only_the_lock_file_the_run_created_is_removed(tmp_path):
    folder = _runfolder.RunFolder.open(tmp_path / "run", kind="train")
    lock = tmp_path / "run" / _runfolder.LOCK
    other = tmp_path / "other"
    other.write_text("not the run's")
    os.replace(other, lock)  # someone put another file at the name while the run held its lock
    folder.close()
    assert lock.read_text() == "not the run's"


def test_eval_of_a_train_run_folder_uses_its_model(shared, tmp_path, capsys):
    argv = ["eval", str(shared["run"]), "--max-chars", "4000", "--device", "cpu"]
    assert cli_status(argv) == 0
    assert f"model: {shared['run'] / 'model'} (the model of the train run" in capsys.readouterr().out
    unfinished = tmp_path / "unfinished"
    assert cli_status(train_argv(shared, unfinished, "--stop-at", "1")) == 0
    capsys.readouterr()
    assert cli_status(["eval", str(unfinished), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "without a model yet" in err and "--resume" in err, err


# ------------------------------------------------------------------ speed and memory are said
def test_train_and_compare_say_their_speed_and_peak_memory(shared, tmp_path, capsys):
    assert cli_status(train_argv(shared, tmp_path / "run")) == 0
    printed = capsys.readouterr().out
    assert re.search(r"finished at step 3/3: .* [\d,]+ tokens/s, peak RSS of the process [\d,]+ MiB", printed)
    result = dict(variant="dense", params=10, percent_of_dense=100.0, val_ppl=5.0, ppl_vs_dense_percent=0.0)
    result |= dict(tokens_per_s=1000.0, peak_memory_mib=2.0)
    row = table({"spec": {"device": "cpu", "rank": 4, "train": {}}, "results": [result]}).splitlines()[-1]
    assert row == "| dense | 10 | 100.0 | 5.00 | +0.0% | 1,000 | 2 |"


# ------------------------------------------------------------------ the README
def test_the_readme_says_how_to_run_the_notebooks():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r'pip install -e "\.\[notebooks\]"', readme)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "jupyter" in extras["notebooks"] and "tensornet[gpt2]" in extras["notebooks"]
    # and that extra is all they need: every module a notebook imports is the standard library's, Jupyter's
    # or one the extra installs (tensornet[gpt2] brings torch, tqdm and matplotlib; numpy is tensornet's)
    provided = {"tensornet", "numpy", "torch", "tqdm", "matplotlib", "IPython"}
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        modules = {m.split(".")[0] for m in re.findall(r"^\s*(?:import|from)\s+([\w.]+)", code, re.M)}
        assert modules - provided - set(sys.stdlib_module_names) == set(), notebook.name
