"""``compare``: dense vs TTM vs low-rank GPT-2 trained side by side with the same seed, tokens and data order."""

import multiprocessing
import platform
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from tensornet.nn import RankClipWarning

from .. import build_model, gpt2_config, lowrank, lowrank_rank_for, nparams, tensorize
from ._checkpoint import write_json
from ._data import eval_token_count
from ._plot import model_name, plot_losses
from ._train import TrainConfig, train


def build_variant(spec: dict):
    """The model named by ``spec["variant"]`` ("dense", "ttm" or "lowrank"), seeded identically."""
    model, report = build_model(gpt2_config(**spec["config"]), seed=spec["seed"]), None
    if spec["variant"] == "ttm":
        options = {key: spec[key] for key in ("rank", "shapes", "layers", "bias", "ncores")}
        options |= dict(embeddings=spec.get("embeddings", False), embedding_rank=spec.get("embedding_rank"))
        with warnings.catch_warnings():  # bonds above their useful maximum are clipped: the ranks column says
            warnings.simplefilter("ignore", RankClipWarning)
            model, report = tensorize(model, **options)
    elif spec["variant"] == "lowrank":
        model, report = lowrank(model, rank=spec["lowrank_rank"], layers=spec["layers"], bias=spec["bias"])
    return model, report


def mlp_params_per_layer(spec: dict) -> int:
    """Parameters of one tensorized c_fc in the TTM variant (to size the low-rank baseline)."""
    with torch.device("meta"):
        _, report = build_variant({**spec, "variant": "ttm"})
    return report.layers[0].params_after


def _run_variant(spec: dict, pipe) -> None:
    """Train one variant (in its own process); send its steps, then its result or error, to ``pipe``."""
    try:
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        train_ids, val_ids = spec["ids"]
        model, report = build_variant(spec)
        cfg, variant = TrainConfig(**spec["train"]), spec["variant"]
        history = train(
            model, train_ids, val_ids, cfg, device=spec["device"],
            on_step=lambda step, loss: pipe.send(("step", (variant, step, loss))),
        )  # fmt: skip
        counted = eval_token_count(val_ids.numel(), cfg.block_size, cfg.eval_tokens or None)
        result = {"variant": variant, "params": nparams(model), "val_loss": history.val[-1][1]}
        result |= {"val_ppl": history.val_ppl, "val_tokens": counted}
        result |= {key: getattr(history, key) for key in ("tokens_per_s", "peak_memory_mib", "loss", "val")}
        result |= {"layers": None if report is None else str(report)}
        pipe.send(("result", result | {"ranks": None if report is None else list(report.layers[0].ranks)}))
    except Exception as err:  # raised in the parent, as by a variant trained in place
        pipe.send(("error", err))


def _in_worker(spec: dict, on_step) -> dict:
    """One variant in a fresh process (so its peak memory is its own), its steps relayed to ``on_step``."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_run_variant, args=(spec, sender))
    process.start()
    sender.close()  # the child holds the only writing end now: reading past it is EOFError once it ends
    try:
        while (event := receiver.recv())[0] == "step":
            if on_step is not None:
                on_step(*event[1])
        if event[0] == "error":
            raise event[1]
        return event[1]
    except EOFError:
        raise ChildProcessError(
            f"compare: the process training the {spec['variant']} model ended without a result (killed, "
            "e.g. by the system for lack of memory); try a smaller model, --batch-size or --block-size"
        ) from None
    finally:
        process.join(timeout=10)
        process.kill()  # (a no-op once it ended)


def compare(
    spec: dict,
    *,
    out: Path,
    variants=("dense", "ttm", "lowrank"),
    on_step: Callable[[str, int, float], None] | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Train each variant in a fresh process on ``spec["ids"]``; write results.json and the plot to ``out``.

    ``on_step(variant, step, loss)`` follows the training, ``on_result(result)`` each variant's end.
    """
    width = spec["config"]["n_embd"]
    if "lowrank" in variants:
        ttm_layer = mlp_params_per_layer(spec)
        spec = {**spec, "lowrank_rank": lowrank_rank_for(ttm_layer, width, 4 * width, bias=spec["bias"])}
    results = []
    for variant in variants:
        results.append(_in_worker({**spec, "variant": variant}, on_step))
        if on_result is not None:
            on_result(results[-1])
    dense = next((r for r in results if r["variant"] == "dense"), results[0])
    for r in results:
        r["percent_of_dense"] = 100 * r["params"] / dense["params"]
        r["ppl_vs_dense_percent"] = 100 * (r["val_ppl"] / dense["val_ppl"] - 1)
    threads, cpu = spec.get("threads") or torch.get_num_threads(), platform.processor() or platform.machine()
    machine = f"CPU {cpu}, {threads} threads, torch {torch.__version__}, Python {platform.python_version()}"
    if str(spec["device"]).startswith("cuda") and torch.cuda.is_available():
        machine = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    spec = {k: v for k, v in spec.items() if k != "ids"}
    summary = {"machine": machine, "spec": spec, "results": results}
    write_json(out / "results.json", summary)
    tokens_per_step = spec["train"]["batch_size"] * spec["train"]["block_size"]
    plot_losses(results, out / "loss_curves.png", tokens_per_step=tokens_per_step, spec=spec)
    return summary


def table(summary: dict) -> str:
    """The paper-style markdown table of a ``compare`` summary; each factorised model's row says its lr."""
    cuda = str(summary["spec"]["device"]).startswith("cuda")
    memory = "peak allocated CUDA memory (MiB)" if cuda else "peak RSS of its process (MiB)"
    lines = [f"| model | params | % of dense | val perplexity | vs dense | tokens/s | {memory} |"]
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    train = summary["spec"]["train"]
    for r in summary["results"]:
        name = model_name(r["variant"], summary["spec"])
        if r["variant"] == "ttm":
            name += f" (ranks {','.join(map(str, r['ranks']))}), cores at {train['tt_lr_scale']:g}x lr"
        elif r["variant"] == "lowrank":
            name += f", factors at {train['lowrank_lr_scale']:g}x lr"
        lines.append(
            f"| {name} | {r['params']:,} | {r['percent_of_dense']:.1f} | {r['val_ppl']:.2f} | "
            f"{r['ppl_vs_dense_percent']:+.1f}% | {r['tokens_per_s']:,.0f} | {r['peak_memory_mib']:,.0f} |"
        )
    return "\n".join(lines)
