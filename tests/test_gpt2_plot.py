"""The ``compare`` figure (``plot_losses``): files, axes, title and every curve, on synthetic histories."""

from __future__ import annotations

import math
import sysconfig
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from conftest import GPT2_TINY

from tensornet.gpt2.app import _commands, _precheck
from tensornet.gpt2.app._args import parser
from tensornet.gpt2.app._plot import _title, count_label, plot_losses

TOKENS_PER_STEP = 16 * 128
SPEC = {
    "config": {"n_layer": 4, "n_embd": 256, "vocab_size": 4096},
    "rank": 32,
    "lowrank_rank": 96,
    "seed": 0,
    "corpus": "Python 3.12 standard library source (/usr/lib/python3.12): 900 train files / 9,000,000 chars",
    "corpus_name": "Python 3.12 standard library source",
}


def _results(steps: int = 300, spike: float = 0.0) -> list[dict]:
    """Three decaying training curves with noise, a NaN step, an optional spike, and log-spaced evaluations."""
    rng = np.random.default_rng(0)
    results = []
    for k, (variant, params, final) in enumerate(
        [("dense", 4_240_896, 3.9), ("ttm", 2_481_664, 3.8), ("lowrank", 2_481_664, 4.8)]
    ):
        s = np.arange(1, steps + 1)
        loss = final + (8.3 - final) * np.exp(-s / 30) + rng.normal(0, 0.1, steps)
        loss[10 + k] = float("nan")  # a skipped step must not break the smoothing or the range
        if spike and variant == "lowrank":
            loss[100:103] += spike
        val = [
            (int(step), float(loss[step - 1] + 0.5))
            for step in (*(s for s in (3, 10, 30, 100) if s < steps), steps)
        ]
        results.append(
            {
                "variant": variant,
                "params": params,
                "loss": loss.tolist(),
                "val": val,
                "val_ppl": math.exp(val[-1][1]),
                "percent_of_dense": 100 * params / 4_240_896,
            }
        )
    return results


def _check_files(png, svg) -> None:
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    root = ET.fromstring(svg.read_bytes())  # our own file: well-formed XML with an <svg> root
    assert root.tag == "{http://www.w3.org/2000/svg}svg"


def test_plot_losses_writes_png_and_svg_with_titled_log_token_axis(tmp_path):
    results = _results()
    png = tmp_path / "loss_curves.png"
    fig = plot_losses(results, png, tokens_per_step=TOKENS_PER_STEP, spec=SPEC)
    _check_files(png, tmp_path / "loss_curves.svg")

    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert "tokens" in ax.get_xlabel()
    title = ax.get_title(loc="left")
    for part in ("GPT-2", "dense vs TTM vs low-rank", "4 layers × 256", "standard library", "614k", "seed 0"):
        assert part in title, (part, title)
    # readable tick labels, not raw counts
    fmt = ax.xaxis.get_major_formatter()
    assert [fmt(x, 0) for x in (2e3, 1e4, 1e5, 5e5, 1e6)] == ["2k", "10k", "100k", "500k", "1M"]

    lines = {line.get_label(): line for line in ax.get_lines()}
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for r in results:
        name = {"dense": "dense", "ttm": "TTM r=32", "lowrank": "low-rank r=96"}[r["variant"]]
        # every evaluation is drawn, at its token count
        val = lines[f"{name}: validation (final perplexity {r['val_ppl']:,.1f})"]
        np.testing.assert_array_equal(val.get_xdata(), [s * TOKENS_PER_STEP for s, _ in r["val"]])
        np.testing.assert_array_equal(val.get_ydata(), [v for _, v in r["val"]])
        assert val.get_marker() == "o"
        train = next(
            line for label, line in lines.items() if label.startswith(f"{name} (") and "train" in label
        )
        assert train.get_xdata()[0] == TOKENS_PER_STEP and train.get_xdata()[-1] == 300 * TOKENS_PER_STEP
        assert np.isfinite(train.get_ydata()).all()  # the NaN step is averaged around
        assert val.get_label() in legend and train.get_label() in legend
    # raw curves drawn too, faint and unlabelled (kept out of the legend)
    raw = [line for line in ax.get_lines() if line.get_label().startswith("_")]
    assert len(raw) == 3 and all(line.get_alpha() < 0.5 for line in raw)
    # the whole range: the first steps' loss and the highest point are inside the y limits
    finite = [v for r in results for v in r["loss"] if math.isfinite(v)]
    lo, hi = ax.get_ylim()
    assert lo <= min(finite) and hi >= max(finite) and hi >= max(r["loss"][0] for r in results)
    assert ax.get_yscale() == "linear"


def test_plot_losses_spike_gives_log_y_and_same_files_twice(tmp_path):
    results = _results(steps=200, spike=40.0)
    fig = plot_losses(results, tmp_path / "a.png", tokens_per_step=TOKENS_PER_STEP)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and ax.get_ylim()[1] >= max(results[2]["loss"][100:103])
    assert ax.get_title(loc="left").startswith("GPT-2 pre-training: dense vs TTM vs low-rank")
    _check_files(tmp_path / "a.png", tmp_path / "a.svg")
    # no date or random ids in the SVG: the same results give the same file
    plot_losses(results, tmp_path / "b.png", tokens_per_step=TOKENS_PER_STEP)
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


def test_plot_losses_final_evaluation_only(tmp_path):
    results = [dict(r, val=r["val"][-1:]) for r in _results(steps=50)]
    fig = plot_losses(results, tmp_path / "c.png", tokens_per_step=100)
    (ax,) = fig.axes
    assert "5k training tokens per model" in ax.get_title(loc="left")
    vals = [line for line in ax.get_lines() if "validation" in line.get_label()]
    assert [list(line.get_xdata()) for line in vals] == [[5000]] * 3
    _check_files(tmp_path / "c.png", tmp_path / "c.svg")
    with pytest.raises(ValueError, match="tokens_per_step"):
        plot_losses(results, tmp_path / "d.png", tokens_per_step=0)


def test_count_label():
    assert [count_label(x) for x in (1, 999, 1000, 2048, 614_400, 1.5e6, 2e9)] == [
        "1",
        "999",
        "1k",
        "2.05k",
        "614k",
        "1.5M",
        "2B",
    ]


def test_compare_run_folder_owns_the_svg(tmp_path):
    """The SVG is one of compare's outputs: it marks the folder as used and --overwrite replaces it."""
    from tensornet.gpt2.app._runfolder import RunFolder, check_run_folder

    out = tmp_path / "run"
    with RunFolder.open(out, kind="compare"):
        plot_losses(_results(steps=20), out / "loss_curves.png", tokens_per_step=10)
    (out / "loss_curves.png").unlink()  # only the SVG is left of the earlier run
    with pytest.raises(FileExistsError, match=r"loss_curves\.svg"):
        check_run_folder(out, kind="compare")
    with RunFolder.open(out, kind="compare", overwrite=True):
        assert not (out / "loss_curves.svg").exists()


def test_the_title_of_compare_names_the_corpus_never_a_path(shared, tmp_path, capsys, monkeypatch):
    argv = [
        "compare",
        *GPT2_TINY,
        "--rank",
        "4",
        "--steps",
        "2",
        "--cache-dir",
        str(shared["cache"]),
        "--out",
        str(tmp_path),
    ]
    args = parser().parse_args(argv)
    _precheck.check(args)
    spec = {}

    class Captured(Exception):
        pass

    def capture(given, **kwargs):  # the spec compare is given, nothing trained
        spec.update(given)
        raise Captured

    monkeypatch.setattr(_commands._compare, "compare", capture)
    with pytest.raises(Captured):
        _commands.cmd_compare(args)
    title = _title([], spec, 1000)
    assert f"Python {sysconfig.get_python_version()} standard library source" in title, title
    assert sysconfig.get_paths()["stdlib"] not in title and "/" not in title, title
