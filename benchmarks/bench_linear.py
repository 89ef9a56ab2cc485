"""Benchmark ``tn.linear`` against dense ``x @ W.T`` for GPT-2's c_fc (768 -> 3072) with the paper's cores.

Not a test. For r = 16, 32, 64, 80 (the core shapes of arXiv 2306.02697, REFERENCE.md) and 1 .. 8192 tokens
it times, in one run and as ratios to dense:

* ``tensornet``: ``tn.linear`` (planned path, custom autograd Function saving x and the cores);
* ``sweep``: a fixed left-to-right core-by-core einsum sweep with plain autograd (how most TT layer
  libraries do it: every intermediate is kept for backward);
* ``einsum``: plain autograd through one ``torch.einsum`` over x and all cores (opt_einsum path);

forward (inference, ``torch.no_grad``) and forward+backward (gradients for x and every parameter), and the
bytes each keeps for backward (``saved_tensors_hooks``). Results go to ``benchmarks/results/linear_<device>.md``.

    python benchmarks/bench_linear.py                   # CPU, 2 threads, < 5 minutes
    python benchmarks/bench_linear.py --device cuda     # a GPU run (adds bf16 autocast with --amp)
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Must precede the OpenMP runtime's start (import torch): with the default active spin-wait, a machine
# with more runnable threads than cores stalls every small multi-threaded GEMM by a scheduler quantum
# (~20-30 ms measured here, dense and TT alike). Set it in the environment to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
import tensornet as tn

# (in_k, out_k) pairs for c_fc 768 -> 3072 (REFERENCE.md)
PAPER = {
    16: ((4, 4), (4, 4), (4, 4), (4, 4), (3, 12)),
    32: ((8, 8), (8, 8), (12, 8), (1, 6)),
    64: ((8, 8), (8, 8), (12, 8), (1, 6)),
    80: ((16, 16), (16, 16), (3, 12)),
}
IN_FEATURES, OUT_FEATURES = 768, 3072


def machine_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_together(fns: dict, device: str, budget: float, max_reps: int = 15) -> dict:
    """Median seconds of each callable, measured round-robin (one call of each per round) so that load
    drifting on a shared machine affects all of them alike. One warm-up round; at least 3 rounds (2
    when a round takes over 3 s), more while under ``budget`` seconds."""
    for fn in fns.values():
        fn()
    sync(device)
    times: dict = {name: [] for name in fns}
    start = time.perf_counter()
    while True:
        round_start = time.perf_counter()
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        rounds = len(times[next(iter(fns))])
        long_rounds = time.perf_counter() - round_start > 3.0
        if rounds >= max_reps or (
            rounds >= (2 if long_rounds else 3) and time.perf_counter() - start > budget
        ):
            break
    return {name: statistics.median(values) for name, values in times.items()}


def saved_bytes(fn) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return total


def make_cores(rank: int, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    pairs = PAPER[rank]
    w = tn.random_ttm(tuple(o for _, o in pairs), tuple(i for i, _ in pairs), rank, seed=0, std=0.02)
    return [
        c.requires_grad_() for c in w.to("torch", device=device, dtype=str(dtype).replace("torch.", "")).cores
    ]


def sweep_linear(x: torch.Tensor, cores: list[torch.Tensor]) -> torch.Tensor:
    """The fixed left-to-right sweep (peers' way), plain autograd. x (B, N) -> (B, M)."""
    batch = x.shape[0]
    cols = [int(c.shape[2]) for c in cores]
    state = x.reshape(batch, 1, *cols)  # (B, r0, n_1..n_d), produced m's collected in front of r
    done = 1
    for k, core in enumerate(cores):
        rest = math.prod(cols[k + 1 :])
        state = state.reshape(batch * done, int(core.shape[0]), cols[k], rest)
        state = torch.einsum("brnx,rmns->bmsx", state, core)
        done *= int(core.shape[1])
    return state.reshape(batch, -1)


def einsum_linear(x: torch.Tensor, cores: list[torch.Tensor]) -> torch.Tensor:
    equation = tn.contract.linear_equation(len(cores))
    xr = x.reshape(x.shape[0], *(int(c.shape[2]) for c in cores))
    return torch.einsum(equation, xr, *cores).reshape(x.shape[0], -1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64, 80])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 64, 512, 2048, 8192])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of repeated rounds per case")
    parser.add_argument(
        "--peer-limit", type=float, default=3.0, help="skip a peer whose fwd+bwd exceeds this (s)"
    )
    parser.add_argument("--cold-limit", type=int, default=64, help="time 'dense cold' up to this many tokens")
    parser.add_argument("--autotune", action="store_true", help="tn.contract.autotune(True): time the plans")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tn.contract.autotune(args.autotune)
    device, dtype = args.device, torch.float32
    started = time.perf_counter()
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=args.amp)

    rows: list[dict] = []
    weight = (torch.randn(OUT_FEATURES, IN_FEATURES, device=device, dtype=dtype) * 0.02).requires_grad_()
    # Decoding in a real model reads each layer's W once per token, from DRAM: GPT-2 small's 24 MLP
    # matrices (226 MB in fp32) do not fit in cache. One W benchmarked alone stays cache-resident, which
    # flatters dense at small batch; "dense cold" cycles through 24 distinct weights to show both.
    cold = [torch.randn(OUT_FEATURES, IN_FEATURES, device=device, dtype=dtype) * 0.02 for _ in range(24)]
    cold_index = [0]

    def dense_cold(x):
        cold_index[0] = (cold_index[0] + 1) % len(cold)
        return torch.nn.functional.linear(x, cold[cold_index[0]])

    for rank in args.ranks:
        cores = make_cores(rank, device, dtype)
        w_tt = tn.TTM(cores)
        slow: set[str] = set()
        for tokens in args.tokens:
            x = torch.randn(tokens, IN_FEATURES, device=device, dtype=dtype, requires_grad=True)
            gy = torch.randn(tokens, OUT_FEATURES, device=device, dtype=dtype)
            methods = {
                "dense": lambda x=x: torch.nn.functional.linear(x, weight),
                "dense cold": lambda x=x: dense_cold(x),
                "tensornet": lambda x=x, w_tt=w_tt: tn.linear(x, w_tt),
                "sweep": lambda x=x, cores=cores: sweep_linear(x, cores),
                "einsum": lambda x=x, cores=cores: einsum_linear(x, cores),
            }
            methods = {name: fn for name, fn in methods.items() if name not in slow}
            if tokens > args.cold_limit:
                methods.pop("dense cold")
            row: dict = {"rank": rank, "tokens": tokens}
            calls = {}
            for name, fn in methods.items():

                def forward(fn=fn):
                    with torch.no_grad(), autocast:
                        return fn()

                if name == "dense cold":
                    calls[(name, "fwd")] = forward
                    continue

                def train_step(fn=fn, gy=gy):
                    with autocast:
                        y = fn()
                    y.backward(gy)

                calls[(name, "fwd")] = forward
                calls[(name, "fwdbwd")] = train_step
            measured = timed_together(calls, device, args.budget)
            if "dense cold" in methods:
                row["dense cold"] = measured[("dense cold", "fwd")]
            for name, fn in methods.items():
                if name == "dense cold":
                    continue
                with autocast:
                    saved = saved_bytes(fn)
                row[name] = (measured[(name, "fwd")], measured[(name, "fwdbwd")], saved)
                if name in ("sweep", "einsum") and measured[(name, "fwdbwd")] * 4 > args.peer_limit:
                    slow.add(name)  # the next token count (4-8x more) would take too long
            weight.grad = x.grad = None
            for c in cores:
                c.grad = None
            plan = tn.contract.plan_linear(
                (tokens, IN_FEATURES), cores, dtype=dtype, device=device, backend="torch"
            )
            row["plan"] = f"{plan.forward.strategy}/{plan.backward.strategy}"
            rows.append(row)
            print(format_row(row), flush=True)
    elapsed = time.perf_counter() - started
    report = render(rows, args, elapsed, device)
    print(report)
    out = Path(args.out or Path(__file__).parent / "results" / f"linear_{device.split(':')[0]}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(f"written to {out}", file=sys.stderr)


def _ratio(row: dict, name: str, index: int) -> str:
    if row.get(name) is None:
        return "skipped"
    return f"{row[name][index] / row['dense'][index]:.2f}x"


def format_row(row: dict) -> str:
    dense = row["dense"]
    cells = [
        f"r={row['rank']:<3} tokens={row['tokens']:<5}",
        f"dense fwd {dense[0] * 1e3:8.3f} ms fwd+bwd {dense[1] * 1e3:8.3f} ms",
        f"tn {_ratio(row, 'tensornet', 0)} / {_ratio(row, 'tensornet', 1)} ({row['plan']})",
        f"tn fwd / dense cold fwd {_cold(row)}",
        f"sweep {_ratio(row, 'sweep', 0)} / {_ratio(row, 'sweep', 1)}",
        f"einsum {_ratio(row, 'einsum', 0)} / {_ratio(row, 'einsum', 1)}",
    ]
    return " | ".join(cells)


def _cold(row: dict) -> str:
    if row.get("dense cold") is None:
        return "-"
    return f"{row['tensornet'][0] / row['dense cold']:.2f}x"


def _mib(row: dict, name: str) -> str:
    return "-" if row.get(name) is None else f"{row[name][2] / 2**20:.2f}"


def render(rows: list[dict], args, elapsed: float, device: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# tn.linear vs dense, 768 -> 3072 (GPT-2 c_fc), paper core shapes — {device}",
        "",
        f"- machine: {machine_name(device)}; torch {torch.__version__}, {args.threads} threads; "
        f"float32{' with bf16 autocast' if args.amp else ''}; {'autotuned' if args.autotune else 'cost-model'} plans; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
        f"load average at the end {os.getloadavg()[0]:.1f}; {now}; run took {elapsed:.0f} s",
        f"- command: `python benchmarks/bench_linear.py {' '.join(sys.argv[1:])}`".rstrip(),
        "- times are medians; ratios are time / dense time (lower is better; < 1 is faster than dense).",
        "  fwd = inference forward under no_grad; fwd+bwd = forward and backward with gradients for x and",
        "  all parameters. `plan` = tensornet's forward/backward choice for the bucket. `sweep` = fixed",
        "  left-to-right core-by-core einsum with plain autograd; `einsum` = plain autograd through one",
        "  einsum; `skipped` = too slow at the previous size to run here. All methods of one row are timed",
        "  round-robin (one call each per round), dense again for every rank, so load drift hits all alike.",
        "- saved = MiB kept for backward by the forward (saved_tensors_hooks).",
        "- dense cold = dense forward cycling through 24 distinct weights (GPT-2 small's MLP matrices do not",
        "  fit in cache when decoding); the single hot W of the main columns stays cache-resident.",
        "",
        "| r | tokens | dense fwd ms | dense fwd+bwd ms | tensornet fwd | tensornet fwd+bwd | plan "
        "| dense cold fwd ms | tensornet fwd vs cold | sweep fwd | sweep fwd+bwd | einsum fwd | einsum fwd+bwd "
        "| saved MiB dense / tn / sweep / einsum |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        dense = row["dense"]
        lines.append(
            f"| {row['rank']} | {row['tokens']} | {dense[0] * 1e3:.3f} | {dense[1] * 1e3:.3f} | "
            f"{_ratio(row, 'tensornet', 0)} | {_ratio(row, 'tensornet', 1)} | {row['plan']} | "
            f"{'-' if row.get('dense cold') is None else format(row['dense cold'] * 1e3, '.3f')} | {_cold(row)} | "
            f"{_ratio(row, 'sweep', 0)} | {_ratio(row, 'sweep', 1)} | {_ratio(row, 'einsum', 0)} | "
            f"{_ratio(row, 'einsum', 1)} | {_mib(row, 'dense')} / {_mib(row, 'tensornet')} / "
            f"{_mib(row, 'sweep')} / {_mib(row, 'einsum')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
