"""TT-matrix layers against dense and against peer libraries, on the CPU or one GPU. Not a test.

    python benchmarks/bench_layers.py                          # peers, CPU, 768 -> 3072, ranks 16 and 64
    python benchmarks/bench_layers.py --device cuda            # the same on a GPU (8,192 tokens, bf16 too)
    python benchmarks/bench_layers.py --suite paths            # tn.linear's paths vs dense, 1..8192 tokens
    python benchmarks/bench_layers.py --suite embedding        # TTEmbedding vs nn.Embedding (GPT-2's vocabulary)

Suites:

* ``peers``: tensornet's ``TTMLinear`` (default; ``save_weight=True``; in a :func:`tensornet.nn.materialize`
  group; with ``cache_dense_weight``; optionally under ``torch.compile``) vs ``nn.Linear`` vs tensorly-torch's
  ``FactorizedLinear`` (block-TT, factorized and reconstructed) vs torchTT's ``LinearLayerTT``. Every TT
  layer has core shapes ``in (8, 8, 12), out (12, 16, 16)`` and ranks ``(1, r, r, 1)``. Modes: a training
  step (forward + backward, input requiring grad) at ``--tokens`` in float32 (and under bf16 autocast on a
  GPU) and decoding (inference of 8 tokens) in float32 (and bf16 autocast on a GPU). Columns: median time,
  ratio to dense, bytes the autograd graph saves for backward (parameters excluded, each storage once) and,
  on a GPU, the peak memory of the step above what was allocated before it. A ``cache_dense_weight`` row
  differs only without gradients (timed for decoding only), a ``save_weight`` row only with them (training
  only). A missing or failing peer is reported and the rest still runs.
* ``paths``: ``tn.linear`` (planned path, custom autograd Function) vs dense ``x @ W.T`` for GPT-2's c_fc
  (768 -> 3072) with the core shapes of arXiv 2306.02697 (``docs/reference.md``), r = 16, 32, 64, 80 and 1
  .. 8192 tokens; also a fixed left-to-right core-by-core einsum sweep and one ``torch.einsum`` over all
  cores, both with plain autograd (how most TT layer libraries compute), forward (``no_grad``) and forward
  + backward, and the bytes each keeps for backward. "dense cold" cycles through 24 distinct weights: a
  decoding model reads each layer's W from DRAM, which one W benchmarked alone (cache-resident) hides.
* ``embedding``: ``TTEmbedding`` (both lookups) vs ``nn.Embedding`` at 50,257 x 768: forward + backward and
  saved bytes.

Times are medians of interleaved rounds (:func:`_harness.time_interleaved`). Results:
``benchmarks/results/layers.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

# Must precede the OpenMP runtime's start (import torch): with the default active spin-wait, a machine with
# more runnable threads than cores stalls every small multi-threaded GEMM by a scheduler quantum.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import _harness as H
import torch
from torch import nn

import tensornet as tn
from tensornet.nn import TTEmbedding, TTMLinear

IN_FEATURES, OUT_FEATURES = 768, 3072
IN_SHAPE, OUT_SHAPE = (8, 8, 12), (12, 16, 16)
INFERENCE_ONLY = "+ cache_dense_weight (inference only)"
TRAINING_ONLY = "(training only)"
# (in_k, out_k) pairs of c_fc 768 -> 3072 per rank in arXiv 2306.02697 (docs/reference.md)
PAPER = {
    16: ((4, 4), (4, 4), (4, 4), (4, 4), (3, 12)),
    32: ((8, 8), (8, 8), (12, 8), (1, 6)),
    64: ((8, 8), (8, 8), (12, 8), (1, 6)),
    80: ((16, 16), (16, 16), (3, 12)),
}


# --- the layers -----------------------------------------------------------------------------------------
class _TorchTTAdapter(nn.Module):
    """torchTT's LinearLayerTT takes (B, *in_shape) and returns (B, *out_shape); flatten around it."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.layer(x.reshape(-1, *IN_SHAPE)).reshape(*lead, OUT_FEATURES)


def _quiet_import(name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchTT warns at import that its C++ extension is missing
        return __import__(name, fromlist=["_"])


def build_layers(rank: int, device: str, compiled: bool = False) -> dict[str, Callable[[], nn.Module]]:
    """Name -> constructor (float32, on ``device``); constructors may raise (a missing or broken peer)."""

    def dense() -> nn.Module:
        return nn.Linear(IN_FEATURES, OUT_FEATURES, device=device)

    def ttm(save_weight: bool = False) -> nn.Module:
        return TTMLinear(
            IN_FEATURES, OUT_FEATURES, rank=rank, in_shape=IN_SHAPE, out_shape=OUT_SHAPE, device=device,
            save_weight=save_weight,
        )  # fmt: skip

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
        return _TorchTTAdapter(module.LinearLayerTT(list(IN_SHAPE), list(OUT_SHAPE), [1, rank, rank, 1])).to(
            device
        )

    extra: dict[str, Callable[[], nn.Module]] = {}
    if compiled:
        extra = {
            "nn.Linear + torch.compile": lambda: torch.compile(dense()),
            f"tensornet TTMLinear r={rank} + torch.compile": lambda: torch.compile(ttm()),
            f"tensornet TTMLinear r={rank} + torch.compile save_weight=True {TRAINING_ONLY}": lambda: (
                torch.compile(ttm(True))
            ),
        }
    return {
        "nn.Linear (dense)": dense,
        **extra,
        f"tensornet TTMLinear r={rank}": ttm,
        f"tensornet TTMLinear r={rank} save_weight=True {TRAINING_ONLY}": lambda: ttm(True),
        f"tensornet TTMLinear r={rank} materialized, a group of one {TRAINING_ONLY}": lambda: (
            tn.nn.materialize(ttm())
        ),
        f"tensornet TTMLinear r={rank} {INFERENCE_ONLY}": lambda: ttm().cache_dense_weight(),
        f"tltorch blocktt factorized r={rank}": tltorch("factorized"),
        f"tltorch blocktt reconstructed r={rank}": tltorch("reconstructed"),
        f"torchTT LinearLayerTT r={rank}": torchtt,
    }


# --- suite: peers ---------------------------------------------------------------------------------------
def _autocast(device: str, dtype: torch.dtype | None) -> Any:
    return (
        torch.autocast(device.split(":")[0], dtype=dtype) if dtype is not None else contextlib.nullcontext()
    )


def _train_step(
    layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: torch.dtype | None
) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with _autocast(str(x.device), autocast):
            y = layer(x)
        y.backward(grad.to(y.dtype))

    return step


def _decode(layer: nn.Module, x: torch.Tensor, autocast: torch.dtype | None) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode(), _autocast(str(x.device), autocast):
            layer(x)

    return run


def _peak_extra_mib(run: Callable[[], Any], device: str) -> float | None:
    """Peak GPU memory allocated during one call of ``run`` above what was allocated before it."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def peers_mode(
    rank: int, mode: tuple[str, int, torch.dtype | None, bool], args: argparse.Namespace
) -> list[str]:
    """One table: every layer in one mode ``(title, tokens, autocast dtype, training?)``."""
    title, tokens, autocast, train = mode
    device = args.device
    torch.manual_seed(0)
    x = torch.randn(tokens, IN_FEATURES, device=device, requires_grad=train)
    grad = torch.randn(tokens, OUT_FEATURES, device=device)
    calls, params, saved, peaks, errors = {}, {}, {}, {}, {}
    for name, make in build_layers(rank, device, args.compile).items():
        if (INFERENCE_ONLY in name) if train else (TRAINING_ONLY in name):
            continue
        try:
            layer = make()
            params[name] = sum(p.numel() for p in layer.parameters())
            calls[name] = _train_step(layer, x, grad, autocast) if train else _decode(layer, x, autocast)
            if train:
                calls[name]()  # .grad buffers allocated, so the peak below is the step's own memory
                with _autocast(device, autocast):
                    saved[name] = H.saved_bytes(lambda layer=layer: layer(x), layer.parameters()) / 2**20
            peaks[name] = _peak_extra_mib(calls[name], device)
        except Exception as error:  # a missing or broken peer is reported, not fatal
            errors[name] = H.short_error(error)
    inner = 50 if device.startswith("cuda") and not train else 1  # microsecond-scale GPU calls
    measured = H.time_interleaved(calls, budget=args.budget, inner=inner, sync=H.device_sync(device))
    errors.update(measured.failures)
    medians = measured.median()
    base = medians.get("nn.Linear (dense)")
    rows = []
    for name in [*calls, *(n for n in errors if n not in calls)]:
        if name in errors:
            rows.append([name, "-", f"unavailable: {errors[name]}", "", "", ""])
            continue
        ms = 1e3 * medians[name]
        rows.append([name, f"{params[name]:,}", H.number(ms, 3), H.ratio(medians[name], base, 3),
                     H.number(saved.get(name)), H.number(peaks.get(name))])  # fmt: skip
    header = ["layer", "params", "ms", "vs dense", "saved for bwd MiB", "peak extra MiB"]
    return [
        "",
        f"### r={rank}, {title} ({tokens} tokens)",
        "",
        *H.markdown_table(header, rows, right=range(1, 6)),
    ]


def suite_peers(args: argparse.Namespace) -> list[str]:
    modes: list[tuple[str, int, torch.dtype | None, bool]] = [("train fp32", args.tokens, None, True)]
    if args.device.startswith("cuda"):
        modes.append(("train bf16 autocast", args.tokens, torch.bfloat16, True))
        modes.append(("decode 8 tokens bf16 autocast", 8, torch.bfloat16, False))
    modes.append(("decode 8 tokens fp32", 8, None, False))
    lines = [
        f"# TT layers on {args.device}, {IN_FEATURES} -> {OUT_FEATURES}",
        "",
        f"core shapes in {IN_SHAPE}, out {OUT_SHAPE}, ranks (1, r, r, 1); medians of interleaved rounds; TF32 off",
    ]
    for rank in args.ranks:
        for mode in modes:
            table = peers_mode(rank, mode, args)
            print("\n".join(table), flush=True)
            lines += table
    return lines


# --- suite: paths ----------------------------------------------------------------------------------------
def paper_cores(rank: int, device: str) -> list[torch.Tensor]:
    pairs = PAPER[rank]
    w = tn.random_ttm(tuple(o for _, o in pairs), tuple(i for i, _ in pairs), rank, seed=0, std=0.02)
    return [c.requires_grad_() for c in w.to("torch", device=device, dtype="float32").cores]


def sweep_linear(x: torch.Tensor, cores: list[torch.Tensor]) -> torch.Tensor:
    """The fixed left-to-right sweep (peers' way), plain autograd. x (B, N) -> (B, M)."""
    batch = x.shape[0]
    cols = [int(c.shape[2]) for c in cores]
    state = x.reshape(batch, 1, *cols)  # (B, r0, n_1..n_d), produced m's collected in front of r
    done = 1
    for k, core in enumerate(cores):
        state = state.reshape(batch * done, int(core.shape[0]), cols[k], math.prod(cols[k + 1 :]))
        state = torch.einsum("brnx,rmns->bmsx", state, core)
        done *= int(core.shape[1])
    return state.reshape(batch, -1)


def einsum_linear(x: torch.Tensor, cores: list[torch.Tensor]) -> torch.Tensor:
    xr = x.reshape(x.shape[0], *(int(c.shape[2]) for c in cores))
    return torch.einsum(tn.contract.linear_equation(len(cores)), xr, *cores).reshape(x.shape[0], -1)


def _path_calls(
    methods: dict[str, Callable[..., torch.Tensor]], x: torch.Tensor, gy: torch.Tensor, amp: Any
) -> dict[str, Callable[[], Any]]:
    calls: dict[str, Callable[[], Any]] = {}
    for name, fn in methods.items():

        def forward(fn: Callable[..., torch.Tensor] = fn) -> Any:
            with torch.no_grad(), amp:
                return fn(x)

        def train(fn: Callable[..., torch.Tensor] = fn) -> None:
            with amp:
                y = fn(x)
            y.backward(gy)

        calls[f"{name} fwd"] = forward
        if name != "dense cold":
            calls[f"{name} fwd+bwd"] = train
    return calls


def suite_paths(args: argparse.Namespace) -> list[str]:
    device = args.device
    tn.contract.autotune(args.autotune)
    amp = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.amp)
    weight = (torch.randn(OUT_FEATURES, IN_FEATURES, device=device) * 0.02).requires_grad_()
    cold = [torch.randn(OUT_FEATURES, IN_FEATURES, device=device) * 0.02 for _ in range(24)]
    turn = [0]

    def dense_cold(x: torch.Tensor) -> torch.Tensor:
        turn[0] = (turn[0] + 1) % len(cold)
        return nn.functional.linear(x, cold[turn[0]])

    rows = []
    for rank in args.path_ranks:
        cores, slow = paper_cores(rank, device), set()
        for tokens in args.path_tokens:
            x = torch.randn(tokens, IN_FEATURES, device=device, requires_grad=True)
            gy = torch.randn(tokens, OUT_FEATURES, device=device)
            methods = {
                "dense": lambda x: nn.functional.linear(x, weight),
                "dense cold": dense_cold,
                "tensornet": lambda x, cores=cores: tn.linear(x, tn.TTM(cores)),
                "sweep": lambda x, cores=cores: sweep_linear(x, cores),
                "einsum": lambda x, cores=cores: einsum_linear(x, cores),
            }
            methods = {
                k: v
                for k, v in methods.items()
                if k not in slow and (k != "dense cold" or tokens <= args.cold_limit)
            }
            medians = H.time_interleaved(
                _path_calls(methods, x, gy, amp), rounds=15, budget=args.budget, sync=H.device_sync(device)
            ).median()
            saved = {}
            for name in ("dense", "tensornet", "sweep", "einsum"):
                if name in methods:
                    with amp:
                        saved[name] = H.saved_bytes(lambda fn=methods[name], x=x: fn(x)) / 2**20
                if name in ("sweep", "einsum") and medians.get(f"{name} fwd+bwd", 0) * 4 > args.peer_limit:
                    slow.add(name)  # the next token count (4-8x more) would take too long
            plan = tn.contract.plan_linear(
                (tokens, IN_FEATURES), cores, dtype=torch.float32, device=device, backend="torch"
            )
            row = _path_row(rank, tokens, medians, saved, f"{plan.forward.strategy}/{plan.backward.strategy}")
            print("| " + " | ".join(row) + " |", flush=True)
            rows.append(row)
    header = ["r", "tokens", "dense fwd ms", "dense fwd+bwd ms", "tensornet fwd", "tensornet fwd+bwd", "plan",
              "dense cold fwd ms", "tensornet fwd vs cold", "sweep fwd", "sweep fwd+bwd", "einsum fwd",
              "einsum fwd+bwd", "saved MiB dense / tn / sweep / einsum"]  # fmt: skip
    return [
        f"# tn.linear vs dense, 768 -> 3072 (GPT-2 c_fc), paper core shapes, {device}",
        "",
        f"float32{' with bf16 autocast' if args.amp else ''}; {'autotuned' if args.autotune else 'cost-model'} plans;"
        " ratios are time / dense time; `skipped` = too slow at the previous size",
        "",
        *H.markdown_table(header, rows),
    ]


def _path_row(
    rank: int, tokens: int, medians: dict[str, float], saved: dict[str, float], plan: str
) -> list[str]:
    def vs(name: str, base: str) -> str:
        return "skipped" if name not in medians else H.ratio(medians[name], medians[base])

    cold = medians.get("dense cold fwd")
    return [
        str(rank), str(tokens), f"{medians['dense fwd'] * 1e3:.3f}", f"{medians['dense fwd+bwd'] * 1e3:.3f}",
        vs("tensornet fwd", "dense fwd"), vs("tensornet fwd+bwd", "dense fwd+bwd"), plan,
        "-" if cold is None else f"{cold * 1e3:.3f}", H.ratio(medians["tensornet fwd"], cold),
        vs("sweep fwd", "dense fwd"), vs("sweep fwd+bwd", "dense fwd+bwd"), vs("einsum fwd", "dense fwd"),
        vs("einsum fwd+bwd", "dense fwd+bwd"),
        " / ".join(H.number(saved.get(name), 2) for name in ("dense", "tensornet", "sweep", "einsum")),
    ]  # fmt: skip


# --- suite: embedding -----------------------------------------------------------------------------------
def suite_embedding(args: argparse.Namespace) -> list[str]:
    tokens = args.tokens
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (tokens,), device=args.device)
    layers: dict[str, nn.Module] = {"nn.Embedding (dense)": nn.Embedding(50257, 768, device=args.device)}
    for rank in args.ranks:
        for lookup in ("auto", "gather"):
            layer = TTEmbedding(50257, 768, rank=rank, device=args.device)
            layer.lookup = lookup
            layers[f"TTEmbedding r={rank} lookup={lookup} (prefix cores {layer.prefix_cores(tokens)})"] = (
                layer
            )

    def step(layer: nn.Module) -> Callable[[], None]:
        def run() -> None:
            layer.zero_grad(set_to_none=True)
            layer(ids).sum().backward()

        return run

    medians = H.time_interleaved(
        {n: step(m) for n, m in layers.items()}, budget=args.budget, sync=H.device_sync(args.device)
    ).median()
    base = medians["nn.Embedding (dense)"]
    rows = [
        [name, f"{sum(p.numel() for p in layer.parameters()):,}", H.number(1e3 * medians[name]), H.ratio(medians[name], base),
         H.number(H.saved_bytes(lambda layer=layer: layer(ids), layer.parameters()) / 2**20)]
        for name, layer in layers.items()
    ]  # fmt: skip
    header = ["layer", "params", "fwd+bwd ms", "vs dense", "saved for bwd MiB"]
    table = H.markdown_table(header, rows, right=range(1, 5))
    print("\n".join(table), flush=True)
    return [f"# embedding 50,257 x 768, {tokens} tokens, fwd+bwd", "", *table]


# --- main -----------------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--suite", choices=("peers", "paths", "embedding"), default="peers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--tokens", type=int, default=None, help="training tokens (default 2,048 on CPU, 8,192 on GPU)"
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timing per layer and mode")
    parser.add_argument("--compile", action="store_true", help="peers: also nn.Linear and TTMLinear compiled")
    parser.add_argument("--path-ranks", type=int, nargs="+", default=[16, 32, 64, 80], help="paths: ranks")
    parser.add_argument("--path-tokens", type=int, nargs="+", default=[1, 8, 64, 512, 2048, 8192])
    parser.add_argument(
        "--peer-limit", type=float, default=3.0, help="paths: skip a sweep/einsum slower than this (s)"
    )
    parser.add_argument(
        "--cold-limit", type=int, default=64, help="paths: time 'dense cold' up to this many tokens"
    )
    parser.add_argument("--autotune", action="store_true", help="paths: tn.contract.autotune(True)")
    parser.add_argument("--amp", action="store_true", help="paths: bf16 autocast")
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    gpu = args.device.startswith("cuda")
    args.tokens = args.tokens or (8192 if gpu else 2048)
    args.budget = args.budget or (1.0 if gpu or args.suite == "paths" else 3.0)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_layers: no CUDA device; run with --device cpu", file=sys.stderr)
        raise SystemExit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (as nn.Linear's default)
    suite = {"peers": suite_peers, "paths": suite_paths, "embedding": suite_embedding}[args.suite]
    lines = suite(args)
    lines += ["", *H.machine(device=args.device, peers=("tensorly-torch", "torchTT"))]
    print("\n".join(lines[-6:]))
    H.write_report(args.out, lines)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
