"""``compare``: dense vs TTM vs low-rank GPT-2 trained side by side with the same seed, tokens and data order."""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from tensornet.nn import RankClipWarning

from .. import build_model, gpt2_config, lowrank, lowrank_rank_for, nparams, tensorize
from ._checkpoint import load_token_file
from ._data import eval_token_count
from ._files import write_json
from ._plot import model_name, plot_losses
from ._train import TrainConfig, load_note, train


def build_variant(spec: dict):
    """The model named by ``spec["variant"]`` ("dense", "ttm" or "lowrank"), seeded identically."""
    config = gpt2_config(**spec["config"])
    model = build_model(config, seed=spec["seed"])
    report = None
    if spec["variant"] == "ttm":
        options = {key: spec[key] for key in ("rank", "shapes", "layers", "bias", "ncores")}
        options |= dict(embeddings=spec.get("embeddings", False), embedding_rank=spec.get("embedding_rank"))
        # bonds above their useful maximum are clipped; the table shows the ranks actually used
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RankClipWarning)
            model, report = tensorize(model, **options)
    elif spec["variant"] == "lowrank":
        model, report = lowrank(model, rank=spec["lowrank_rank"], layers=spec["layers"], bias=spec["bias"])
    return model, report


_KEPT = ("tokens_per_s", "peak_memory_mib", "train_seconds", "loss", "val")  # History's fields in a result


def run_variant(spec: dict, on_step: Callable[[str, int, float], None] | None = None) -> dict:
    """Train one variant and return its results; ``on_step(variant, step, loss)`` follows the training."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    train_ids, val_ids = load_token_file(Path(spec["tokens"]), spec["config"]["vocab_size"], "compare")
    model, report = build_variant(spec)
    cfg = TrainConfig(**spec["train"])
    variant = spec["variant"]
    step = None if on_step is None else lambda s, loss: on_step(variant, s, loss)
    history = train(model, train_ids, val_ids, cfg, device=spec["device"], on_step=step)
    return {
        "variant": variant,
        "params": nparams(model),
        "val_loss": history.val[-1][1],
        "val_ppl": history.val_ppl,
        "val_tokens": eval_token_count(val_ids.numel(), cfg.block_size, cfg.eval_tokens or None),
        **{key: getattr(history, key) for key in _KEPT},
        "load_average": history.load_average if math.isfinite(history.load_average) else None,
        "cores": os.cpu_count(),
        "layers": None if report is None else str(report),
        "ranks": None if report is None else list(report.layers[0].ranks),
    }


def _worker(spec: dict, pipe) -> None:
    try:
        pipe.send(("result", run_variant(spec, lambda *event: pipe.send(("step", event)))))
    except Exception as err:  # raised in the parent, as by a variant trained in place
        pipe.send(("error", err))


def _in_worker(spec: dict, on_step) -> dict:
    """``run_variant`` in a fresh process (its peak memory its own), its steps relayed to ``on_step``."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_worker, args=(spec, sender))
    process.start()
    sender.close()  # the child holds the only writing end now: reading past it is EOFError once it ends
    try:
        while True:
            kind, value = receiver.recv()
            if kind == "error":
                raise value
            if kind == "result":
                return value
            if on_step is not None:
                on_step(*value)
    except EOFError:
        raise ChildProcessError(
            f"compare: the process training the {spec['variant']} model ended without a result (killed, "
            "e.g. by the system for lack of memory); try a smaller model, --batch-size or --block-size"
        ) from None
    finally:
        process.join(timeout=10)
        process.kill()  # (a no-op once it ended)


def mlp_params_per_layer(spec: dict) -> int:
    """Parameters of one tensorized c_fc in the TTM variant (to size the low-rank baseline)."""
    with torch.device("meta"):
        _, report = build_variant({**spec, "variant": "ttm"})
    return report.layers[0].params_after


def compare(
    spec: dict,
    *,
    out: Path,
    variants=("dense", "ttm", "lowrank"),
    isolate: bool = True,
    on_step: Callable[[str, int, float], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Train each variant on the token file ``spec["tokens"]``; write results.json and loss_curves.png.

    The files go to ``out``, an existing folder (the CLI opens it as a run folder, with its checks and lock).
    ``isolate``: each variant in a fresh process (its own peak memory). ``on_step(variant, step, loss)``
    follows the training, ``on_result(result)`` is called as each variant finishes.
    """
    width = spec["config"]["n_embd"]
    if "lowrank" in variants:
        ttm_layer = mlp_params_per_layer(spec)
        spec = {**spec, "lowrank_rank": lowrank_rank_for(ttm_layer, width, 4 * width, bias=spec["bias"])}
    results = []
    for variant in variants:
        vspec = {**spec, "variant": variant}
        results.append(_in_worker(vspec, on_step) if isolate else run_variant(vspec, on_step))
        if on_result is not None:
            on_result(results[-1])
    dense = next((r for r in results if r["variant"] == "dense"), results[0])
    for r in results:
        r["percent_of_dense"] = 100 * r["params"] / dense["params"]
        r["ppl_vs_dense_percent"] = 100 * (r["val_ppl"] / dense["val_ppl"] - 1)
    summary = {
        "machine": machine_description(spec["device"], spec.get("threads")),
        "spec": {k: v for k, v in spec.items() if k != "tokens"},
        "results": results,
    }
    write_json(out / "results.json", summary)
    plot_losses(
        results,
        out / "loss_curves.png",
        tokens_per_step=spec["train"]["batch_size"] * spec["train"]["block_size"],
        spec=spec,
    )
    return summary


def machine_description(device: str, threads: int | None = None) -> str:
    """The device the models trained on; on CPU with the threads each training process used."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {threads or torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )


_LR_SCALES = {"ttm": ("tt_lr_scale", "cores"), "lowrank": ("lowrank_lr_scale", "factors")}  # settings, groups


def table(summary: dict) -> str:
    """The paper-style markdown table of a ``compare`` summary.

    Each factorised model's row says its learning-rate multiplier; a tokens/s measured on a busy machine is
    marked ``(busy)`` and explained under the table.
    """
    cuda = str(summary["spec"].get("device", "cpu")).startswith("cuda")
    memory = "peak allocated CUDA memory (MiB)" if cuda else "peak RSS of its process (MiB)"
    lines = [
        f"| model | params | % of dense | val perplexity | vs dense | tokens/s | {memory} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    busy = []
    for r in summary["results"]:
        note = load_note(r.get("load_average"), r.get("cores"))
        speed = f"{r['tokens_per_s']:,.0f}" + (" (busy)" if note else "")
        if note:
            busy.append(f"{model_name(r['variant'], None)}: {note.removeprefix('measured while ')}")
        name = model_name(r["variant"], summary["spec"])
        if r["variant"] == "ttm":
            name += f" (ranks {','.join(map(str, r.get('ranks') or []))})"
        setting, what = _LR_SCALES.get(r["variant"], ("", ""))
        if (summary["spec"].get("train") or {}).get(setting) is not None:
            name += f", {what} at {summary['spec']['train'][setting]:g}x lr"
        lines.append(
            f"| {name} | {r['params']:,} | {r['percent_of_dense']:.1f} | {r['val_ppl']:.2f} | "
            f"{r['ppl_vs_dense_percent']:+.1f}% | {speed} | {r['peak_memory_mib']:,.0f} |"
        )
    if busy:
        lines.append(
            "\n(busy): tokens/s measured while other processes kept the machine busy (more runnable threads "
            f"than cores; the mean 1-minute load average): {'; '.join(busy)}. An idle machine trains faster."
        )
    return "\n".join(lines)
