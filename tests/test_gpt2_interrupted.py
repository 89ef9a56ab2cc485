"""What an interruption leaves is what the messages say: a run stopped before its first checkpoint starts over
with the same command, and a model folder being replaced by save_model is never lost, whether the process is
killed or fails between the two renames."""

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


# ------------------------------------------------------------------ save_model between its two renames
# in a child process: load the model, change it, save it over the folder, and SIGKILL itself when about to
# make the second rename (the old folder set aside, the new one complete but not in place)
KILL_BETWEEN_RENAMES = """
import os, signal, sys, torch
from tensornet.gpt2 import load_model, save_model
model = load_model(sys.argv[1])
with torch.no_grad():
    model.transformer.wte.weight.add_(1.0)
replace, calls = os.replace, []
def dying(src, dst):
    calls.append(src)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst)
os.replace = dying
save_model(model, sys.argv[1], overwrite=True)
"""


def killed_between_renames(shared, tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    target = tmp_path / "model"
    shutil.copytree(shared["run"] / "model", target)  # save_model's own (marked) folder, with its tokenizer
    before = tree(target)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_BETWEEN_RENAMES, str(target)], env=ENV, cwd=ROOT, capture_output=True
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not target.exists()  # what the kill left: the old folder set aside, the new one beside it
    assert sorted(p.name.split(".")[3][:3] for p in tmp_path.iterdir()) == ["old", "tmp"]  # .model.XXXX.old9
    return target, before


def test_a_save_model_killed_between_its_renames_is_restored_on_the_next_load(shared, tmp_path):
    target, before = killed_between_renames(shared, tmp_path)
    model = load_model(target)
    assert tree(target) == before and [p.name for p in tmp_path.iterdir()] == ["model"]
    expected = load_model(shared["run"] / "model")
    assert torch.equal(model.transformer.wte.weight, expected.transformer.wte.weight)


def test_a_save_model_killed_between_its_renames_is_restored_on_the_next_save(shared, tmp_path, capsys):
    target, before = killed_between_renames(shared, tmp_path)
    model = load_model(shared["run"] / "model")
    with pytest.raises(FileExistsError, match="already exists"):
        save_model(model, target)  # the restored folder is there again: not replaced without overwrite
    assert tree(target) == before
    save_model(model, target, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    # and the command line finds it too
    again, before = killed_between_renames(shared, tmp_path / "again")
    assert cli_status(["eval", str(again), "--max-chars", "4000", "--device", "cpu"]) == 0
    assert tree(again) == before and [p.name for p in again.parent.iterdir()] == ["model"]


def test_a_failure_between_the_renames_puts_the_old_folder_back(shared, tmp_path, monkeypatch):
    target = tmp_path / "model"
    save_model(load_model(shared["run"] / "model"), target)
    before = tree(target)
    replace, calls = os.replace, []

    def failing(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="free some space"):
        save_model(load_model(target), target, overwrite=True)
    monkeypatch.undo()
    assert tree(target) == before and [p.name for p in tmp_path.iterdir()] == ["model"]
