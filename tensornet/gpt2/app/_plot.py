"""The ``compare`` figure: training and validation loss of each model against the tokens it was trained on."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._files import atomic_write

WIDTH = 90  # characters per title line at the figure's width
NAMES = {"dense": "dense", "ttm": "TTM", "lowrank": "low-rank"}


def _axes(ax, tokens_per_step: int, last_tokens: int, finite: list[float]) -> None:
    """Log-scale token axis; a loss axis that holds every finite loss (log scale past a 3x range); grids."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.set_xlim(tokens_per_step / 1.25, last_tokens * 1.25)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: count_label(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"training tokens (log scale; {tokens_per_step:,} tokens per optimizer step)")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    if finite:
        lo, hi = min(finite), max(finite)
        if lo > 0 and hi / lo > 3:  # a divergence or a very long run: a log axis keeps the low end readable
            ax.set_yscale("log")
            ax.set_ylim(lo / 1.08, hi * 1.08)
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 4.0, 5.0, 7.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        else:
            pad = 0.04 * (hi - lo) or 0.1
            ax.set_ylim(lo - pad, hi + pad)
    ax.grid(which="major", alpha=0.3)
    ax.grid(which="minor", axis="x", alpha=0.1)


def plot_losses(
    results: Sequence[dict],
    path: str | Path,
    *,
    tokens_per_step: int,
    spec: dict | None = None,
    title: str | None = None,
):
    """Draw the loss curves of ``compare``'s ``results`` and save them to ``path`` (PNG) and beside it as SVG.

    Each result needs ``variant``, ``params``, ``loss`` (per optimizer step) and ``val`` (``(step, loss)`` per
    evaluation); ``val_ppl`` and ``percent_of_dense`` are shown when present. x: training tokens (log scale,
    ``tokens_per_step`` per step); training loss raw (faint) and smoothed over a fixed fraction of the log-x
    width, validation loss at every evaluation; y holds every finite loss. The title is ``title``, else what
    was trained (from ``compare``'s ``spec``: model size, ``corpus_name``, seed) and on how many tokens.
    Returns the matplotlib ``Figure`` (not attached to pyplot: nothing to close, the backend left alone).

    Raises ValueError for ``tokens_per_step`` < 1.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    if tokens_per_step < 1:
        raise ValueError(f"plot_losses: tokens_per_step must be >= 1, got {tokens_per_step}")
    path = Path(path)
    fig = Figure(figsize=(8, 5.2), layout="constrained")
    ax = fig.add_subplot()
    finite: list[float] = []
    last_tokens = tokens_per_step
    for index, r in enumerate(results):
        color = f"C{index}"
        name = model_name(r["variant"], spec)
        loss = np.asarray(r["loss"], dtype=float)
        val = [(int(s), float(v)) for s, v in r.get("val") or []]
        tokens = np.arange(1, loss.size + 1) * tokens_per_step
        if loss.size:
            last_tokens = max(last_tokens, int(tokens[-1]))
            ax.plot(tokens, loss, color=color, lw=0.6, alpha=0.25)
            ax.plot(tokens, _smooth_log(loss), color=color, lw=1.6, label=f"{name} ({_size(r)}): train")
        if val:
            last_tokens = max(last_tokens, max(s for s, _ in val) * tokens_per_step)
            ppl = r.get("val_ppl")
            final = f" (final perplexity {ppl:,.1f})" if ppl is not None and math.isfinite(ppl) else ""
            marks: dict[str, Any] = dict(color=color, lw=1.2, ms=6, mec="white", mew=0.8, zorder=3)
            x, y = [s * tokens_per_step for s, _ in val], [v for _, v in val]
            ax.plot(x, y, "o--", label=f"{name}: validation{final}", **marks)
        finite += [v for v in loss.tolist() if math.isfinite(v)] + [v for _, v in val if math.isfinite(v)]

    _axes(ax, tokens_per_step, last_tokens, finite)
    ax.legend(fontsize=8, loc="lower left", framealpha=0.9)
    ax.set_title(title if title is not None else _title(results, spec, last_tokens), fontsize=10, loc="left")

    atomic_write(path, lambda f: fig.savefig(f, dpi=150, format="png"))
    svg = path.with_suffix(".svg")
    with rc_context({"svg.hashsalt": "tensornet"}):  # no date, a fixed salt: same results, same file
        atomic_write(svg, lambda f: fig.savefig(f, format="svg", metadata={"Date": None}))
    return fig


def count_label(x: float) -> str:
    """A tick label for a count: 2k, 50k, 1M, 1.5B (x as printed, below 1,000)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _smooth_log(loss: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Mean of the finite losses of steps ``i - w .. i + w`` with ``w = fraction * i``.

    A window of constant width on a log step axis, so the first steps stay sharp and the late, noisy ones are
    averaged over many.
    """
    n = loss.size
    ok = np.isfinite(loss)
    sums = np.concatenate([[0.0], np.cumsum(np.where(ok, loss, 0.0))])
    counts = np.concatenate([[0], np.cumsum(ok)])
    steps = np.arange(1, n + 1)
    width = np.floor(fraction * steps).astype(int)
    lo = np.maximum(steps - width, 1) - 1  # 0-based first index of the window
    hi = np.minimum(steps + width, n)  # 0-based end (exclusive)
    count = counts[hi] - counts[lo]
    out = np.full(n, np.nan)
    np.divide(sums[hi] - sums[lo], count, out=out, where=count > 0)
    return out


def model_name(variant: str, spec: dict | None) -> str:
    """``dense``, ``TTM r=32`` or ``low-rank r=33``: a ``compare`` model with the rank its ``spec`` gives."""
    rank = (spec or {}).get({"ttm": "rank", "lowrank": "lowrank_rank"}.get(variant, ""))
    return NAMES.get(variant, variant) + ("" if rank is None else f" r={rank}")


def _size(r: dict) -> str:
    size = f"{count_label(r['params'])} params"
    if r.get("percent_of_dense") is not None and r["variant"] != "dense":
        size += f", {r['percent_of_dense']:.1f}% of dense"
    return size


def _title(results: Sequence[dict], spec: dict | None, tokens: int) -> str:
    models = " vs ".join(model_name(r["variant"], None) for r in results)
    first = f"GPT-2 pre-training: {models}"
    second = [f"{count_label(tokens)} training tokens per model"]
    if spec:
        config = spec.get("config") or {}
        if config.get("n_layer") and config.get("n_embd"):
            size = f"{config['n_layer']} layers × {config['n_embd']}"
            if config.get("vocab_size"):
                size += f", vocabulary {config['vocab_size']:,}"
            first += f" ({size})"
        if spec.get("corpus_name"):  # what the corpus is, never a path on this machine
            second.insert(0, str(spec["corpus_name"]))
        if spec.get("seed") is not None:
            second.append(f"seed {spec['seed']}, same data order")
    lines = textwrap.wrap(first, WIDTH)
    head = len(lines)
    for part in second:  # the parts of the second line, wrapped between parts
        if len(lines) > head and len(lines[-1]) + 3 + len(part) <= WIDTH:
            lines[-1] += " · " + part
        else:
            lines += textwrap.wrap(part, WIDTH)
    return "\n".join(lines)
