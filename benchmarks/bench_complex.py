"""Benchmark: complex TT-SVD and rounding against torchTT, tntorch and teneva; the QTT Fourier transform
against numpy's FFT of the dense vector.

Run:  python benchmarks/bench_complex.py [--repeats 7] [--threads 1] [--only qft] [--out FILE.md]

Cases (complex128, one thread by default):

* ``tt-svd 8^7 rank 6``: the dense 8^7 tensor of a random complex TT of ranks (1, 6, ..., 6, 1), eps 1e-8
  (the real case of ``bench_decomp.py`` with circular complex normal cores).
* ``tt-svd wave 10^6``: ``exp(i 10 (x_1 + ... + x_6)) / (1 + ||x||^2)`` on the uniform grid of [0, 1]^6,
  10 points per axis, eps 1e-6.
* ``round a+a+a``: the block cores of ``a + a + a`` for a random complex TT ``a`` of rank r (d=20 n=8 r=20
  and d=40 n=4 r=30), eps 1e-8: rounding must return rank r.
* ``qft 2^20``: the spectrum of a sampled function on N = 2^20 points by ``tn.qft(20) @ x`` (x the QTT of
  the samples) rounded to 1e-10, against ``numpy.fft.fft(v, norm="ortho")`` of the dense vector; both
  compared with the closed form. The QTT time is shown without and with building ``tn.qft`` (which, like an
  FFT plan, is made once per size); the function's QTT (from the closed form by ``tn.cross``) is given to
  both routes untimed, as the dense vector is to numpy.

Correctness is checked against dense references (``||x - y|| <= eps ||x||``; for rounding in TT form).
Peers are called with their documented accuracy arguments (torchTT ``TT(x, eps)`` / ``.round(eps)``,
tntorch ``Tensor(x, eps=)`` / ``.round_tt(eps)``, teneva ``svd(x, e)`` / ``truncate(y, e)`` with teneva's
absolute per-unfolding threshold). Ratios are medians over interleaved rounds, against the fastest correct
peer.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Callable
from typing import Any

import _harness as H
import numpy as np
import torch

import tensornet as tn
from tensornet import interop

warnings.filterwarnings("ignore")  # torchTT warns on import that its C++ extension is missing
PEERS = ("torchTT", "tntorch", "teneva")


def peers() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, module in (("torchTT", "torchtt"), ("tntorch", "tntorch"), ("teneva", "teneva")):
        try:
            found[name] = __import__(module)
        except Exception as err:
            print(f"# {name} unavailable: {err}")
    return found


def cores_of(result: Any) -> list[np.ndarray]:
    """Plain complex TT cores of a peer's or tensornet's result, by ``tensornet.interop`` (tntorch's Tucker
    factors merged in)."""
    return H.host_cores(result, np.complex128)


def relative_error_tt(cores: list[np.ndarray], reference: tn.TT) -> float:
    """||y - x|| / ||x|| in TT form (QR-based norm of the difference: accurate at 1e-8)."""
    y = tn.TT(cores)
    return float(tn.norm(y - reference) / tn.norm(reference))


def table(
    title: str, eps: float, methods: dict[str, Callable[[], Any]], error_of: Callable, repeats: int
) -> list[str]:
    measured = H.time_interleaved(methods, rounds=repeats, budget=30.0 / max(len(methods), 1))
    rows = {}
    for name, result in measured.results.items():
        cores = cores_of(result)
        rows[name] = (measured.timings[name].median, error_of(cores), max(int(c.shape[-1]) for c in cores))
    correct = {k: v for k, v in rows.items() if not k.startswith("tensornet") and v[1] <= eps}
    fastest = min((v[0] for v in correct.values()), default=None)
    lines = []
    for name, message in measured.failures.items():
        lines.append(f"| {title} | {name} | failed: {message} | | | |")
    for name, (median, err, rank) in rows.items():
        ok = "yes" if err <= eps else "**NO**"
        lines.append(
            f"| {title} | {name} | {median * 1e3:.1f} | {H.ratio(median, fastest)} | {err:.1e} {ok} | {rank} |"
        )
    for line in lines:
        print(line, flush=True)
    return lines


def random_complex_cores(rng: np.random.Generator, n: int, d: int, rank: int) -> list[np.ndarray]:
    return list(tn.random_tt((n,) * d, rank, seed=int(rng.integers(2**31)), dtype="complex128").cores)


def tt_svd_cases(found: dict[str, Any], repeats: int) -> list[str]:
    rng = np.random.default_rng(7)
    lines = []
    x7 = tn.full(tn.TT(random_complex_cores(rng, 8, 7, 6)))
    axis = np.linspace(0.0, 1.0, 10)
    grid = np.meshgrid(*([axis] * 6), indexing="ij", sparse=True)
    wave = np.exp(10j * sum(grid)) / (1.0 + sum(g * g for g in grid))
    for title, x, eps in (("tt-svd 8^7 rank 6", np.asarray(x7), 1e-8), ("tt-svd wave 10^6", wave, 1e-6)):
        xt = torch.from_numpy(x)
        norm_x = float(np.linalg.norm(x))
        d = x.ndim
        methods: dict[str, Callable[[], Any]] = {
            "tensornet (numpy)": lambda x=x, eps=eps: tn.tt_svd(x, eps=eps),
            "tensornet (torch)": lambda xt=xt, eps=eps: tn.tt_svd(xt, eps=eps),
        }
        if "torchTT" in found:
            methods["torchTT"] = lambda xt=xt, eps=eps: found["torchTT"].TT(xt, eps=eps)
        if "tntorch" in found:
            methods["tntorch"] = lambda xt=xt, eps=eps: found["tntorch"].Tensor(xt, eps=eps)
        if "teneva" in found:
            methods["teneva"] = lambda x=x, eps=eps, d=d: found["teneva"].svd(
                x, e=eps / math.sqrt(d - 1) * np.linalg.norm(x)
            )

        def error_of(cores: list[np.ndarray], x: np.ndarray = x, norm_x: float = norm_x) -> float:
            return float(np.linalg.norm(tn.full(tn.TT(cores)) - x) / norm_x)

        lines += table(title, eps, methods, error_of, repeats)
    return lines


def round_methods(x: tn.TT, found: dict[str, Any], eps: float) -> dict[str, Callable[[], Any]]:
    """Every method's rounding of the train ``x`` (its block cores handed to the peers as they are)."""
    d = x.ncores
    on_torch = x.to("torch")
    methods: dict[str, Callable[[], Any]] = {
        "tensornet (numpy)": lambda: tn.round(x, eps=eps),
        "tensornet (torch)": lambda: tn.round(on_torch, eps=eps),
    }
    if "torchTT" in found:
        peer = interop.to_torchtt(x)
        methods["torchTT"] = lambda: peer.round(eps)
    if "tntorch" in found:

        def tntorch_round() -> Any:
            y = interop.to_tntorch(on_torch)  # a copy of the cores: round_tt works in place
            y.round_tt(eps)
            return y

        methods["tntorch"] = tntorch_round
    if "teneva" in found:
        norm = float(tn.norm(x))
        host = interop.to_teneva(x)
        methods["teneva"] = lambda: found["teneva"].truncate(host, e=eps / math.sqrt(d - 1) * norm)
    return methods


def round_cases(found: dict[str, Any], repeats: int) -> list[str]:
    rng = np.random.default_rng(11)
    lines = []
    eps = 1e-8
    for d, n, r in ((20, 8, 20), (40, 4, 30)):
        a = tn.TT(random_complex_cores(rng, n, d, r))
        a = a / float(tn.norm(a))
        exact = 3.0 * a
        methods = round_methods(a + a + a, found, eps)
        title = f"round a+a+a d={d} n={n} r={r}"
        lines += table(title, eps, methods, lambda c, e=exact: relative_error_tt(c, e), repeats)
    return lines


def qft_case(repeats: int) -> list[str]:
    d = 20
    n = 2**d
    # a plane wave of non-integer frequency alpha: its DFT is a Dirichlet kernel in closed form
    alpha = 1234.37
    index = np.arange(n)
    v = np.exp(2j * math.pi * alpha * index / n)
    # the geometric sum in extended precision (float64's own rounding of it is ~1e-11 near alpha)
    k = np.arange(n, dtype=np.longdouble)
    a = np.longdouble(alpha) - k
    two_pi = 2 * np.arccos(np.longdouble(-1))  # pi in extended precision
    numerator = np.exp(1j * two_pi * a) - 1
    closed = (numerator / (np.exp(1j * two_pi * a / n) - 1) / np.sqrt(np.longdouble(n))).astype(np.complex128)
    bits = 2 ** np.arange(d - 1, -1, -1)  # mode 0 is the most significant bit of the index
    x = tn.cross(lambda i: np.exp(2j * math.pi * alpha * (i @ bits) / n), (2,) * d, eps=1e-13, seed=0)
    q = tn.qft(d, eps=1e-12)
    eps = 1e-10
    methods: dict[str, Callable[[], Any]] = {
        "numpy.fft.fft (dense)": lambda: np.fft.fft(v, norm="ortho"),
        "tensornet qft @ x, rounded": lambda: tn.round(q @ x, eps=eps),
        "tensornet qft(20) built + applied": lambda: tn.round(tn.qft(d, eps=1e-12) @ x, eps=eps),
    }
    measured = H.time_interleaved(methods, rounds=repeats, budget=20.0)
    lines = []
    base = measured.timings["numpy.fft.fft (dense)"].median
    for name, result in measured.results.items():
        dense = result if isinstance(result, np.ndarray) else np.asarray(result.T.full()).reshape(-1)
        err = float(np.linalg.norm(dense - closed) / np.linalg.norm(closed))
        rank = "-" if isinstance(result, np.ndarray) else str(result.largest_rank)
        median = measured.timings[name].median
        lines.append(
            f"| qft 2^20 plane wave | {name} | {median * 1e3:.1f} | {H.ratio(median, base)} | {err:.1e} | {rank} |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["tt-svd", "round", "qft"])
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    found = peers()
    lines = [
        "| case | method | median ms | vs fastest correct peer (qft: vs numpy) | relative error, correct | largest rank |",
        "|---|---|---:|---:|---|---:|",
    ]
    if args.only in (None, "tt-svd"):
        lines += tt_svd_cases(found, args.repeats)
    if args.only in (None, "round"):
        lines += round_cases(found, args.repeats)
    if args.only in (None, "qft"):
        lines += qft_case(args.repeats)
    lines += ["", *H.machine(peers=PEERS)]
    H.write_report(args.out, lines)


if __name__ == "__main__":
    main()
