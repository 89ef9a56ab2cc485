"""Learning-rate multipliers of the factorised weights of ``compare``'s models, one training run per point.

``compare`` gives the TT cores and the low-rank baseline's two factors each their own multiple of the
learning rate (``--tt-lr-scale``, ``--lowrank-lr-scale``). A baseline is only fair at its own best setting, so
both defaults come from this sweep (results in ``benchmarks/results/gpt2_compare_cpu.md``)::

    python benchmarks/bench_gpt2_lr.py --variant lowrank --scales 1 2 4 6 9 12 16 --jobs 2 --threads 1

Every run is ``compare``'s: its model (4 layers x 256, vocabulary 4,096, the low-rank inner size matched to
the TTM model's parameters), data (the first 1.5M characters of the embedded corpus), seed, schedule and
evaluation on the whole validation split, built by the same functions ``compare`` calls
(``tensornet.gpt2.app._compare.build_variant`` and ``train``); only the multiplier changes. ``--jobs`` runs go
side by side, each in its own process with ``--threads`` torch threads (the thread count changes the float
summation order, which moves the low-rank model's perplexity by a few percent: compare rows of one setting).
Prints a markdown row per run and the machine with its load average.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import time
from dataclasses import asdict, replace

import _harness

from tensornet.gpt2 import _tensorize
from tensornet.gpt2.app import _args, _compare, _data, _train


def spec(cache: str, variant: str, *, seed: int, steps: int, warmup: int) -> dict:
    """``compare``'s spec for ``variant`` with its default flags, tokens taken from (or put in) ``cache``."""
    corpus = _data.stdlib_corpus(max_chars=1_500_000)
    tokenizer = _data.cached_tokenizer(corpus, 4096, cache)
    train_ids, val_ids = _data.cached_tokens(corpus, tokenizer, cache)
    cfg = replace(_args.COMPARE_RECIPE, seed=seed, steps=steps, warmup=warmup)
    config = dict(vocab_size=tokenizer.get_vocab_size(), block_size=cfg.block_size, preset=None, n_layer=4)
    config |= dict(n_embd=256, n_head=4, dropout=0.0, eos_token_id=tokenizer.token_to_id(_data.EOT))
    out = {
        "config": config,
        "seed": seed,
        "rank": 32,
        "shapes": "balanced",
        "ncores": 4,
        "layers": ("mlp",),
        "bias": True,
        "device": "cpu",
        "train": asdict(cfg),
        "variant": variant,
        "train_ids": train_ids,
        "val_ids": val_ids,
    }
    if variant == "lowrank":
        ttm = _compare.mlp_params_per_layer(out)
        out["lowrank_rank"] = _tensorize.lowrank_rank_for(ttm, 256, 1024, bias=True)
    return out


def run(cache: str, variant: str, scale: float, threads: int, seed: int, steps: int, warmup: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    s = spec(cache, variant, seed=seed, steps=steps, warmup=warmup)
    model, _ = _compare.build_variant(s)
    field = "tt_lr_scale" if variant == "ttm" else "lowrank_lr_scale"
    cfg = _train.TrainConfig(**{**s["train"], "tt_lr_scale": 1.0, "lowrank_lr_scale": 1.0, field: scale})
    start = time.perf_counter()
    history = _train.train(model, s["train_ids"], s["val_ids"], cfg, device="cpu")
    loss = history.loss
    return {
        "variant": variant,
        "scale": scale,
        "params": _tensorize.nparams(model),
        "val_ppl": history.val_ppl,
        "early": sum(loss[20:30]) / 10,
        "late": sum(loss[-10:]) / 10,
        "seconds": time.perf_counter() - start,
        "lowrank_rank": s.get("lowrank_rank"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", choices=("ttm", "lowrank"), default="lowrank")
    p.add_argument("--scales", type=float, nargs="+", default=[1, 2, 4, 6, 9, 12, 16])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=_args.COMPARE_RECIPE.steps)
    p.add_argument("--warmup", type=int, default=_args.COMPARE_RECIPE.warmup)
    p.add_argument("--cache-dir", default=os.environ.get("TENSORNET_CACHE") or str(_data.default_cache_dir()))
    args = p.parse_args()
    spec(args.cache_dir, args.variant, seed=args.seed, steps=args.steps, warmup=args.warmup)  # caches, once
    print("\n".join(_harness.machine()))
    print("| model | multiplier | params | val ppl | train loss, mean of steps 21-30 / last 10 | seconds |")
    print("|---|---:|---:|---:|---|---:|")
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
        futures = [
            pool.submit(
                run, args.cache_dir, args.variant, s, args.threads, args.seed, args.steps, args.warmup
            )
            for s in args.scales
        ]
        for future in futures:
            r = future.result()
            name = f"low-rank r={r['lowrank_rank']}" if r["variant"] == "lowrank" else "TTM r=32"
            print(
                f"| {name} | {r['scale']:g}x | {r['params']:,} | {r['val_ppl']:.2f} | {r['early']:.2f} / "
                f"{r['late']:.2f} | {r['seconds']:.0f} |",
                flush=True,
            )
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
