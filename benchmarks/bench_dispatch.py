"""Dispatched aten ops per training step and per layer call, and the per-call host overhead (CPU).

    OMP_NUM_THREADS=2 python benchmarks/bench_dispatch.py [--skip-gpt2] [--json out.json]
    python benchmarks/bench_dispatch.py --suite overhead [--iters 2000] [--tiny-only] [--native] [--profile]

On a GPU every dispatched op is at least one kernel launch (a few microseconds), so at bf16 the number of
ops, not FLOPs, decides how a TT model's step compares with dense; at decoding sizes the host's Python and
dispatcher work per call does. Both are measured here, on the CPU:

* ``--suite ops`` (default): non-view aten ops, counted with a ``TorchDispatchMode`` (views -- reshape,
  permute, transpose, expand, ..., and ``_unsafe_view``, the metadata-only reshape of a fresh copy --
  launch nothing and are left out; host-side scalar reads count). Counts do not depend on the machine, so
  this CPU run stands in for the GPU's launch count. Cases: one layer call, forward + backward at 8,192
  tokens (``nn.Linear(768, 3072)`` vs ``TTMLinear`` r=64 with the paper's 4 cores, 3 balanced cores, and
  materialized, alone and per layer inside a group of 12); one GPT-2 small training step at 1,024 tokens
  (forward, backward, gradient clipping and ``AdamW(foreach=True)``): dense, MLPs as TTM r=64 with the
  paper's shapes and with 3 balanced cores. Then the host overhead at 8 tokens (below).
* ``--suite overhead``: median microseconds per call, one thread, of the forward (``no_grad``) and of
  forward + backward at 1 and 8 tokens, for a tiny 64 x 64 layer (the time is all host work) and for the
  768 -> 3072 layers; the tiny layer also materialized, per layer in a group of 12, and as a floor: its
  product written out by hand in one Function that saves W (the least host work an eager TT layer can
  do); ``--native`` adds that product as a C++ autograd Function of ATen calls saving only x and the cores
  (compiled on the spot: what a native op without Python in the step would cost). ``--profile`` adds a
  cProfile breakdown (tottime) of the tiny layer's forward + backward.

Results: ``benchmarks/results/dispatch.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _harness as H
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

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
    def total(self) -> float:
        return sum(self.ops.values())


def count(fn: Callable[[], Any]) -> OpCounter:
    fn()  # warm: plans and caches made outside the count
    with OpCounter() as counter:
        fn()
    return counter


def paper_layer() -> TTMLinear:
    return TTMLinear(768, 3072, rank=64, in_shape=(8, 8, 12, 1), out_shape=(8, 8, 8, 6), clip_rank=False)


def tiny_layer() -> TTMLinear:
    return TTMLinear(64, 64, rank=4, in_shape=(4, 4, 4), out_shape=(4, 4, 4))


class _FloorProduct(torch.autograd.Function):
    """The least host work an eager TT layer can do: the tiny layer's product written out by hand.

    Three GEMMs and one permuting copy rebuild W; W and the partial products are saved (so the backward
    rebuilds nothing: more memory than the library's rule allows); the backward is 6 GEMMs, one copy, one
    cat and the bias sum. A reference row for the overhead suite, not a layer of the library.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        weight, *parts = _floor_weight(packed)
        ctx.save_for_backward(x, weight, *parts)
        return torch.addmm(bias, x, weight.mT)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # type: ignore[override]
        x, weight, first, middle, last, left = ctx.saved_tensors
        blocked = (grad.mT @ x).view(4, 4, 4, 4, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(256, 16)
        grad_left = (blocked @ last.mT).view(16, 64)
        grads = (grad_left @ middle.mT, first.mT @ grad_left, left.mT @ blocked)
        return grad @ weight, torch.cat([g.reshape(-1) for g in grads]), grad.sum(0)


def _floor_weight(packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # the tiny layer's cores (1,4,4,4), (4,4,4,4), (4,4,4,1) as GEMM operands, in packed order
    first, middle, last = packed[:64].view(16, 4), packed[64:320].view(4, 64), packed[320:].view(4, 16)
    left = (first @ middle).view(256, 4)  # (m0 n0 m1 n1, r2)
    weight = (left @ last).view(4, 4, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(64, 64)
    return weight, first, middle, last, left


class FloorLayer(nn.Module):
    """:class:`_FloorProduct` on a tiny layer's parameters (its output and gradients checked when built)."""

    def __init__(self, layer: TTMLinear) -> None:
        super().__init__()
        self.in_features = layer.in_features
        self.packed, self.bias = layer.packed_cores, layer.bias
        x = torch.randn(3, 64, requires_grad=True)
        mine = torch.autograd.grad(self(x).square().sum(), (x, self.packed, self.bias))
        theirs = torch.autograd.grad(layer(x).square().sum(), (x, self.packed, self.bias))
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _FloorProduct.apply(x, self.packed, self.bias)


_NATIVE_SOURCE = r"""
#include <torch/extension.h>
using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// the tiny layer's cores (1,4,4,4), (4,4,4,4), (4,4,4,1) as GEMM operands, W, and the left partial product
static std::vector<Tensor> weight_of(const Tensor& p) {
  auto first = p.narrow(0, 0, 64).view({16, 4});
  auto middle = p.narrow(0, 64, 256).view({4, 64});
  auto last = p.narrow(0, 320, 64).view({4, 16});
  auto left = at::mm(first, middle).view({256, 4});
  auto w = at::mm(left, last).view({4, 4, 4, 4, 4, 4}).permute({0, 2, 4, 1, 3, 5}).reshape({64, 64});
  return {w, first, middle, last, left};
}

// saves x and the packed cores only (the library's memory rule): the backward rebuilds W
struct FloorProduct : public torch::autograd::Function<FloorProduct> {
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor p, Tensor b) {
    ctx->save_for_backward({x, p});
    return at::addmm(b, x, weight_of(p)[0].t());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto g = grads[0];
    auto parts = weight_of(saved[1]);
    auto blocked = at::mm(g.t(), saved[0]).view({4, 4, 4, 4, 4, 4}).permute({0, 3, 1, 4, 2, 5}).reshape({256, 16});
    auto grad_left = at::mm(blocked, parts[3].t()).view({16, 64});
    auto packed = at::cat({at::mm(grad_left, parts[2].t()).reshape(-1), at::mm(parts[1].t(), grad_left).reshape(-1),
                           at::mm(parts[4].t(), blocked).reshape(-1)});
    return {at::mm(g, parts[0]), packed, g.sum(0)};
  }
};

Tensor floor_product(Tensor x, Tensor p, Tensor b) { return FloorProduct::apply(x, p, b); }
"""


class NativeFloorLayer(FloorLayer):
    """The tiny layer's product as a C++ autograd Function of ATen calls, saving only x and the cores.

    Compiled on first use with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler and ninja; ~30 s):
    what a native op built from ATen calls would cost, without Python in the step.
    """

    def __init__(self, layer: TTMLinear) -> None:
        from torch.utils.cpp_extension import load_inline

        self.native = load_inline(
            "tensornet_bench_floor",
            cpp_sources=_NATIVE_SOURCE,
            functions=["floor_product"],
            extra_cflags=["-O2"],  # load_inline passes no optimisation level of its own
        )
        super().__init__(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.native.floor_product(x, self.packed, self.bias)


# --- suite: ops -----------------------------------------------------------------------------------------
def layer_ops(tokens: int) -> list[tuple[str, OpCounter]]:
    cases: dict[str, nn.Module] = {
        "nn.Linear": nn.Linear(768, 3072),
        "TTMLinear paper r=64": paper_layer(),
        "TTMLinear 3-core r=64": TTMLinear(768, 3072, rank=64, ncores=3),
        "TTMLinear paper r=64, materialized": materialize(paper_layer()),
    }
    rows = []
    for name, layer in cases.items():
        x = torch.randn(tokens, 768, requires_grad=True)
        rows.append((name, count(lambda layer=layer, x=x: layer(x).sum().backward())))
    # in a model, a group of layers with equal core shapes shares one batched rebuild (GPT-2: 12 c_fc)
    stacks = {
        "12 x nn.Linear": [nn.Linear(768, 3072) for _ in range(12)],
        "12 x TTMLinear paper r=64, materialized": [paper_layer() for _ in range(12)],
    }
    for name, layers in stacks.items():
        model = materialize(nn.ModuleList(layers))
        x = torch.randn(tokens, 768, requires_grad=True)
        counter = count(lambda model=model, x=x: sum(layer(x).sum() for layer in model).backward())
        counter.ops = Counter({k: v / 12 for k, v in counter.ops.items()})  # per layer
        rows.append((name + " (per layer)", counter))
    return rows


def gpt2_ops(tokens: int) -> list[tuple[str, OpCounter, int]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from tensornet.gpt2 import tensorize

    config = GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    rows = []
    for name in ("dense", "TTM paper r=64", "TTM 3-core r=64"):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config)
        if name != "dense":
            model, _ = tensorize(
                model, rank=64, shapes="paper" if "paper" in name else "balanced", ncores=3, bias=False
            )
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True)
        ids = torch.randint(0, config.vocab_size, (1, tokens + 1))

        def step(model: nn.Module = model, optimizer: Any = optimizer, ids: torch.Tensor = ids) -> None:
            logits = model(input_ids=ids[:, :-1], use_cache=False).logits
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
            optimizer.step()

        rows.append((name, count(step), sum(p.numel() for p in model.parameters())))
    return rows


def _op_lines(
    rows: list[tuple[str, OpCounter]], base_of: Callable[[str], float], unit: str, top: int
) -> list[str]:
    lines = []
    for name, counter in rows:
        lines.append(f"| {name} | {counter.total:,.1f} | {H.ratio(counter.total, base_of(name))} {unit} |")
        if top:
            lines.append("| | " + ", ".join(f"{k} {v:.3g}" for k, v in counter.ops.most_common(top)) + " | |")
    return lines


def suite_ops(args: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    rows = layer_ops(args.layer_tokens)
    totals = {name: c.total for name, c in rows}
    lines = [f"## One layer call, forward + backward, 768 -> 3072, {args.layer_tokens:,} tokens", ""]
    lines += ["| case | non-view aten ops | vs nn.Linear |", "|---|---:|---:|"]
    lines += _op_lines(
        rows,
        lambda n: totals["12 x nn.Linear (per layer)" if "per layer" in n else "nn.Linear"],
        "",
        args.top,
    )
    result["layer"] = totals
    if not args.skip_gpt2:
        grows = gpt2_ops(args.gpt2_tokens)
        lines += ["", f"## GPT-2 small, one training step (AdamW foreach), {args.gpt2_tokens:,} tokens", ""]
        lines += ["| model | non-view aten ops | vs dense | params |", "|---|---:|---:|---:|"]
        base = grows[0][1].total
        lines += [
            f"| {name} | {c.total:,.0f} | {H.ratio(c.total, base, 3)} | {params:,} |"
            for name, c, params in grows
        ]
        result["gpt2"] = {name: c.total for name, c, _ in grows}
    lines += suite_overhead(args, result, tokens=(8,), sizes=("tiny",))
    return lines


# --- suite: overhead ------------------------------------------------------------------------------------
def overhead_layers(size: str, native: bool = False) -> dict[str, nn.Module]:
    if size == "tiny":  # compute is negligible: the time is the host overhead alone
        layers = {
            "nn.Linear 64": nn.Linear(64, 64),
            "TTMLinear 64 (4,4,4) r=4": tiny_layer(),
            "same, materialized": materialize(tiny_layer()),
            "floor: the same product by hand, W saved": FloorLayer(tiny_layer()),
        }
        if native:
            layers["floor in C++ (ATen calls), x and cores saved"] = NativeFloorLayer(tiny_layer())
        return layers
    out: dict[str, nn.Module] = {"nn.Linear 768->3072": nn.Linear(768, 3072)}
    for rank in (16, 64):
        out[f"TTMLinear paper r={rank}"] = TTMLinear(
            768, 3072, rank=rank, in_shape=(8, 8, 12, 1), out_shape=(8, 8, 8, 6), clip_rank=False
        )
        out[f"TTMLinear 3-core r={rank}"] = TTMLinear(768, 3072, rank=rank, ncores=3)
    return out


def _calls(layers: dict[str, nn.Module], tokens: int) -> dict[str, Callable[[], Any]]:
    calls: dict[str, Callable[[], Any]] = {}
    for name, layer in layers.items():
        features = layer[0].in_features if isinstance(layer, nn.ModuleList) else layer.in_features
        x = torch.randn(tokens, int(features))
        xg = x.clone().requires_grad_(True)
        if isinstance(layer, nn.ModuleList):  # a group of 12: forward + backward only
            calls[f"{name} fwd+bwd"] = lambda stack=layer, xg=xg: sum(m(xg).sum() for m in stack).backward()
            continue
        calls[f"{name} fwd"] = _no_grad(layer, x)
        calls[f"{name} fwd+bwd"] = lambda layer=layer, xg=xg: layer(xg).sum().backward()
    return calls


def _no_grad(layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def forward() -> Any:
        with torch.no_grad():
            return layer(x)

    return forward


def suite_overhead(
    args: argparse.Namespace,
    result: dict[str, Any],
    tokens: tuple[int, ...] = (1, 8),
    sizes: tuple[str, ...] = ("tiny", "full"),
) -> list[str]:
    torch.set_num_threads(1)
    lines = ["", "## Host overhead per call, 1 thread (median of 5 samples of --iters calls)", ""]
    lines += [
        "| layer | tokens | fwd us | fwd+bwd us | fwd vs nn.Linear | fwd+bwd vs nn.Linear |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        layers = overhead_layers(size, getattr(args, "native", False))
        if size == "tiny":
            layers["12 x nn.Linear 64, per layer"] = nn.ModuleList(nn.Linear(64, 64) for _ in range(12))
            layers["12 x TTMLinear materialized, per layer"] = materialize(
                nn.ModuleList(tiny_layer() for _ in range(12))
            )
        for count_tokens in tokens:
            measured = H.time_interleaved(
                _calls(layers, count_tokens),
                rounds=5,
                min_rounds=5,
                warmup=max(args.iters // 10, 10),
                inner=args.iters,
            )
            us = {name: 1e6 * value for name, value in measured.median().items()}
            for name, layer in layers.items():
                per = 12 if isinstance(layer, nn.ModuleList) else 1
                base = next(iter(layers)) if per == 1 else "12 x nn.Linear 64, per layer"
                fwd, both = us.get(f"{name} fwd"), us[f"{name} fwd+bwd"] / per
                base_both = us[f"{base} fwd+bwd"] / (12 if per == 12 else 1)
                lines.append(
                    f"| {name} | {count_tokens} | {H.number(fwd)} | {H.number(both)} | {H.ratio(fwd, us.get(f'{base} fwd'))} | {H.ratio(both, base_both)} |"
                )
                result.setdefault("host_us", {})[f"{name}, {count_tokens} tokens"] = both
    if args.profile:
        lines += [
            "",
            "## cProfile, TTMLinear 64 (4,4,4) r=4, 8 tokens, forward+backward, 500 calls, by tottime",
            "",
            "```",
            profile(tiny_layer(), 8, 500, args.top or 25),
            "```",
        ]
    return lines


def profile(layer: nn.Module, tokens: int, iters: int, top: int) -> str:
    x = torch.randn(tokens, int(layer.in_features), requires_grad=True)
    for _ in range(20):
        layer(x).sum().backward()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(iters):
        layer(x).sum().backward()
    prof.disable()
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(top)
    return stream.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--suite", choices=("ops", "overhead"), default="ops")
    parser.add_argument("--layer-tokens", type=int, default=8192)
    parser.add_argument("--gpt2-tokens", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=2000, help="host-overhead calls per sample")
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--tiny-only", action="store_true", help="overhead: the 64 x 64 layers only")
    parser.add_argument(
        "--native", action="store_true", help="overhead: add the floor as a C++ Function (compiles, ~30 s)"
    )
    parser.add_argument("--profile", action="store_true", help="overhead: add a cProfile breakdown")
    parser.add_argument(
        "--top", type=int, default=0, help="the N most frequent ops (or profile lines) per case"
    )
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = parser.parse_args()
    torch.manual_seed(0)
    result: dict[str, Any] = {}
    lines = ["# Dispatched ops and host overhead per call (CPU)", ""]
    sizes = ("tiny",) if args.tiny_only else ("tiny", "full")
    lines += suite_ops(args, result) if args.suite == "ops" else suite_overhead(args, result, sizes=sizes)
    lines += ["", *H.machine()]
    print("\n".join(lines))
    H.write_report(args.out, lines)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
