"""Every temporary name the package makes fits the file system's limit on a name, whatever the length of the
legal name it stands for; a name that is itself too long is refused before any work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import GPT2_TINY, cli_status

from tensornet.gpt2 import files, load_model, save_model
from tensornet.gpt2.app import _commands
from tensornet.gpt2.app._checkpoint import write_json

pytestmark = pytest.mark.usefixtures("one_thread")  # the tiny models run faster on one thread (conftest)

DEAD = 2**22 + 12345  # above Linux's default pid_max: no such process
LONG = "m" * 250  # a legal name (NAME_MAX is 255 bytes) too long for ".NAME.tmpPID"


def nbytes(path: Path) -> int:
    return len(os.fsencode(path.name))


def test_temporary_names_of_long_names_fit(tmp_path):
    for name in (LONG, "é" * 127, "x" * 255):  # bytes, not characters, count
        target = tmp_path / name
        seen: list[Path] = []
        files.replace_file(target, seen.append)
        assert nbytes(seen[0]) <= files.NAME_MAX and seen[0].parent == tmp_path, name
        write_json(target, {"a": 1})  # an atomic write at the long name works
        assert target.read_text().strip().endswith("}")
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    seen = []
    files.replace_file(tmp_path / "short.json", seen.append)  # short names kept whole
    assert seen[0].name.startswith(".short.json.") and seen[0].name.endswith(f".tmp{os.getpid()}")


def test_leftovers_of_long_names_are_removed_and_only_those(tmp_path):
    own = tmp_path / f".{LONG[:50]}.0123abcd.tmp{DEAD}"
    other = tmp_path / f".{'n' * 50}.0123abcd.tmp{DEAD}"  # another long name's, not listed
    live = tmp_path / f".{LONG[:50]}.0123abcd.tmp{os.getpid()}"  # a running writer's
    for file in (own, other, live):
        file.write_text("partial")
    assert files.remove_stale_tmp(tmp_path, [LONG], live=False) == [own]
    assert not own.exists() and other.exists() and live.exists()


def test_save_model_to_a_long_name_over_an_old_one(shared, tmp_path):
    model = load_model(shared["run"] / "model")
    target = tmp_path / LONG
    save_model(model, target)
    save_model(model, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LONG]
    assert load_model(target) is not None


def compress_argv(shared, out: Path) -> list[str]:
    src = str(shared["run"] / "model")
    return ["compress", src, "--out", str(out), "--rank", "2", "--shapes", "balanced", "--device", "cpu"]


def test_compress_to_a_long_legal_name(shared, tmp_path, capsys):
    out = tmp_path / LONG
    assert cli_status([*compress_argv(shared, out), "--max-chars", "4000"]) == 0, capsys.readouterr().err
    assert load_model(out) is not None and sorted(p.name for p in tmp_path.iterdir()) == [LONG]


def test_a_name_too_long_is_refused_before_any_work(shared, tmp_path, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the command started working before it checked --out")

    monkeypatch.setattr(_commands, "load_model", no_work)
    monkeypatch.setattr(_commands._data, "load_corpus", no_work)
    too_long = "n" * 256
    argvs = [
        compress_argv(shared, tmp_path / too_long),
        compress_argv(shared, tmp_path / too_long / "model"),
        [
            "train",
            *GPT2_TINY,
            "--steps",
            "2",
            "--cache-dir",
            str(shared["cache"]),
            "--out",
            str(tmp_path / too_long),
        ],
        [
            "compare",
            *GPT2_TINY,
            "--steps",
            "2",
            "--cache-dir",
            str(shared["cache"]),
            "--out",
            str(tmp_path / too_long),
        ],
    ]
    for argv in argvs:
        assert cli_status(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "more than the 255" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []
    shutil.rmtree(tmp_path, ignore_errors=True)
