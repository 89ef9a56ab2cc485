"""Benchmark: tensornet.tt_svd / tensornet.round against teneva, torchTT, tntorch and tensorly.

Run:  python benchmarks/bench_decomp.py [--repeats 7] [--threads 2] [--only round] [--out FILE.md]

The cases are the peer baselines of ``docs/reference.md`` and the rounding cases of issue 14, float64,
``--threads`` BLAS/torch threads:

* ``tt-svd 8^7 rank 6``: the dense 8^7 tensor of a random TT with ranks (1, 6, ..., 6, 1), eps 1e-8.
* ``tt-svd sin 10^6`` and ``tt-svd sin 4^11``: f(x) = sin(10 ||x||_2) sampled on the uniform grid of
  [0, 1]^d (n points per axis, end points included), eps 1e-6. The radial sine gives TT-ranks 10-13.
* Rounding (issue 14): each case gives ``x`` as the block cores of a sum of trains (what ``a + b`` stores)
  and rounds it at ``eps``; the kinds are ``a+a+a`` (true rank r, input 3r: a rank-deficient sum), ``a + 1e-10 b`` (a of rank r, b of rank 2r, both unit norm: rounding must recover rank r,
  the perturbation being below the per-unfolding threshold), and ``sum of m``: ``t_i = c_i a + delta b_i``
  (c_i in [0.5, 1.5], b_i random rank r, delta below the threshold), input rank m r, output rank r.
  ``tensornet round_sum`` rows round the same sum from its terms without forming the block cores.

Every result is checked for ``||x - y||_F <= eps ||x||_F``: against the dense tensor for TT-SVD, and
for rounding through the TT of x - y (block cores) orthogonalised by a QR sweep, which gives its norm
to working accuracy (a Gram/dot-product formula would cancel at the 1e-8 level). Peers are called with
their documented accuracy arguments: torchTT ``TT(x, eps)`` / ``.round(eps)``, tntorch
``Tensor(x, eps=)`` / ``.round_tt(eps)``, teneva ``svd(x, e)`` / ``truncate(y, e)`` (teneva's ``svd``
threshold is absolute per unfolding, so it gets ``e = eps / sqrt(d - 1) * ||x||``, ``||x||`` timed with
it), tensorly ``tensor_train(x, rank)`` (it has no accuracy argument; it gets the ranks tensornet
found). Times are medians over ``--repeats`` interleaved rounds (each method once per round, fewer rounds
for a case past its time budget) after one warm-up; the ratio column is the time over
the fastest *correct* peer (error <= eps). "cpu ms" is the median CPU time of the process over the same
calls (all its threads): on a shared machine far less noisy than wall time, and with ``--threads 1`` the
compute each method needs; ratios are given for both. "torch/numpy" compares tensornet's two rows.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import _harness as H
import numpy as np
import torch

import tensornet as tn
from tensornet import interop

warnings.filterwarnings("ignore")  # torchTT warns on import that its C++ extension is missing
PEERS = ("teneva", "torchTT", "tntorch", "tensorly")


# --- inputs -------------------------------------------------------------------------------------------
def random_cores(rng: np.random.Generator, n: int, d: int, rank: int) -> list[np.ndarray]:
    ranks = [1] + [rank] * (d - 1) + [1]
    cores = [rng.standard_normal((ranks[k], n, ranks[k + 1])) / math.sqrt(n * ranks[k]) for k in range(d)]
    scale = tt_norm(cores) ** (-1.0 / d)
    return [c * scale for c in cores]


def sum_cores(a: list[np.ndarray], b: list[np.ndarray]) -> list[np.ndarray]:
    """Cores of the TT a + b (block diagonal in the middle)."""
    d = len(a)
    out = []
    for k, (x, y) in enumerate(zip(a, b)):
        if k == 0:
            out.append(np.concatenate([x, y], axis=2))
        elif k == d - 1:
            out.append(np.concatenate([x, y], axis=0))
        else:
            core = np.zeros((x.shape[0] + y.shape[0], x.shape[1], x.shape[2] + y.shape[2]))
            core[: x.shape[0], :, : x.shape[2]] = x
            core[x.shape[0] :, :, x.shape[2] :] = y
            out.append(core)
    return out


def tt_norm(cores: list[np.ndarray]) -> float:
    """||TT||_F by a left-to-right QR sweep (accurate even when the TT is a small difference)."""
    carry = np.ones((1, 1))
    for core in cores:
        core = np.einsum("ab,bnc->anc", carry, core)
        r, n, r2 = core.shape
        carry = np.linalg.qr(core.reshape(r * n, r2), mode="r")
    return float(np.linalg.norm(carry))


def full(cores: list[np.ndarray]) -> np.ndarray:
    out = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        out = (out @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    return out.reshape([c.shape[1] for c in cores])


def radial_sine(n: int, d: int) -> np.ndarray:
    axis = np.linspace(0.0, 1.0, n)
    grid = np.meshgrid(*([axis] * d), indexing="ij", sparse=True)
    return np.ascontiguousarray(np.sin(10.0 * np.sqrt(sum(g * g for g in grid))) + np.zeros((n,) * d))


# --- peers -------------------------------------------------------------------------------------------
def peers() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, module in (
        ("teneva", "teneva"),
        ("torchTT", "torchtt"),
        ("tntorch", "tntorch"),
        ("tensorly", "tensorly"),
    ):
        try:
            found[name] = __import__(module)
        except Exception as err:
            print(f"# {name} unavailable: {err}")
    return found


def as_numpy_cores(result: Any) -> list[np.ndarray]:
    """Plain float64 TT cores (r, n, r') of a result, converted by ``tensornet.interop`` outside timing
    (a tntorch Tensor's Tucker factors U_k (n_k, s_k), which its TT-SVD can put on modes, included)."""
    return H.host_cores(result, np.float64)


def ranks_of(cores: list[np.ndarray]) -> tuple[int, ...]:
    return (1, *(int(c.shape[-1]) for c in cores))


def run_case(
    title: str,
    eps: float,
    methods: dict[str, Callable[[], Any]],
    error_of: Callable[[list[np.ndarray]], float],
    repeats: int,
    lines: list[str],
    budget: float = 40.0,
) -> dict[str, tuple[float, float, float, tuple[int, ...]]]:
    rows: dict[str, tuple[float, float, float, tuple[int, ...]]] = {}
    measured = H.time_interleaved(methods, rounds=repeats, budget=budget / max(len(methods), 1))
    results, failures = measured.results, measured.failures
    for name, message in failures.items():
        lines.append(f"| {title} | {name} | failed: {message} | | | | | | |")
    for name, result in results.items():
        cores = as_numpy_cores(result)
        timing = measured.timings[name]
        rows[name] = (timing.median, timing.best, error_of(cores), ranks_of(cores))
    cpu = measured.median("cpu")
    correct_peers = {k: v for k, v in rows.items() if not k.startswith("tensornet") and v[2] <= eps}
    fastest = min(correct_peers.items(), key=lambda kv: kv[1][0]) if correct_peers else None
    fastest_cpu = min((cpu[k] for k in correct_peers), default=None)
    for name, (median, best, err, ranks) in rows.items():
        ok = "yes" if err <= eps else "NO"
        ratio = f"{median / fastest[1][0]:.2f}" if fastest else "n/a"
        ratio_cpu = f"{cpu[name] / fastest_cpu:.2f}" if fastest_cpu else "n/a"
        numpy_row = name.replace("(torch)", "(numpy)")
        versus = f"{cpu[name] / cpu[numpy_row]:.2f}" if name.endswith("(torch)") and numpy_row in cpu else ""
        shown = f"{max(ranks)} {list(ranks)}" if len(ranks) <= 13 else f"{max(ranks)}"
        lines.append(
            f"| {title} | {name} | {median * 1e3:.1f} | {best * 1e3:.1f} | {ratio} | {cpu[name] * 1e3:.1f} "
            f"| {ratio_cpu} | {versus} | {err:.2e} {ok} | {shown} |"
        )
    if fastest:
        lines.append(f"|  | fastest correct peer: {fastest[0]} | | | | | | | | |")
    for line in lines[-(len(rows) + len(failures) + 1) :]:
        print(line, flush=True)
    return rows


# --- cases -------------------------------------------------------------------------------------------
def tt_svd_case(
    title: str, x: np.ndarray, eps: float, repeats: int, found: dict[str, Any], lines: list[str]
) -> None:
    xt = torch.from_numpy(x)
    d = x.ndim
    norm_x = float(np.linalg.norm(x))

    def error_of(cores: list[np.ndarray]) -> float:
        return float(np.linalg.norm(x - full(cores)) / norm_x)

    mine = tn.tt_svd(x, eps=eps)
    methods: dict[str, Callable[[], Any]] = {
        "tensornet (numpy)": lambda: tn.tt_svd(x, eps=eps),
        "tensornet (torch)": lambda: tn.tt_svd(xt, eps=eps),
    }
    if "teneva" in found:
        teneva = found["teneva"]
        methods["teneva"] = lambda: teneva.svd(x, e=eps / math.sqrt(d - 1) * np.linalg.norm(x))
    if "torchTT" in found:
        torchtt = found["torchTT"]
        methods["torchTT"] = lambda: torchtt.TT(xt, eps=eps)
    if "tntorch" in found:
        tntorch = found["tntorch"]
        methods["tntorch"] = lambda: tntorch.Tensor(xt, eps=eps)
    if "tensorly" in found:
        tensorly = found["tensorly"]
        from tensorly.decomposition import tensor_train

        tensorly.set_backend("numpy")
        methods["tensorly (tensornet's ranks)"] = lambda: tensor_train(x, list(mine.ranks))
    run_case(title, eps, methods, error_of, repeats, lines)


def round_terms(kind: str, n: int, d: int, rank: int, terms: int, eps: float) -> list[list[np.ndarray]]:
    """The terms of the sum to round (see the module notes): 'repeat', 'small' or 'sum'."""
    rng = np.random.default_rng(2024 + d + 7 * terms + rank)
    a = random_cores(rng, n, d, rank)
    if kind == "repeat":
        return [a] * terms
    if kind == "small":
        b = random_cores(rng, n, d, 2 * rank)
        return [a, [c * (1e-10 ** (1.0 / d)) for c in b]]
    delta = 0.01 * eps / math.sqrt(terms * (d - 1))  # each b_i far below the per-unfolding threshold
    out = []
    for _ in range(terms):  # t_i = c_i a + delta b_i, rank 2 r each
        b = random_cores(rng, n, d, rank)
        out.append(sum_cores([a[0] * float(rng.uniform(0.5, 1.5)), *a[1:]], [b[0] * delta, *b[1:]]))
    return out


def round_case(
    title: str,
    terms: list[list[np.ndarray]],
    eps: float,
    repeats: int,
    found: dict[str, Any],
    lines: list[str],
) -> None:
    x = terms[0]
    for term in terms[1:]:
        x = sum_cores(x, term)
    norm_x = tt_norm(x)
    xt = [torch.from_numpy(c) for c in x]
    x_tn, xt_tn = tn.TT(x), tn.TT(xt)
    terms_tn = [tn.TT(t) for t in terms]
    terms_tt = [t.to("torch") for t in terms_tn]

    def error_of(cores: list[np.ndarray]) -> float:
        return tt_norm(sum_cores(x, [-cores[0], *cores[1:]])) / norm_x

    methods: dict[str, Callable[[], Any]] = {
        "tensornet (numpy)": lambda: tn.round(x_tn, eps=eps),
        "tensornet (torch)": lambda: tn.round(xt_tn, eps=eps),
        "tensornet round_sum (numpy)": lambda: tn.round_sum(terms_tn, eps=eps),
        "tensornet round_sum (torch)": lambda: tn.round_sum(terms_tt, eps=eps),
    }
    if "teneva" in found:
        teneva = found["teneva"]
        x_teneva = interop.to_teneva(x_tn)
        methods["teneva"] = lambda: teneva.truncate(x_teneva, e=eps)
    if "torchTT" in found:
        x_ttt = interop.to_torchtt(xt_tn)
        methods["torchTT"] = lambda: x_ttt.round(eps)
    if "tntorch" in found:

        def tntorch_round() -> Any:
            t = interop.to_tntorch(xt_tn)  # a copy of the cores: round_tt works in place
            t.round_tt(eps)
            return t

        methods["tntorch"] = tntorch_round
    run_case(title, eps, methods, error_of, repeats, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="BLAS and torch threads (default 2)")
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    parser.add_argument("--only", default=None, help="run only cases whose title contains this")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(args.threads)
    except ImportError:
        pass
    found = peers()
    lines = [
        "| case | method | median ms | min ms | ratio (wall) | cpu ms | ratio (cpu) | torch/numpy (cpu) "
        "| rel. error <= eps | max rank [ranks] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines))
    start = time.perf_counter()
    cases: list[tuple[str, Callable[[], None]]] = [
        (
            "tt-svd 8^7 rank 6, eps 1e-8",
            lambda: tt_svd_case(
                "tt-svd 8^7 rank 6, eps 1e-8",
                full(random_cores(np.random.default_rng(7), 8, 7, 6)),
                1e-8,
                args.repeats,
                found,
                lines,
            ),
        ),
        (
            "tt-svd sin 10^6, eps 1e-6",
            lambda: tt_svd_case(
                "tt-svd sin 10^6, eps 1e-6", radial_sine(10, 6), 1e-6, args.repeats, found, lines
            ),
        ),
        (
            "tt-svd sin 4^11, eps 1e-6",
            lambda: tt_svd_case(
                "tt-svd sin 4^11, eps 1e-6", radial_sine(4, 11), 1e-6, args.repeats, found, lines
            ),
        ),
        (
            "round a+a+a d=20 n=8 r=20 (60->20), eps 1e-8",
            lambda: round_case(
                "round a+a+a d=20 n=8 r=20 (60->20), eps 1e-8",
                round_terms("repeat", 8, 20, 20, 3, 1e-08),
                1e-08,
                args.repeats,
                found,
                lines,
            ),
        ),
        (
            "round a+a+a d=40 n=4 r=30 (90->30), eps 1e-8",
            lambda: round_case(
                "round a+a+a d=40 n=4 r=30 (90->30), eps 1e-8",
                round_terms("repeat", 4, 40, 30, 3, 1e-08),
                1e-08,
                args.repeats,
                found,
                lines,
            ),
        ),
        (
            "round a+1e-10b d=20 n=8 60->20, eps 1e-8",
            lambda: round_case(
                "round a+1e-10b d=20 n=8 60->20, eps 1e-8",
                round_terms("small", 8, 20, 20, 2, 1e-08),
                1e-08,
                args.repeats,
                found,
                lines,
            ),
        ),
        (
            "round a+1e-10b d=40 n=4 90->30, eps 1e-8",
            lambda: round_case(
                "round a+1e-10b d=40 n=4 90->30, eps 1e-8",
                round_terms("small", 4, 40, 30, 2, 1e-08),
                1e-08,
                args.repeats,
                found,
                lines,
            ),
        ),
        (
            "round a+a d=100 n=2 r=20 (40->20), eps 1e-10",
            lambda: round_case(
                "round a+a d=100 n=2 r=20 (40->20), eps 1e-10",
                round_terms("repeat", 2, 100, 20, 2, 1e-10),
                1e-10,
                args.repeats,
                found,
                lines,
            ),
        ),
        (
            "round sum of 10 d=10 n=16 (200->10), eps 1e-3",
            lambda: round_case(
                "round sum of 10 d=10 n=16 (200->10), eps 1e-3",
                round_terms("sum", 16, 10, 10, 10, 0.001),
                0.001,
                args.repeats,
                found,
                lines,
            ),
        ),
        (
            "round sum of 5 d=30 n=4 (100->10), eps 1e-6",
            lambda: round_case(
                "round sum of 5 d=30 n=4 (100->10), eps 1e-6",
                round_terms("sum", 4, 30, 10, 5, 1e-06),
                1e-06,
                args.repeats,
                found,
                lines,
            ),
        ),
    ]
    for title, case in cases:
        if args.only is None or args.only in title:
            case()
    elapsed = time.perf_counter() - start
    print(f"# total {elapsed:.0f} s")
    header = [
        "# tensornet decompositions vs peers (CPU)",
        "",
        f"{elapsed:.0f} s in all. Inputs, accuracy checks and peer calls: the docstring of benchmarks/bench_decomp.py.",
        "Ratios: median time (wall, and CPU time of the process) over that of the fastest peer whose result",
        "met eps; torch/numpy: tensornet's torch row over its numpy row (CPU time).",
        "",
    ]
    H.write_report(args.out, [*header, *lines, "", *H.machine(peers=PEERS)])


if __name__ == "__main__":
    main()
