"""What an interruption leaves is what the messages say: a run stopped before its first checkpoint starts over
with the same command, and a model folder being replaced by save_model, killed or failing at any of its renames,
holds the old model or fails its checksum with one line, never a mix that loads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import cli_status, train_argv

from tensornet.gpt2 import load_model, save_model
from tensornet.gpt2.app import _train

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


# ------------------------------------------------------------------ Ctrl-C before the first checkpoint
def test_ctrl_c_before_the_first_checkpoint_then_the_same_command_works(
    shared, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real = _train._Run.step

    def interrupted_at_step_2(self, step, *args, **kwargs):
        if step == 1:
            raise KeyboardInterrupt
        return real(self, step, *args, **kwargs)

    monkeypatch.setattr(_train._Run, "step", interrupted_at_step_2)
    assert cli_status(train_argv(shared, out)) == 130
    err = capsys.readouterr().err
    assert "nothing to resume" in err and "run the same command again" in err, err
    assert (out / "log.jsonl").is_file() and not (out / "checkpoint.pt").exists()
    monkeypatch.undo()
    # --resume has nothing to continue: it says what works
    assert cli_status(train_argv(shared, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err and "without --resume" in err, err
    # and what it says works: the same command starts the run over, with an uninterrupted run's log
    assert cli_status(train_argv(shared, out)) == 0, capsys.readouterr().err
    assert (out / "log.jsonl").read_bytes() == (shared["run"] / "log.jsonl").read_bytes()
    # a folder with more than a log (a checkpoint) is still refused without --resume or --overwrite
    assert cli_status(train_argv(shared, out)) == 2
    assert "--resume to continue it" in capsys.readouterr().err


# ------------------------------------------------------------------ save_model killed at one of its renames
# in a child process: load the model, change it, save it over the folder, and SIGKILL itself when about to
# make its Nth rename (the mark, the weights, config.json; the temporary file is complete)
KILL_AT_RENAME = """
import os, signal, sys, torch
from tensornet.gpt2 import load_model, save_model
model = load_model(sys.argv[1])
with torch.no_grad():
    model.transformer.wte.weight.add_(1.0)
replace, calls = os.replace, []
def dying(src, dst):
    calls.append(src)
    if len(calls) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst)
os.replace = dying
save_model(model, sys.argv[1], overwrite=True)
"""


def killed_at_rename(shared, tmp_path: Path, rename: int) -> tuple[Path, dict[str, bytes]]:
    target = tmp_path / "model"
    shutil.copytree(shared["run"] / "model", target)  # save_model's own (marked) folder, with its tokenizer
    before = tree(target)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_RENAME, str(target), str(rename)],
        env=ENV,
        cwd=ROOT,
        capture_output=True,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert len(list(target.glob(".*.tmp*"))) == 1  # the complete temporary file it was about to rename
    return target, before


def test_a_save_model_killed_before_its_weights_are_in_place_leaves_the_old_model(shared, tmp_path):
    target, before = killed_at_rename(shared, tmp_path, 2)
    model = load_model(target)
    assert {k: v for k, v in tree(target).items() if not k.startswith(".")} == before
    expected = load_model(shared["run"] / "model")
    assert torch.equal(model.transformer.wte.weight, expected.transformer.wte.weight)


def test_a_save_model_killed_after_its_weights_fails_its_checksum_until_saved_again(shared, tmp_path, capsys):
    for rename in (3,):  # config.json (the child gives no tokenizer): the new weights, the old config.json
        target, _ = killed_at_rename(shared, tmp_path / str(rename), rename)
        with pytest.raises(ValueError, match="fails its checksum"):
            load_model(target)
        assert cli_status(["eval", str(target), "--max-chars", "4000", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "fails its checksum" in err and len(err.splitlines()) == 1
        model = load_model(shared["run"] / "model")
        with pytest.raises(FileExistsError, match="already exists"):
            save_model(model, target)  # still save_model's folder: not replaced without overwrite
        save_model(model, target, overwrite=True)  # the leftover of the killed process is removed
        assert not list(target.glob(".*"))
        assert torch.equal(load_model(target).transformer.wte.weight, model.transformer.wte.weight)


def test_a_failure_at_a_rename_keeps_the_old_model(shared, tmp_path, monkeypatch):
    target = tmp_path / "model"
    save_model(load_model(shared["run"] / "model"), target)
    before = tree(target)
    replace, calls = os.replace, []

    def failing(src, dst):
        calls.append(src)
        if len(calls) == 2:  # the weights
            raise OSError(28, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="free some space"):
        save_model(load_model(target), target, overwrite=True)
    monkeypatch.undo()
    assert tree(target) == before and [p.name for p in tmp_path.iterdir()] == ["model"]
