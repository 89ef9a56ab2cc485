"""TT-matrix layers on one GPU: tensornet's TTMLinear vs nn.Linear vs tensorly-torch (block-TT, factorized and
reconstructed) vs torchTT, 768 -> 3072, ranks 16 and 64. One command, a few minutes on an H100:

    PYTHONPATH=. python benchmarks/gpu_layers.py            # or after `pip install -e .`
    PYTHONPATH=. python benchmarks/gpu_layers.py --ranks 64 --tokens 8192 --out results.md

Modes: a training step (forward + backward, input requiring grad) at 8,192 tokens in float32 and under bf16
autocast, and decoding (inference of 8 tokens) under bf16 autocast and in float32. Reports median time,
the ratio to the dense layer, peak GPU memory of the step above what was allocated before it (parameters,
input and gradient buffers excluded) and bytes saved for backward. Missing or failing peers are reported and
skipped. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_layers as common

MODES = [
    # (title, tokens (None: --tokens), autocast dtype, training step?)
    ("train fp32", None, None, True),
    ("train bf16 autocast", None, torch.bfloat16, True),
    ("decode 8 tokens bf16 autocast", 8, torch.bfloat16, False),
    ("decode 8 tokens fp32", 8, None, False),
]


def peak_extra_mib(step, device: str) -> float | None:
    """Peak memory allocated during one call of ``step`` above what was allocated before it."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def layers(rank: int, device: str, compile_ttm: bool) -> dict:
    return common.build_layers(rank, device, compile_ttm)


def run_mode(
    rank: int, title: str, tokens: int, autocast, train: bool, device: str, budget: float, compile_ttm: bool
):
    rows = []
    torch.manual_seed(0)
    x = torch.randn(tokens, common.IN_FEATURES, device=device, requires_grad=train)
    grad = torch.randn(tokens, common.OUT_FEATURES, device=device)
    for name, make in layers(rank, device, compile_ttm).items():
        if (train and common.INFERENCE_ONLY in name) or (not train and common.TRAINING_ONLY in name):
            continue
        row = common.Row(name)
        try:
            layer = make()
            row.params = sum(p.numel() for p in layer.parameters())
            if train:
                step = common.train_step(layer, x, grad, autocast)
                step()  # allocate .grad buffers so the peak below is the step's own memory
                row.saved_mib = common.saved_bytes(layer, x, autocast) / 2**20
                row.train_ms = 1e3 * common.median_time(step, device, warmup=3, budget_s=budget, max_reps=100)
                row.peak_mib = peak_extra_mib(step, device)
            else:
                run = common.inference(layer, x, autocast)
                row.train_ms = 1e3 * common.median_time_batched(run, device, inner=50)
                row.peak_mib = peak_extra_mib(run, device)
            del layer
        except Exception as error:  # a missing or broken peer is reported, not fatal
            row.error = common.short_error(error)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        rows.append(row)
    return rows


def table(title: str, rows, train: bool) -> str:
    out = io.StringIO()
    base = rows[0]
    out.write(f"\n### {title}\n\n")
    saved = " saved for bwd MiB |" if train else ""
    out.write(f"| layer | params | ms | vs dense | peak extra MiB |{saved}\n")
    out.write("|---|---:|---:|---:|---:|" + ("---:|" if train else "") + "\n")
    for row in rows:
        if row.error:
            out.write(f"| {row.name} | - | unavailable: {row.error} | | |" + (" |" if train else "") + "\n")
            continue
        ms = common.fmt(row.train_ms, 3)
        extra = f" {common.fmt(row.saved_mib)} |" if train else ""
        out.write(
            f"| {row.name} | {row.params:,} | {ms} | {common.ratio(row.train_ms, base.train_ms)} | "
            f"{common.fmt(row.peak_mib)} |{extra}\n"
        )
    return out.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per layer and mode")
    parser.add_argument("--out", default=None, help="also write the report (markdown) to this file")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="add nn.Linear and TTMLinear under torch.compile (slower start)",
    )
    parser.add_argument(
        "--device", default="cuda", help="'cpu' only to dry-run the script (no memory figures)"
    )
    args = parser.parse_args(argv)
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_layers: no CUDA device; run benchmarks/bench_layers.py for the CPU", file=sys.stderr)
        raise SystemExit(2)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (as nn.Linear's default)
    started = time.perf_counter()
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
    else:
        name = common.machine()
    header = io.StringIO()
    header.write(f"# TT layers on {device}, {common.IN_FEATURES} -> {common.OUT_FEATURES}\n\n")
    header.write(
        f"machine: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"Python {platform.python_version()}\n"
    )
    header.write(f"command: python {' '.join(sys.argv)}\n")
    header.write(
        f"core shapes in {common.IN_SHAPE}, out {common.OUT_SHAPE}, ranks (1, r, r, 1); training at "
        f"{args.tokens} tokens, decoding at 8; medians; TF32 off\n"
    )
    report = [header.getvalue()]
    print(report[0], flush=True)
    for rank in args.ranks:
        for title, tokens, autocast, train in MODES:
            rows = run_mode(
                rank, title, tokens or args.tokens, autocast, train, device, args.budget, args.compile
            )
            text = table(f"r={rank}, {title} ({tokens or args.tokens} tokens)", rows, train)
            print(text, flush=True)
            report.append(text)
    footer = f"\ntotal {time.perf_counter() - started:.0f} s\n"
    print(footer)
    report.append(footer)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("".join(report))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
