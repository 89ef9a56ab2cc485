"""Per-call host overhead of ``TTMLinear`` (tensornet.linear on torch tensors) vs ``nn.Linear``.

Tiny token counts (1 and 8), one thread, CPU: the time is almost all Python/dispatcher overhead,
which is what dominates on a GPU at decoding sizes. Reports the median per-call time of the forward
(under ``torch.no_grad``) and of forward+backward, and optionally a cProfile breakdown (tottime).

    OMP_NUM_THREADS=1 python benchmarks/bench_overhead.py [--iters 2000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import time
from typing import cast

import torch
from torch import nn

from tensornet.nn import TTMLinear

IN, OUT = 768, 3072


def layers(tiny: bool = False) -> dict[str, nn.Module]:
    if tiny:  # compute is negligible: the time is the host overhead alone
        return {
            "nn.Linear 64": nn.Linear(64, 64),
            "TTM 64 (4,4,4) r=4": TTMLinear(64, 64, rank=4, in_shape=(4, 4, 4), out_shape=(4, 4, 4)),
        }
    out: dict[str, nn.Module] = {"nn.Linear": nn.Linear(IN, OUT)}
    for rank in (16, 64):
        out[f"TTM paper r={rank}"] = TTMLinear(
            IN, OUT, rank=rank, in_shape=(8, 8, 12, 1), out_shape=(8, 8, 8, 6), clip_rank=False
        )
        out[f"TTM 3-core r={rank}"] = TTMLinear(IN, OUT, rank=rank, ncores=3)
    return out


def _median_us(fn, iters: int, repeats: int = 5) -> float:
    for _ in range(max(iters // 10, 10)):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        samples.append((time.perf_counter() - start) / iters * 1e6)
    return statistics.median(samples)


def measure(layer: nn.Module, tokens: int, iters: int) -> tuple[float, float]:
    x = torch.randn(tokens, cast(int, layer.in_features))
    xg = x.clone().requires_grad_(True)

    def fwd() -> None:
        with torch.no_grad():
            layer(x)

    def fwd_bwd() -> None:
        layer(xg).sum().backward()

    return _median_us(fwd, iters), _median_us(fwd_bwd, iters // 2)


def profile(layer: nn.Module, tokens: int, iters: int, top: int) -> str:
    x = torch.randn(tokens, cast(int, layer.in_features), requires_grad=True)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="cProfile forward+backward, sorted by tottime")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--tiny-only", action="store_true", help="only the overhead-bound tiny layer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, iters {args.iters}, median of 5")
    print(
        f"{'layer':<22} {'tokens':>6} {'fwd us':>9} {'fwd+bwd us':>11} {'fwd x dense':>12} {'f+b x dense':>12}"
    )
    cases = ((1, True), (8, True)) if args.tiny_only else ((1, True), (8, True), (1, False), (8, False))
    for tokens, tiny in cases:
        base = None
        for name, layer in layers(tiny).items():
            torch.manual_seed(0)
            f, fb = measure(layer, tokens, args.iters)
            if base is None:
                base = (f, fb)
            print(f"{name:<22} {tokens:>6} {f:9.1f} {fb:11.1f} {f / base[0]:12.2f} {fb / base[1]:12.2f}")
    if args.profile:
        layer = layers(True)["TTM 64 (4,4,4) r=4"]
        print("\ncProfile, TTM 64 (4,4,4) r=4, 8 tokens, forward+backward, sorted by tottime:")
        print(profile(layer, 8, 500, args.top))


if __name__ == "__main__":
    main()
