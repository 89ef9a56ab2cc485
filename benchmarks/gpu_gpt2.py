"""GPT-2 small training steps on one GPU: dense vs MLPs as TTM (rank 64, the paper's 4-core shapes).

One command, under 4 minutes on one H100::

    python benchmarks/gpu_gpt2.py                                  # batch 8 x 1,024 tokens, bf16, AdamW
    python benchmarks/gpu_gpt2.py --compile                        # the same under torch.compile
    python benchmarks/gpu_gpt2.py --compile --mode reduce-overhead # compiled with CUDA graphs

Models: dense; the MLPs as TTM as ``tensornet.gpt2.tensorize`` returns it (``tensornet.nn.materialize``
on: each step rebuilds the W of all c_fc and of all c_proj in one batched pass); the same TTM model with
the per-layer path (``materialize(model, enabled=False)``: saves only each layer's input and cores); and
that one with ``save_weight=True``.
Prints, per model: parameters, ms per step, tokens/s, peak allocated memory, and the ratio to dense.
Random token ids (vocabulary 50,257), dropout 0; the time is the median of ``--steps`` timed steps after
``--warmup`` untimed ones. Exits 0 with a message when no CUDA device is present.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bench(variant: str, args) -> dict:
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from tensornet.gpt2 import tensorize
    from tensornet.nn import TTMLinear, materialize

    torch.manual_seed(0)
    device = torch.device("cuda")
    config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with device:
        model = GPT2LMHeadModel(config)
    if variant.startswith("ttm"):
        tensorize(model, rank=args.rank, shapes="paper", bias=False)
        if variant != "ttm":  # the per-layer path
            materialize(model, enabled=False)
        if variant == "ttm_save_weight":  # W kept for backward: one rebuild less per layer and step
            for module in model.modules():
                if isinstance(module, TTMLinear):
                    module.save_weight = True
    model.train()
    step_model = torch.compile(model, mode=args.mode) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=6.25e-5, weight_decay=1e-4, fused=True)
    x = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), device=device)
    inputs, labels = x[:, :-1], x[:, 1:]

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = step_model(input_ids=inputs, use_cache=False).logits  # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = 1000 * statistics.median(times)
    result = {
        "variant": variant,
        "params": sum(p.numel() for p in model.parameters()),
        "ms_per_step": ms,
        "tokens_per_s": args.batch * args.seq / (ms / 1000),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--seq", type=int, default=1024, help="tokens per sequence (default 1024)")
    p.add_argument("--rank", type=int, default=64, help="TT rank of the MLP layers (default 64)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    p.add_argument("--compile", action="store_true", help="torch.compile every model")
    p.add_argument(
        "--mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode (reduce-overhead: CUDA graphs)",
    )
    p.add_argument(
        "--variants",
        default="dense,ttm,ttm_layerwise,ttm_save_weight",
        help="comma-separated subset of dense, ttm, ttm_layerwise, ttm_save_weight",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_gpt2.py: no CUDA device; nothing to measure (this benchmark needs a GPU)")
        return 0
    results = []
    for variant in args.variants.split(","):
        results.append(bench(variant, args))
        torch.cuda.empty_cache()  # the first model's memory is gone before the second is measured
    dense = results[0]
    name = torch.cuda.get_device_name(0)
    print(
        f"{name}, torch {torch.__version__}; GPT-2 small, batch {args.batch} x {args.seq}, bf16 autocast, "
        f"AdamW (fused), {f'compiled ({args.mode})' if args.compile else 'eager'}; median of {args.steps} steps"
    )
    print("| model | params | ms/step | tokens/s | vs dense | peak memory (GiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        label = {
            "dense": "dense",
            "ttm": f"TTM r={args.rank} (paper shapes), materialized",
            "ttm_layerwise": f"TTM r={args.rank} (paper shapes), per-layer",
            "ttm_save_weight": f"TTM r={args.rank} (paper shapes), per-layer, save_weight=True",
        }[r["variant"]]
        print(
            f"| {label} | {r['params']:,} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} | "
            f"{r['tokens_per_s'] / dense['tokens_per_s']:.3f}x | {r['peak_memory_gib']:.2f} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": name, "args": vars(args), "results": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
