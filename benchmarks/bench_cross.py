"""Benchmark: tensornet.cross against teneva, torchTT and tntorch on the same functions, in one run.

Run:  python benchmarks/bench_cross.py [--repeats 7] [--out benchmarks/results/cross.md]
      python benchmarks/bench_cross.py --tune     (re-derive the peers' settings below; ~2 min)

Cases (float64; x_k = i_k / (n - 1) on [0, 1], t = i / (2^30 - 1) with i the C-order index of the bits):

* ``1/(1+x1+..+x6)`` on the 10^6 grid ``(10,) * 6``, eps 1e-6;
* ``sin(x1+..+x20)`` on ``(4,) * 20`` with x_k = i_k / 3 (TT rank 2), eps 1e-8;
* ``sqrt(t) sin(20 t)`` on 2^30 points of [0, 1] as a QTT ``(2,) * 30``, eps 1e-6.

Every method gets the same vectorised function of integer indices (peers that pass floats or torch tensors
get a thin conversion) wrapped in a counter: *evaluations* are all indices the function was asked for,
validation sets included. *Error* is ``||y - f|| / ||f||`` on 10,000 random indices drawn independently of
every method (seed 12345), from the final cores. *Rank* is the largest TT rank of the returned train
(peers' results truncated with their own rounding at eps, inside the timing; tensornet rounds itself).

Peers run adaptively, with their own stopping rules (no one is told the rank or the budget that works):
teneva ``cross`` from ``rand(n, r0)`` stopped by its relative change ``e`` or by its validation error
``e_vld`` on ``n_vld`` random indices (counted), then ``truncate(eps)``; torchTT
``interpolate.dmrg_cross(eps, kick)``; tntorch ``cross(eps, kickrank, val_size)`` then ``round_tt(eps)``.
Their free settings are tuned per case (``--tune``: a grid; the fewest evaluations whose result meets eps
on the test indices, ties to the faster), as the settings in ``TUNED`` record. One more row,
"teneva oracle", is *not* a usable configuration: a fixed rank r0 (dr_max = 0) with the evaluation budget
``m`` set to the smallest multiple of 250 that happens to meet eps, known only by trying -- shown for what
the underlying sweeps cost when the answer is known in advance.

Times are medians over ``--repeats`` interleaved rounds (every method once per round, after a warm-up),
so load from other jobs on a shared machine hits all alike (``--clock cpu`` times this process's CPU time
instead of the wall clock); one BLAS/torch thread each (the matrices are
at most ~100 x 20, where threads only add overhead). After each case, tensornet is compared with the
fastest peer and with the peer of fewest evaluations among those meeting eps (time ratio, evaluations,
error).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import _harness as H  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import tensornet as tn  # noqa: E402

warnings.filterwarnings("ignore")  # peers warn on import (torchTT's missing C++ extension) and while running
TEST_POINTS = 10_000
PEERS = ("teneva", "torchTT", "tntorch")
CLOCK = "wall"  # --clock cpu: this process's CPU time (less sensitive to other jobs)


# --- cases ---------------------------------------------------------------------------------------------
def inverse_sum(index: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + (index / 9.0).sum(axis=1))


def sine_of_sum(index: np.ndarray) -> np.ndarray:
    return np.sin((index / 3.0).sum(axis=1))


BITS = 2.0 ** np.arange(29, -1, -1)


def qtt_function(index: np.ndarray) -> np.ndarray:
    t = (index @ BITS) / (2.0**30 - 1)
    return np.sqrt(t) * np.sin(20.0 * t)


@dataclass(frozen=True)
class Case:
    title: str
    f: Callable[[np.ndarray], np.ndarray]
    shape: tuple[int, ...]
    eps: float


CASES = [
    Case("1/(1+x1+..+x6), 10^6 grid, eps 1e-6", inverse_sum, (10,) * 6, 1e-6),
    Case("sin(x1+..+x20), 4^20 grid, eps 1e-8", sine_of_sum, (4,) * 20, 1e-8),
    Case("sqrt(t) sin(20t), QTT 2^30, eps 1e-6", qtt_function, (2,) * 30, 1e-6),
]

# The peers' settings found by --tune on the machine of benchmarks/results/cross.md (per case, in the
# order of CASES). teneva: (r0, dr_max, stop, cache) with stop ("e", value) or ("vld", n_vld) -- "teneva" has
# the fewest evaluations meeting eps, "teneva fastest" the shortest time meeting eps (its cache of values
# saves evaluations but costs time); torchTT: (kick, eps passed); tntorch: (kickrank, val_size);
# teneva oracle: (r0, m).
TUNED: dict[str, list[Any]] = {
    "teneva": [(1, 1, ("vld", 100), True), (2, 2, ("vld", 100), True), (3, 1, ("vld", 100), True)],
    "teneva fastest": [(3, 1, ("vld", 100), False), (2, 2, ("vld", 100), False), (1, 2, ("vld", 100), False)],
    "torchTT": [(0, 1e-6), (0, 1e-9), (0, 1e-6)],
    "tntorch": [(3, 100), (1, 100), (3, 100)],
    "teneva oracle": [(7, 3500), (2, 500), (7, 2500)],
}


class Counted:
    """The case function behind a counter of the indices it is asked for."""

    def __init__(
        self, f: Callable[[np.ndarray], np.ndarray], convert: Callable[[Any], np.ndarray] | None = None
    ):
        self.f, self.convert, self.evals = f, convert, 0

    def __call__(self, index: Any) -> Any:
        rows = self.convert(index) if self.convert else index
        self.evals += len(rows)
        values = self.f(rows)
        return torch.from_numpy(values) if self.convert else values


def torch_index(index: Any) -> np.ndarray:
    return index.detach().cpu().numpy().astype(np.int64)


# --- methods: each returns (numpy cores, evaluations) --------------------------------------------------------
def run_tensornet(case: Case, seed: int = 0) -> tuple[list[np.ndarray], int]:
    f = Counted(case.f)
    t = tn.cross(f, case.shape, eps=case.eps, seed=seed)
    return [np.asarray(c) for c in t.cores], f.evals


def seeds_row(case: Case, seeds: int) -> str:
    """tensornet over seeds 0..seeds-1 (one run each): how much the random choices matter."""
    runs = {seed: (lambda seed=seed: run_tensornet(case, seed)) for seed in range(seeds)}
    measured = H.time_interleaved(runs, rounds=1, min_rounds=1, warmup=0)  # type: ignore[arg-type]
    times = list(measured.median(CLOCK).values())
    evals = [measured.results[seed][1] for seed in runs]
    errors = [test_error(case, measured.results[seed][0]) for seed in runs]
    return (
        f"| {case.title} | tensornet, seeds 0-{seeds - 1} | median (max) | {np.median(times) * 1e3:.1f} "
        f"({max(times) * 1e3:.1f}) | | {int(np.median(evals)):,} ({max(evals):,}) | "
        f"{np.median(errors):.2e} ({max(errors):.2e}) | |"
    )


def run_teneva(
    case: Case, r0: int, dr_max: int, stop: tuple[str, float], cache: bool
) -> tuple[list[np.ndarray], int]:
    import teneva

    f = Counted(case.f)
    options: dict[str, Any] = {"nswp": 50, "dr_max": dr_max, "cache": {} if cache else None}
    if stop[0] == "e":
        options["e"] = stop[1]
    else:
        rng = np.random.default_rng(1)
        index = np.stack([rng.integers(0, n, int(stop[1])) for n in case.shape], axis=1)
        options.update(I_vld=index, y_vld=f(index), e_vld=case.eps)
    y = teneva.cross(f, teneva.rand(list(case.shape), r0, seed=0), **options)
    return H.host_cores(teneva.truncate(y, case.eps), np.float64), f.evals


def run_teneva_oracle(case: Case, r0: int, budget: int) -> tuple[list[np.ndarray], int]:
    import teneva

    f = Counted(case.f)
    y = teneva.cross(f, teneva.rand(list(case.shape), r0, seed=0), m=budget, dr_max=0)
    return H.host_cores(teneva.truncate(y, case.eps), np.float64), f.evals


def run_torchtt(case: Case, kick: int, eps: float) -> tuple[list[np.ndarray], int]:
    import torchtt

    torch.manual_seed(0)
    f = Counted(case.f, convert=torch_index)
    x = torchtt.interpolate.dmrg_cross(f, list(case.shape), eps=eps, nswp=20, kick=kick)
    return H.host_cores(x, np.float64), f.evals


def run_tntorch(case: Case, kickrank: int, val_size: int) -> tuple[list[np.ndarray], int]:
    import tntorch

    np.random.seed(0)  # tntorch draws its index sets from numpy's global generator
    torch.manual_seed(0)
    f = Counted(case.f, convert=torch_index)
    domain = [torch.arange(n, dtype=torch.float64) for n in case.shape]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a hint about an optional package
        t = tntorch.cross(
            function=f, domain=domain, function_arg="matrix", eps=case.eps, kickrank=kickrank,
            val_size=val_size, max_iter=50, verbose=False, suppress_warnings=True,
        )  # fmt: skip
        t.round_tt(case.eps)
    return H.host_cores(t, np.float64), f.evals


# --- measuring -----------------------------------------------------------------------------------------------
def test_error(case: Case, cores: list[np.ndarray]) -> float:
    rng = np.random.default_rng(12345)
    index = np.stack([rng.integers(0, n, TEST_POINTS) for n in case.shape], axis=1)
    exact = case.f(index)
    approx = np.asarray(tn.gather(tn.TT([np.asarray(c, dtype=np.float64) for c in cores]), index))
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


def methods_for(case: Case, index: int, found: dict[str, bool]) -> dict[str, tuple[str, Callable[[], Any]]]:
    """name -> (settings shown, call)."""
    methods: dict[str, tuple[str, Callable[[], Any]]] = {
        "tensornet": ("defaults (seed 0)", lambda: run_tensornet(case)),
    }
    for name in ("teneva", "teneva fastest") if found.get("teneva") else ():
        r0, dr, stop, cache = TUNED[name][index]
        shown = f"r0={r0} dr_max={dr} {'e' if stop[0] == 'e' else 'n_vld'}={stop[1]:g} cache={cache}"
        methods[name] = (
            shown,
            lambda r0=r0, dr=dr, stop=stop, cache=cache: run_teneva(case, r0, dr, stop, cache),
        )
    if found.get("torchtt"):
        kick, eps = TUNED["torchTT"][index]
        methods["torchTT"] = (f"kick={kick} eps={eps:g}", lambda: run_torchtt(case, kick, eps))
    if found.get("tntorch"):
        kickrank, val = TUNED["tntorch"][index]
        methods["tntorch"] = (f"kickrank={kickrank} val_size={val}", lambda: run_tntorch(case, kickrank, val))
    if found.get("teneva"):
        r0, budget = TUNED["teneva oracle"][index]
        methods["teneva oracle"] = (
            f"r0={r0} dr_max=0 m={budget}",
            lambda: run_teneva_oracle(case, r0, budget),
        )
    return methods


def run_case(case: Case, index: int, found: dict[str, bool], repeats: int, lines: list[str]) -> None:
    methods = methods_for(case, index, found)
    measured = H.time_interleaved(
        {name: call for name, (_, call) in methods.items()}, rounds=repeats, min_rounds=repeats
    )
    results, failures = measured.results, measured.failures
    times = measured.median(CLOCK)
    rows = {}
    for name, (cores, evals) in results.items():
        rows[name] = (
            times[name],
            evals,
            test_error(case, cores),
            max(c.shape[2] for c in cores),
        )
    adaptive = {k: v for k, v in rows.items() if k not in ("tensornet", "teneva oracle") and v[2] <= case.eps}
    mine = rows.get("tensornet")
    for name, (median, evals, error, rank) in rows.items():
        ratio = f"{mine[0] / median:.2f}" if mine and name != "tensornet" else ""
        lines.append(
            f"| {case.title} | {name} | {methods[name][0]} | {median * 1e3:.1f} | {ratio} | {evals:,} | "
            f"{error:.2e}{'' if error <= case.eps else ' (> eps)'} | {rank} |"
        )
    for name, message in failures.items():
        lines.append(f"| {case.title} | {name} | failed: {message} | | | | | |")
    verdicts = 0
    if mine and adaptive:
        fastest = min(adaptive, key=lambda k: adaptive[k][0])
        fewest = min(adaptive, key=lambda k: (adaptive[k][1], adaptive[k][0]))
        for label, peer_name in (("fastest", fastest), ("fewest evaluations", fewest)):
            peer = rows[peer_name]
            checks = [
                f"time {mine[0] / peer[0]:.2f}x",
                f"evaluations {mine[1]:,} vs {peer[1]:,}",
                f"error {mine[2]:.1e} vs {peer[2]:.1e}",
            ]
            lines.append(
                f"| | **tensornet vs the {label} peer meeting eps: {peer_name}** | {'; '.join(checks)} | | | | | |"
            )
            verdicts += 1
    lines.append(seeds_row(case, 10))
    for line in lines[-(len(rows) + len(failures) + verdicts + 1) :]:
        print(line, flush=True)


# --- tuning -------------------------------------------------------------------------------------------------
def tune(found: dict[str, bool], only: str | None = None) -> None:
    """Grid search of each peer's free settings: fewest evaluations meeting eps, ties to the faster (and
    for teneva also the fastest meeting eps); a time is the shortest of 3 runs."""
    grids: dict[str, tuple[list[Any], Callable[..., Any]]] = {
        "teneva": (
            [
                (r0, dr, stop, cache)
                for r0, dr in itertools.product((1, 2, 3), (1, 2))
                for stop in (("e", 1.0), ("e", 0.1), ("vld", 100), ("vld", 1000))
                for cache in (False, True)
            ],
            lambda case, r0, dr, stop, cache: run_teneva(
                case, r0, dr, (stop[0], stop[1] * case.eps) if stop[0] == "e" else stop, cache
            ),
        ),
        "torchTT": (
            [(kick, scale) for kick in (0, 1, 2) for scale in (1.0, 0.1)],
            lambda case, kick, scale: run_torchtt(case, kick, scale * case.eps),
        ),
        "tntorch": (
            [(kick, val) for kick in (1, 2, 3) for val in (100, 1000)],
            lambda case, kick, val: run_tntorch(case, kick, val),
        ),
        "teneva oracle": (
            [(r0, m) for r0 in (2, 3, 5, 7, 9) for m in range(250, 8001, 250)],
            lambda case, r0, m: run_teneva_oracle(case, r0, m),
        ),
    }
    for name, (grid, call) in grids.items():
        if not found.get(name.split()[0].lower()) or (only and only != name):
            continue
        for case in CASES:
            best: tuple[int, float, Any] | None = None
            fastest: tuple[int, float, Any] | None = None
            for settings in grid:
                run = H.time_interleaved(
                    {"run": lambda s=settings, c=call, k=case: c(k, *s)}, rounds=3, warmup=0
                )
                if run.failures:
                    continue
                cores, evals = run.results["run"]
                elapsed = run.timings["run"].best
                if test_error(case, cores) > case.eps:
                    continue
                if best is None or (evals, elapsed) < best[:2]:
                    best = (evals, elapsed, settings)
                if fastest is None or elapsed < fastest[1]:
                    fastest = (evals, elapsed, settings)
            print(f"{name:14s} {case.title:40s} fewest evaluations {best}", flush=True)
            if name == "teneva":
                print(f"{'teneva fastest':14s} {case.title:40s} shortest time {fastest}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="also write the report (markdown) here")
    parser.add_argument("--tune", action="store_true", help="grid-search the peers' settings instead")
    parser.add_argument("--tune-only", default=None, help="with --tune: only this peer (e.g. teneva)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall-clock or CPU time")
    args = parser.parse_args()
    global CLOCK
    CLOCK = args.clock
    torch.set_num_threads(1)
    found = {}
    for module in ("teneva", "torchtt", "tntorch"):
        try:
            __import__(module)
            found[module] = True
        except Exception as err:
            print(f"# {module} unavailable: {err}")
    if args.tune:
        tune(found, args.tune_only)
        return
    lines = [
        "| case | method | settings | median ms | tensornet / this | evaluations | error (10k test indices) | max rank |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines))
    start = time.perf_counter()
    for index, case in enumerate(CASES):
        run_case(case, index, found, args.repeats, lines)
    footer = [
        f"- clock: {args.clock}; total benchmark time {time.perf_counter() - start:.0f} s",
        *H.machine(peers=PEERS),
    ]
    print("\n".join(footer))
    H.write_report(args.out, [*lines, "", *footer])


if __name__ == "__main__":
    main()
