"""Dispatched aten ops per training step and per layer call, and per-call host overhead (CPU).

On a GPU every dispatched op is at least one kernel launch (~5 us), so at bf16 the number of ops, not
FLOPs, decides how a TT model's step compares with dense. Ops are counted with a ``TorchDispatchMode``;
view ops (reshape/permute/transpose/expand/..., and ``_unsafe_view``, the metadata-only reshape of a fresh
copy) launch nothing and are left out. Everything else counts, host-side scalar reads
(``_local_scalar_dense``) included. Counts do not depend on the machine, so this CPU run stands in for
the GPU's launch count.

Cases:
* one layer call, forward + backward at 8,192 tokens: ``nn.Linear(768, 3072)`` vs ``TTMLinear`` (r=64,
  the paper's 4 cores, and 3 balanced cores);
* one GPT-2 small training step at 1,024 tokens (batch 1 x 1,024): forward, backward, gradient clipping
  and ``torch.optim.AdamW(foreach=True)`` (as on GPU): dense, MLPs as TTM r=64 with the paper's shapes,
  and with 3 balanced cores;
* host overhead: median microseconds per ``TTMLinear`` forward + backward at 8 tokens on a tiny layer
  (the time is all Python and dispatcher) vs ``nn.Linear``.

    OMP_NUM_THREADS=2 python benchmarks/bench_dispatch.py [--skip-gpt2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tensornet.nn import TTMLinear, materialize


class OpCounter(TorchDispatchMode):
    """Counts every dispatched aten op that is not a view (views launch no kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not func.is_view and func.overloadpacket is not torch.ops.aten._unsafe_view:
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def count(fn) -> OpCounter:  # type: ignore[no-untyped-def]
    fn()  # warm: plans and caches made outside the count
    with OpCounter() as counter:
        fn()
    return counter


def paper_layer() -> TTMLinear:
    return TTMLinear(768, 3072, rank=64, in_shape=(8, 8, 12, 1), out_shape=(8, 8, 8, 6), clip_rank=False)


def layer_cases() -> dict[str, nn.Module]:
    return {
        "nn.Linear": nn.Linear(768, 3072),
        "TTMLinear paper r=64": paper_layer(),
        "TTMLinear 3-core r=64": TTMLinear(768, 3072, rank=64, ncores=3),
        "TTMLinear paper r=64, materialized": materialize(paper_layer()),
    }


def layer_ops(tokens: int) -> list[tuple[str, OpCounter]]:
    rows = []
    for name, layer in layer_cases().items():
        x = torch.randn(tokens, 768, requires_grad=True)
        rows.append((name, count(lambda layer=layer, x=x: layer(x).sum().backward())))
    # in a model, a group of layers with equal core shapes shares one batched rebuild (GPT-2: 12 c_fc)
    stacks = {"12 x nn.Linear": [nn.Linear(768, 3072) for _ in range(12)]}
    stacks["12 x TTMLinear paper r=64, materialized"] = [paper_layer() for _ in range(12)]
    for name, layers in stacks.items():
        model = materialize(nn.ModuleList(layers))
        x = torch.randn(tokens, 768, requires_grad=True)

        def step(model=model, x=x) -> None:  # type: ignore[no-untyped-def]
            sum(layer(x).sum() for layer in model).backward()

        counter = count(step)
        counter.ops = Counter({k: v / 12 for k, v in counter.ops.items()})  # per layer
        rows.append((name + " (per layer)", counter))
    return rows


def gpt2_models() -> dict[str, nn.Module]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tensornet.gpt2 import tensorize

    config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    models = {}
    for name in ("dense", "TTM paper r=64", "TTM 3-core r=64"):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
        if name != "dense":
            shapes = "paper" if "paper" in name else "balanced"
            model, _ = tensorize(model, rank=64, shapes=shapes, ncores=3, bias=False)
        models[name] = model
    return models


def gpt2_ops(tokens: int) -> list[tuple[str, OpCounter, int]]:
    rows = []
    for name, model in gpt2_models().items():
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        ids = torch.randint(0, model.config.vocab_size, (1, tokens + 1))

        def step(model=model, optimizer=optimizer, ids=ids) -> None:  # type: ignore[no-untyped-def]
            logits = model(input_ids=ids[:, :-1], use_cache=False).logits
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            optimizer.step()

        params = sum(p.numel() for p in model.parameters())
        rows.append((name, count(step), params))
    return rows


def _median_us(call, iters: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(200):
        call()
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iters):
            call()
        samples.append((time.perf_counter() - start) / iters * 1e6)
    return statistics.median(samples)


def tiny_layer() -> TTMLinear:
    return TTMLinear(64, 64, rank=4, in_shape=(4, 4, 4), out_shape=(4, 4, 4))


def host_overhead(iters: int) -> list[tuple[str, float]]:
    """Forward + backward at 8 tokens of a layer whose compute is negligible: the time is host work."""
    torch.set_num_threads(1)
    layers = {
        "nn.Linear 64": nn.Linear(64, 64),
        "TTMLinear 64 (4,4,4) r=4": tiny_layer(),
        "same, materialized": materialize(tiny_layer()),
    }
    rows = []
    x = torch.randn(8, 64, requires_grad=True)
    for name, layer in layers.items():
        rows.append((name, _median_us(lambda layer=layer: layer(x).sum().backward(), iters)))
    # per layer call inside a step of 12 layers (as GPT-2's 12 c_fc): the group's rebuild is shared
    for name, stack in (
        ("12 x nn.Linear 64, per layer", nn.ModuleList(nn.Linear(64, 64) for _ in range(12))),
        (
            "12 x TTMLinear materialized, per layer",
            materialize(nn.ModuleList(tiny_layer() for _ in range(12))),
        ),
    ):
        total = _median_us(
            lambda stack=stack: sum(m(x).sum() for m in stack).backward(), max(iters // 12, 10)
        )
        rows.append((name, total / 12))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layer-tokens", type=int, default=8192)
    parser.add_argument("--gpt2-tokens", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=2000, help="host-overhead calls per sample")
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--top", type=int, default=0, help="print the N most frequent ops of each case")
    args = parser.parse_args()
    result: dict = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}"}
    print(result["machine"])

    print(f"\none layer call, forward + backward, {args.layer_tokens:,} tokens, non-view aten ops:")
    rows = layer_ops(args.layer_tokens)
    for name, counter in rows:
        base = (rows[-2] if "per layer" in name else rows[0])[1].total
        print(f"  {name:<48} {counter.total:7.1f} ops  {counter.total / base:5.2f}x nn.Linear")
        if args.top:
            print("    " + ", ".join(f"{k} {v:.3g}" for k, v in counter.ops.most_common(args.top)))
    result["layer"] = {name: c.total for name, c in rows}

    if not args.skip_gpt2:
        print(f"\nGPT-2 small training step, {args.gpt2_tokens:,} tokens (AdamW foreach), non-view aten ops:")
        grows = gpt2_ops(args.gpt2_tokens)
        base = grows[0][1].total
        for name, counter, params in grows:
            print(
                f"  {name:<18} {counter.total:6d} ops  {counter.total / base:5.3f}x dense  {params:,} params"
            )
            if args.top:
                print("    " + ", ".join(f"{k} {v:.3g}" for k, v in counter.ops.most_common(args.top)))
        result["gpt2"] = {name: c.total for name, c, _ in grows}

    print("\nhost overhead, forward + backward at 8 tokens, 1 thread (median of 5):")
    hrows = host_overhead(args.iters)
    for name, us in hrows:
        base = hrows[3][1] if "per layer" in name else hrows[0][1]
        print(f"  {name:<40} {us:7.1f} us  {us / base:5.2f}x nn.Linear")
    result["host_us"] = dict(hrows)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
