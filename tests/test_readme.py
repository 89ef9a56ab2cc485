"""README.md: its two commands are the ones CI runs, and its Python snippets run and print what they say."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import tensornet as tn

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]


def _run(code: str) -> dict:
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def _shown_reprs(code: str, namespace: dict) -> int:
    """Check every ``expr  # TT(...)`` / ``# TTM(...)`` line: the comment is ``repr(expr)``. Returns how many."""
    count = 0
    for line in code.splitlines():
        expr, sep, comment = line.partition("#")
        comment = comment.strip()
        if sep and expr.strip() and re.match(r"TTM?\(", comment):
            assert repr(eval(expr, namespace)) == comment, line
            count += 1
    return count


def test_readme_starts_with_the_setup_and_test_commands():
    lang, code = BLOCKS[0]
    assert lang == "bash" and README.index("```bash") < README.index("## ")  # before the first section
    commands = [line for line in code.splitlines() if line.strip() and not line.startswith("#")]
    assert len(commands) == 2
    main_job, tests = commands
    for (
        command
    ) in commands:  # each sets up from a clean clone: a fresh venv, the pinned CPU torch, the package
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && ")
        assert ".venv/bin/pip install -e " in command
    assert main_job.endswith(".venv/bin/python -m tensornet.gpt2 compare")  # the embedded default: no flags
    assert '".[gpt2]"' in main_job and '".[test]"' in tests
    # the test command is the one CI runs (.ci/run), with the same environment and arguments
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    pytest_part = tests.split(" && ")[-1]
    env, _, args = pytest_part.partition(".venv/bin/python -m pytest ")
    ci_line = next(line for line in ci.splitlines() if " -m pytest " in line)
    ci_env, _, ci_args = ci_line.partition("python -m pytest ")
    assert shlex.split(args) == shlex.split(ci_args) and shlex.split(env) == shlex.split(ci_env)


def test_readme_quick_look_runs_and_shows_its_results():
    code = PYTHON[0]
    ns = _run(code)
    assert _shown_reprs(code, ns) >= 1  # the train shown is the one tt_svd returns
    x, t, u, q = ns["x"], ns["t"], ns["u"], ns["q"]
    assert np.linalg.norm(t.full() - x) <= 1e-6 * np.linalg.norm(x)
    assert abs(tn.norm(t - t)) <= 1e-12 * tn.norm(t) and np.isclose(tn.dot(t, t), np.sum(x * x), rtol=1e-10)
    assert u.ranks == t.ranks  # "ranks back to t's"
    assert t[1, :, 2, ...].shape == (10,) * 4
    assert q.largest_rank == 2 and tn.apply(np.square, q).largest_rank == 3  # "rank 2", "sin^2: rank 3"
    assert tn.reshape(t, (2, 5) * 6).shape == (2, 5) * 6
    W, y = ns["W"], ns["y"]
    assert W.shape == (3072, 768) and y.shape == (5, 3072)


@pytest.mark.slow
def test_readme_pytorch_and_gpt2_snippet_runs():
    code = PYTHON[1]
    ns = _run(code)
    # the parameter count the snippet states is the tensorized model's
    stated = re.search(r"tg\.tensorize\(.*#.*?([\d,]+) params", code)
    assert stated is not None
    assert ns["report"].model_params_after == int(stated.group(1).replace(",", ""))
    assert ns["y"].shape == (4, 128, 3072) and ns["conv"].conversion_error <= 0.3
    assert ns["logits"].shape == (1, 16, 50257) and torch.isfinite(ns["logits"]).all()


def test_readme_files_interop_and_report_snippet_runs():
    pytest.importorskip("quimb", reason="quimb is not installed (tensornet's 'interop' extra)")
    import matplotlib

    matplotlib.use("Agg")
    code = next(block for block in PYTHON if "tn.save(" in block)
    ns = _run(code)
    t, u, back, r = ns["t"], ns["u"], ns["back"], ns["r"]
    assert all((a == b).all() for a, b in zip(t.cores, u.cores)) and u.ranks == t.ranks  # "exactly t"
    tn.testing.assert_allclose(back, t, rtol=1e-14)
    stated = re.search(r"r\.cut\(1e-4\)\s+# (\(.*?\))", code)
    assert stated is not None and str(r.cut(1e-4)) == stated.group(1) == str(tn.round(t, eps=1e-4).ranks)
    assert len(ns["fig"].axes) == 2


def test_readme_adapter_snippet_runs():
    code = next(block for block in PYTHON if "tensornet.nn.adapt(" in block)
    namespace = _run(code)
    model, report = namespace["model"], namespace["report"]
    assert report.params_after <= 0.6 * report.params_before and namespace["path"].stat().st_size < 8192
    assert [name for name, _ in tn.nn.adapters(model)] == ["0", "2"]


def test_readme_docs_command_builds_and_serves_the_site():
    block = next(code for lang, code in BLOCKS if lang == "bash" and "sphinx" in code)
    command = next(line for line in block.splitlines() if line.strip() and not line.startswith("#"))
    assert '-e ".[docs]"' in command and "-m sphinx -b html -W -n docs docs/_build/html" in command
    assert command.endswith("-m http.server -d docs/_build/html 8000")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "-m sphinx -b html -W --keep-going -n" in ci and ".[test,docs]" in ci  # CI builds it the same way
