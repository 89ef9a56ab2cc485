"""TT-matrix layers side by side on the CPU: tensornet's TTMLinear vs nn.Linear vs tensorly-torch's
FactorizedLinear (block-TT, factorized and reconstructed) vs torchTT's LinearLayerTT.

    python benchmarks/bench_layers.py                 # 768 -> 3072, ranks 16 and 64, 2,048 tokens, float32
    python benchmarks/bench_layers.py --tokens 512 --ranks 16 --threads 2

Per layer: forward+backward time (median, input requiring grad, as inside a network), the bytes the
autograd graph saves for backward (counted with ``torch.autograd.graph.saved_tensors_hooks``, parameters
excluded, each storage once) and the inference latency at 8 tokens (decoding; the row with
``cache_dense_weight`` rebuilds W once and reuses it, so it is timed for inference only; the row with
``save_weight=True`` keeps W for backward, so it is timed for training only). Every TT layer uses the same
core shapes ``in (8, 8, 12), out (12, 16, 16)`` and ranks ``(1, r, r, 1)``. A peer library that is missing
or fails is reported as such and the rest still runs. Not a test: nothing here asserts a speed.
``benchmarks/gpu_layers.py`` reuses the builders below on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import tensornet as tn
from tensornet.nn import TTEmbedding, TTMLinear

IN_FEATURES, OUT_FEATURES = 768, 3072
IN_SHAPE, OUT_SHAPE = (8, 8, 12), (12, 16, 16)
# rows whose layer differs from another only without gradients (training would time the same code twice)
INFERENCE_ONLY = "+ cache_dense_weight (inference only)"
# and rows whose layer differs only with gradients (without them nothing is saved for backward)
TRAINING_ONLY = "save_weight=True (training only)"


# --- the layers -----------------------------------------------------------------------------------------
class _TorchTTAdapter(nn.Module):
    """torchTT's LinearLayerTT takes (B, *in_shape) and returns (B, *out_shape); flatten around it."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.layer(x.reshape(-1, *IN_SHAPE))
        return y.reshape(*lead, OUT_FEATURES)


def _quiet_import(name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchTT warns at import that its C++ extension is missing
        return __import__(name, fromlist=["_"])


def build_layers(rank: int, device: str, compiled: bool = False) -> dict[str, Callable[[], nn.Module]]:
    """Name -> constructor (float32, on ``device``); constructors may raise (a missing or broken peer).
    ``compiled`` adds nn.Linear and TTMLinear (default and ``save_weight``) under ``torch.compile``."""

    def dense() -> nn.Module:
        return nn.Linear(IN_FEATURES, OUT_FEATURES, device=device)

    def ttm() -> nn.Module:
        return TTMLinear(
            IN_FEATURES, OUT_FEATURES, rank=rank, in_shape=IN_SHAPE, out_shape=OUT_SHAPE, device=device
        )

    def ttm_cached() -> nn.Module:
        return ttm().cache_dense_weight()

    def ttm_keeping() -> nn.Module:
        layer = ttm()
        layer.save_weight = True
        return layer

    def ttm_materialized() -> nn.Module:  # a group of one: W rebuilt by the group's batched Function
        return tn.nn.materialize(ttm())

    def tltorch(implementation: str) -> Callable[[], nn.Module]:
        def make() -> nn.Module:
            module = _quiet_import("tltorch")
            layer = module.FactorizedLinear(
                IN_SHAPE,
                OUT_SHAPE,
                factorization="blocktt",
                rank=rank,
                implementation=implementation,
                bias=True,
            )
            return layer.to(device)

        return make

    def torchtt() -> nn.Module:
        module = _quiet_import("torchtt.nn")
        layer = module.LinearLayerTT(list(IN_SHAPE), list(OUT_SHAPE), [1, rank, rank, 1])
        return _TorchTTAdapter(layer).to(device)

    extra: dict[str, Callable[[], nn.Module]] = {}
    if compiled:
        extra = {
            "nn.Linear + torch.compile": lambda: torch.compile(dense()),
            f"tensornet TTMLinear r={rank} + torch.compile": lambda: torch.compile(ttm()),
            f"tensornet TTMLinear r={rank} + torch.compile {TRAINING_ONLY}": lambda: torch.compile(
                ttm_keeping()
            ),
        }
    return {
        "nn.Linear (dense)": dense,
        **extra,
        f"tensornet TTMLinear r={rank}": ttm,
        f"tensornet TTMLinear r={rank} {TRAINING_ONLY}": ttm_keeping,
        f"tensornet TTMLinear r={rank} materialized {TRAINING_ONLY}": ttm_materialized,
        f"tensornet TTMLinear r={rank} {INFERENCE_ONLY}": ttm_cached,
        f"tltorch blocktt factorized r={rank}": tltorch("factorized"),
        f"tltorch blocktt reconstructed r={rank}": tltorch("reconstructed"),
        f"torchTT LinearLayerTT r={rank}": torchtt,
    }


# --- measurements ---------------------------------------------------------------------------------------
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_time(
    fn: Callable[[], Any], device: str, *, warmup: int = 2, budget_s: float = 2.0, max_reps: int = 50
) -> float:
    """Median seconds per call: ``warmup`` calls, then repeats until ``budget_s`` or ``max_reps`` (at least 3)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < max_reps and time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], rows: dict[str, Row], *, budget_s: float, max_rounds: int = 50
) -> dict[str, float]:
    """Median seconds per call of each function, timed in interleaved rounds (each round calls every
    function once), so that load from other processes hits all of them alike and the ratios stay fair.
    A function stops being timed after ``budget_s`` seconds (with at least 3 samples); one that raises
    is dropped and its row gets the error."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    live = dict(fns)
    for name, fn in list(live.items()):  # warm-up (allocations, plans, caches)
        try:
            fn()
        except Exception as error:
            rows[name].error = short_error(error)
            del live[name]
    for _ in range(max_rounds):
        active = [name for name in live if len(samples[name]) < 3 or sum(samples[name]) < budget_s]
        if not active:
            break
        for name in active:
            start = time.perf_counter()
            live[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items() if values}


def median_time_batched(
    fn: Callable[[], Any], device: str, *, inner: int, warmup: int = 3, reps: int = 7
) -> float:
    """For microsecond-scale calls (decoding on a GPU): median over ``reps`` of ``inner`` back-to-back calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def saved_bytes(layer: nn.Module, x: torch.Tensor, autocast: torch.dtype | None = None) -> int:
    """Bytes the autograd graph of ``layer(x)`` saves for backward, parameters excluded, each storage once."""
    params = {p.data_ptr() for p in layer.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        autocast_context(x.device.type, autocast),
    ):
        y = layer(x)
    del y
    return sum(seen.values())


def autocast_context(device_type: str, dtype: torch.dtype | None) -> Any:
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def train_step(
    layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: torch.dtype | None
) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with autocast_context(x.device.type, autocast):
            y = layer(x)
        y.backward(grad.to(y.dtype))

    return step


def inference(layer: nn.Module, x: torch.Tensor, autocast: torch.dtype | None) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), autocast_context(x.device.type, autocast):
            layer(x)

    return run


def short_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= 90 else text[:87] + "..."


@dataclass
class Row:
    name: str
    params: int | None = None
    train_ms: float | None = None
    saved_mib: float | None = None
    decode_ms: float | None = None
    peak_mib: float | None = None
    error: str = ""


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None) -> str:
    return "-" if value is None or not base else f"{value / base:.3f}x"


def print_table(title: str, rows: list[Row]) -> None:
    base = rows[0]
    print(f"\n### {title}\n")
    print("| layer | params | fwd+bwd ms | vs dense | saved for bwd MiB | 8-token inference ms | vs dense |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        if row.error:
            print(f"| {row.name} | - | unavailable: {row.error} | | | | |")
            continue
        print(
            f"| {row.name} | {row.params:,} | {fmt(row.train_ms)} | {ratio(row.train_ms, base.train_ms)} | "
            f"{fmt(row.saved_mib)} | {fmt(row.decode_ms, 3)} | {ratio(row.decode_ms, base.decode_ms)} |"
        )


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}, tensornet {tn.__version__}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per layer and mode")
    parser.add_argument(
        "--embedding", action="store_true", help="also TTEmbedding vs nn.Embedding (GPT-2's 50,257 x 768)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also nn.Linear and TTMLinear under torch.compile (inductor)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cpu"
    print(f"# TT layers, {IN_FEATURES} -> {OUT_FEATURES}, {args.tokens} tokens, float32, CPU")
    print(f"\nmachine: {machine()}")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"core shapes: in {IN_SHAPE}, out {OUT_SHAPE}; ranks (1, r, r, 1); medians of interleaved rounds")
    torch.manual_seed(0)
    x = torch.randn(args.tokens, IN_FEATURES, requires_grad=True)
    grad = torch.randn(args.tokens, OUT_FEATURES)
    x_decode = torch.randn(8, IN_FEATURES)
    for rank in args.ranks:
        rows: dict[str, Row] = {}
        trains: dict[str, Callable[[], None]] = {}
        decodes: dict[str, Callable[[], None]] = {}
        for name, make in build_layers(rank, device, args.compile).items():
            row = rows[name] = Row(name)
            try:
                layer = make()
                row.params = sum(p.numel() for p in layer.parameters())
                if INFERENCE_ONLY not in name:
                    row.saved_mib = saved_bytes(layer, x) / 2**20
                    trains[name] = train_step(layer, x, grad, None)
                if TRAINING_ONLY not in name:
                    decodes[name] = inference(layer, x_decode, None)
            except Exception as error:  # a missing or broken peer is reported, not fatal
                row.error = short_error(error)
        for name, seconds in interleaved_medians(trains, rows, budget_s=args.budget).items():
            rows[name].train_ms = 1e3 * seconds
        for name, seconds in interleaved_medians(decodes, rows, budget_s=1.0, max_rounds=200).items():
            rows[name].decode_ms = 1e3 * seconds
        print_table(f"rank {rank}", list(rows.values()))
    print(
        f"\nsaved for bwd: activations only (parameters excluded); the dense layer saves x ({math.prod(x.shape) * 4 / 2**20:.1f} MiB)."
    )
    if args.embedding:
        embedding_table(args.tokens, args.ranks, args.budget)


def embedding_table(tokens: int, ranks: list[int], budget: float) -> None:
    """TTEmbedding (both lookups) vs nn.Embedding at GPT-2's vocabulary: fwd+bwd time and saved bytes."""
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (tokens,))
    rows: dict[str, Row] = {}
    steps: dict[str, Callable[[], None]] = {}
    layers: dict[str, nn.Module] = {"nn.Embedding (dense)": nn.Embedding(50257, 768)}
    for rank in ranks:
        for lookup in ("auto", "gather"):
            layer = TTEmbedding(50257, 768, rank=rank)
            layer.lookup = lookup
            layers[f"TTEmbedding r={rank} lookup={lookup} (prefix cores {layer.prefix_cores(tokens)})"] = (
                layer
            )
    for name, layer in layers.items():
        row = rows[name] = Row(name, params=sum(p.numel() for p in layer.parameters()))
        row.saved_mib = saved_bytes(layer, ids) / 2**20

        def step(layer: nn.Module = layer) -> None:
            layer.zero_grad(set_to_none=True)
            layer(ids).sum().backward()

        steps[name] = step
    for name, seconds in interleaved_medians(steps, rows, budget_s=budget).items():
        rows[name].train_ms = 1e3 * seconds
    print(f"\n### embedding 50,257 x 768, {tokens} tokens (fwd+bwd; no decoding column)\n")
    print("| layer | params | fwd+bwd ms | vs dense | saved for bwd MiB |")
    print("|---|---:|---:|---:|---:|")
    base = rows["nn.Embedding (dense)"]
    for row in rows.values():
        print(
            f"| {row.name} | {row.params:,} | {fmt(row.train_ms)} | {ratio(row.train_ms, base.train_ms)} | "
            f"{fmt(row.saved_mib)} |"
        )


if __name__ == "__main__":
    main()
