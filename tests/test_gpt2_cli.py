"""``python -m tensornet.gpt2``: compare end to end, train/resume/eval/compress through the CLI, and every
CLI error path (exit status 2 with a message, never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tensornet.gpt2 import load_model
from tensornet.gpt2.app._checkpoint import load_checkpoint
from tensornet.gpt2.app._cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--n-layer", "2", "--n-embd", "64", "--n-head", "2", "--block-size", "32", "--vocab-size", "300"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORNET_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and immune to a busy machine
    yield
    torch.set_num_threads(threads)


def test_help_explains_every_subcommand():
    out = subprocess.run(
        [sys.executable, "-m", "tensornet.gpt2", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 0 and all(c in out.stdout for c in ("compare", "train", "compress", "eval"))
    for command in ("compare", "train", "compress", "eval"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0


@pytest.mark.slow
def test_compare_end_to_end(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--out",
            str(out),
            "--max-chars",
            "30000",
            *TINY,
            "--rank",
            "4",
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--warmup",
            "1",
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert (
        "| dense |" in printed
        and "| TTM r=4 (ranks 1,4,4,4,1), cores at 5x lr |" in printed
        and "| low-rank r=" in printed
        and ", factors at 9x lr |" in printed
    )
    summary = json.loads((out / "results.json").read_text())
    results = {r["variant"]: r for r in summary["results"]}
    assert set(results) == {"dense", "ttm", "lowrank"}
    for r in results.values():
        assert len(r["loss"]) == 4 and r["val"][-1][0] == 4 and r["val_ppl"] > 1
        assert r["tokens_per_s"] > 0 and r["peak_memory_mib"] > 0
    # same seed, same data: the dense parts start identical, so step-1 losses are close; sizes as built
    assert results["ttm"]["params"] < results["dense"]["params"]
    assert abs(results["lowrank"]["params"] - results["ttm"]["params"]) < 0.05 * results["dense"]["params"]
    assert results["dense"]["percent_of_dense"] == 100
    assert (out / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "tokens.pt").exists()


def _train(out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            *TINY,
            "--max-chars",
            "30000",
            "--steps",
            "6",
            "--batch-size",
            "4",
            "--warmup",
            "2",
            "--no-progress",
            "--device",
            "cpu",
            "--out",
            str(out),
            *extra,
        ]
    )


@pytest.mark.slow
def test_train_resume_eval_compress(tmp_path, capsys):
    assert _train(tmp_path / "full", "--rank", "4", "--shapes", "balanced", "--eval-every", "3") == 0
    assert (
        _train(
            tmp_path / "split", "--rank", "4", "--shapes", "balanced", "--eval-every", "3", "--stop-at", "4"
        )
        == 0
    )
    assert "continue with --resume" in capsys.readouterr().out
    assert not (tmp_path / "split" / "model").exists()
    assert (
        _train(tmp_path / "split", "--rank", "4", "--shapes", "balanced", "--eval-every", "3", "--resume")
        == 0
    )
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["history"]
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["history"]
    assert split == full  # the resumed run's losses equal the uninterrupted run's
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "val_loss" in e] == [3, 6]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4, 5, 6]
    # the log of the interrupted and resumed run is the uninterrupted run's, byte for byte
    assert (tmp_path / "split" / "log.jsonl").read_bytes() == (tmp_path / "full" / "log.jsonl").read_bytes()
    model = load_model(tmp_path / "full" / "model")
    assert model.config.tensornet["rank"] == 4
    capsys.readouterr()

    assert main(["eval", str(tmp_path / "full" / "model"), "--max-chars", "30000", "--device", "cpu"]) == 0
    ppl = float(capsys.readouterr().out.split("perplexity ")[1].split()[0])
    assert ppl == pytest.approx(float(torch.tensor(full["val"][-1][1]).exp()), rel=1e-4)

    assert _train(tmp_path / "dense") == 0
    capsys.readouterr()
    assert (
        main(
            [
                "compress",
                str(tmp_path / "dense" / "model"),
                "--rank",
                "8",
                "--shapes",
                "balanced",
                "--max-chars",
                "30000",
                "--out",
                str(tmp_path / "small"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "transformer.h.1.mlp.c_proj" in printed and "dense ->" in printed
    compressed = load_model(tmp_path / "small")
    assert isinstance(compressed.transformer.h[0].mlp.c_fc, torch.nn.Module)
    assert compressed.config.tensornet["method"] == "ttm"
    assert main(["eval", str(tmp_path / "small"), "--max-chars", "30000", "--device", "cpu"]) == 0


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (None, ["train", "--data", "{tmp}/missing.txt"], "does not exist"),
        ("empty", ["train", "--data", "{tmp}/empty.txt"], "only empty text"),
        ("binary", ["train", "--data", "{tmp}/binary.bin"], "looks binary"),
        ("latin", ["train", "--data", "{tmp}/latin.txt"], "not a UTF-8 text file"),
        (None, ["train", "--rank", "5000", "--shapes", "balanced"], "larger than useful"),
        (
            None,
            ["train", "--rank", "4", "--shapes", '{"mlp.c_fc": [[5, 16], [8, 16]], "mlp.c_proj": [[16, 8]]}'],
            "multiply to",
        ),
        (None, ["train", "--rank", "4", "--shapes", "{not json"], "JSON"),
        (None, ["train", "--rank", "4", "--shapes", '{"mlp.c_fc": 3}'], "pairs"),
        (None, ["train", "--rank", "4", "--layers", "mlp,emb"], "--layers"),
        (None, ["train", "--resume", "--out", "{tmp}/fresh"], "no checkpoint"),
        (None, ["train", "--tokenizer", "{tmp}/none.json"], "does not exist"),
        (None, ["train", "--n-embd", "60", "--n-head", "8"], "not divisible"),
        (None, ["eval", "{tmp}/no-model"], "does not exist"),
        (None, ["compress", "{tmp}/no-model", "--out", "{tmp}/x"], "exactly one of --rank and --eps"),
    ],
)
def test_cli_errors_are_clear(tmp_path, capsys, make, args, message):
    if make == "empty":
        (tmp_path / "empty.txt").write_text("\n\n")
    elif make == "binary":
        (tmp_path / "binary.bin").write_bytes(bytes(range(256)))
    elif make == "latin":
        (tmp_path / "latin.txt").write_bytes("na\xefve caf\xe9\n".encode("latin-1") * 50)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if argv[0] == "train" and "--resume" in argv:
        (tmp_path / "fresh").mkdir()
    if argv[0] == "train":
        # the case's own flags come last, so they win over the tiny defaults
        argv = [
            "train",
            *TINY,
            "--max-chars",
            "20000",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch-size",
            "2",
            "--no-progress",
            "--device",
            "cpu",
            *argv[1:],
        ]
        if "--out" not in argv:
            argv += ["--out", str(tmp_path / "run")]
    assert exit_code(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def exit_code(argv: list[str]) -> int:
    """``main``'s status: usage errors (found before any work) exit through argparse, later ones return."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return int(exit_info.code or 0)


def test_train_threads_sets_torchs_cpu_threads_for_the_run(tmp_path, monkeypatch):
    calls = []
    real = torch.set_num_threads

    def recorded(count):
        calls.append(count)
        real(count)  # applied too; the autouse fixture puts the process's count back afterwards

    monkeypatch.setattr(torch, "set_num_threads", recorded)
    assert _train(tmp_path / "two", "--threads", "2", "--steps", "1") == 0
    assert calls == [2]
    calls.clear()
    assert _train(tmp_path / "default", "--steps", "1") == 0
    assert calls == []  # without --threads, torch's default is left alone
