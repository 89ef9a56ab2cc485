"""The ``compare`` figure: training and validation loss of each model against the tokens it was trained on."""

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._checkpoint import atomic_write


def plot_losses(results: Sequence[dict], path: str | Path, *, tokens_per_step: int, spec: dict | None = None):
    """Draw ``compare``'s loss curves, save them to ``path`` (PNG) and beside it as SVG; return the Figure.

    A result as compare writes it: ``variant``, ``params``, ``percent_of_dense``, ``loss`` per step, ``val``
    ``(step, loss)`` pairs, ``val_ppl``. Raises ValueError for ``tokens_per_step`` < 1.
    """
    from matplotlib import figure, rc_context, ticker

    if tokens_per_step < 1:
        raise ValueError(f"plot_losses: tokens_per_step must be >= 1, got {tokens_per_step}")
    fig = figure.Figure(figsize=(8, 5.2), layout="constrained")
    ax = fig.add_subplot(xscale="log", ylabel="loss (cross-entropy, nats per token)")
    ax.set_xlabel(f"training tokens (log scale; {tokens_per_step:,} tokens per optimizer step)")
    finite: list[float] = []
    last = tokens_per_step
    for i, r in enumerate(results):
        name, loss, c = model_name(r["variant"], spec), np.asarray(r["loss"], dtype=float), f"C{i}"
        tokens = np.arange(1, loss.size + 1) * tokens_per_step
        val = np.asarray(r["val"], dtype=float).reshape(-1, 2)
        x = val[:, 0] * tokens_per_step
        pct = "" if r["variant"] == "dense" else f", {r['percent_of_dense']:.1f}% of dense"
        final = f" (final perplexity {r['val_ppl']:,.1f})" if math.isfinite(r["val_ppl"]) else ""
        ax.plot(tokens, loss, color=c, lw=0.6, alpha=0.25)
        train = f"{name} ({count_label(r['params'])} params{pct}): train"
        ax.plot(tokens, _smooth_log(loss), color=c, lw=1.6, label=train)
        label = f"{name}: validation{final}"
        ax.plot(x, val[:, 1], "o--", color=c, lw=1.2, ms=6, mec="white", mew=0.8, zorder=3, label=label)
        finite += [v for v in (*loss, *val[:, 1]) if math.isfinite(v)]
        last = max(last, *tokens[-1:], *x)
    ax.set_xlim(tokens_per_step / 1.25, last * 1.25)
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: count_label(x)))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if lo > 0 and hi / lo > 3:  # a divergence or a long run: a log axis keeps the low end readable
        ax.set(yscale="log", ylim=(lo / 1.08, hi * 1.08))
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 4.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        ax.set_ylim(lo - (0.04 * (hi - lo) or 0.1), hi + (0.04 * (hi - lo) or 0.1))
    ax.grid(which="major", alpha=0.3)
    ax.grid(which="minor", axis="x", alpha=0.1)
    ax.legend(fontsize=8, loc="lower left", framealpha=0.9)
    ax.set_title(_title(results, spec or {}, last), fontsize=10, loc="left")
    atomic_write(Path(path), lambda f: fig.savefig(f, dpi=150, format="png"))
    with rc_context({"svg.hashsalt": "tensornet"}):  # no date, a fixed salt: same results, same file
        svg = Path(path).with_suffix(".svg")
        atomic_write(svg, lambda f: fig.savefig(f, format="svg", metadata={"Date": None}))
    return fig


def count_label(x: float) -> str:
    """A count as a tick label: 2k, 50k, 1M, 1.5B (as printed below 1,000)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _smooth_log(loss: np.ndarray) -> np.ndarray:
    """Mean of the finite losses of steps ``i ± i // 10``: a window of constant width on the log step axis."""
    ok = np.isfinite(loss)
    sums, counts = (np.concatenate([[0], np.cumsum(a)]) for a in (np.where(ok, loss, 0.0), ok))
    steps = np.arange(1, loss.size + 1)
    lo, hi = np.maximum(steps - steps // 10, 1) - 1, np.minimum(steps + steps // 10, loss.size)
    with np.errstate(invalid="ignore"):  # (no finite loss in a window: NaN)
        return (sums[hi] - sums[lo]) / (counts[hi] - counts[lo])


def model_name(variant: str, spec: dict | None) -> str:
    """``dense``, ``TTM r=32`` or ``low-rank r=33``: a ``compare`` model with the rank its ``spec`` gives."""
    rank = (spec or {}).get({"ttm": "rank", "lowrank": "lowrank_rank"}.get(variant, ""))
    name = {"ttm": "TTM", "lowrank": "low-rank"}.get(variant, variant)
    return name if rank is None else f"{name} r={rank}"


def _title(results: Sequence[dict], spec: dict, tokens: int) -> str:
    """What was trained (model size, corpus, seed) and on how many tokens, wrapped to the figure's width."""
    c = spec.get("config") or {}
    size = f" ({c['n_layer']} layers × {c['n_embd']}, vocabulary {c['vocab_size']:,})" if c else ""
    models = " vs ".join(model_name(r["variant"], None) for r in results)
    seed = None if spec.get("seed") is None else f"seed {spec['seed']}, same data order"
    parts = (spec.get("corpus_name"), f"{count_label(tokens)} training tokens per model", seed)
    lines = (f"GPT-2 pre-training: {models}{size}", " · ".join(filter(None, parts)))
    return "\n".join(textwrap.fill(line, 90) for line in lines)
