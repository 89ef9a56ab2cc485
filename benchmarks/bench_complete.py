"""Benchmark: tn.complete against teneva's ALS and a torchTT Riemannian descent on the same samples, in one run.

Run:  python benchmarks/bench_complete.py [--out benchmarks/results/complete.md] [--cases a,b,c,d,e]

Cases (float64; x_k = i_k / (n - 1)):

* a -- a random TT of ranks (4, 5, 3) on 20^4 (``tn.random_tt``, seed 1) from 10,000 samples;
* b -- a random rank-3 TT on 10^8 (seed 1) from 20,000 samples (33x the degrees of freedom);
* c -- ``1 / (1 + x_1 + .. + x_6)`` on 10^6 from 5,000 samples (peers told rank 6);
* d -- ``sin(x_1 + .. + x_10)`` on 10^10 from 4,000 samples (TT rank 2; peers told 2);
* e -- a random rank-3 TT on 10^6 (seed 2) from 15,000 samples (case b with six modes instead of eight).

Samples and 4,000 test entries are uniform random multi-indices (seeds 10 and 11, the same for every method).
*Test error* is ``||y - t|| / ||t||`` on the test entries. Methods:

* tensornet: ``tn.complete(I, y, shape, seed=0)``, told nothing (ranks chosen on 10% held-back samples);
* teneva ``als(I, y, rand(n, r), nswp=50)`` told the true rank (its defaults otherwise: ridge ``lamb=1e-3``),
  the configuration the issue measured;
* torchTT: Riemannian gradient descent on ``0.5 ||P_Omega(t) - y||^2`` at the true rank from a random start,
  with ``torchtt.manifold.riemannian_gradient`` (autograd through the sampled loss), the exact step size of
  the quadratic along the gradient, and ``round(rmax=r)`` as the retraction; at most 300 steps or 60 s.

Each method runs once per case (the runs take seconds; the order is fixed: tensornet, teneva, torchTT), one
BLAS/torch thread. Times are wall clock on a shared 2-core machine: the load is recorded below the table.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import _harness as H  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import tensornet as tn  # noqa: E402

warnings.filterwarnings(
    "ignore"
)  # peers warn on import; tensornet's ConvergenceWarning is reported in the table
TEST_POINTS = 4000
PEERS = ("teneva", "torchTT")


@dataclass
class Case:
    name: str
    shape: tuple[int, ...]
    samples: int
    ranks: tuple[int, ...]  # the true (or the peers') bond ranks
    f: Callable[[np.ndarray], np.ndarray]


def _train(shape: tuple[int, ...], rank: Any, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    truth = tn.random_tt(shape, rank, seed=seed)
    return lambda index: np.asarray(tn.gather(truth, index))


def cases() -> dict[str, Case]:
    def inverse_sum(i: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + (i / 9.0).sum(axis=1))

    def sine_of_sum(i: np.ndarray) -> np.ndarray:
        return np.sin((i / 9.0).sum(axis=1))

    return {
        "a": Case("random TT ranks (4,5,3) on 20^4, 10k samples", (20,) * 4, 10_000, (4, 5, 3),
                  _train((20,) * 4, (4, 5, 3), 1)),
        "b": Case("random rank-3 TT on 10^8, 20k samples", (10,) * 8, 20_000, (3,) * 7, _train((10,) * 8, 3, 1)),
        "c": Case("1/(1+sum x) on 10^6, 5k samples", (10,) * 6, 5_000, (6,) * 5, inverse_sum),
        "d": Case("sin(sum x) on 10^10, 4k samples", (10,) * 10, 4_000, (2,) * 9, sine_of_sum),
        "e": Case("random rank-3 TT on 10^6, 15k samples", (10,) * 6, 15_000, (3,) * 5, _train((10,) * 6, 3, 2)),
    }  # fmt: skip


def indices(shape: tuple[int, ...], count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, count) for n in shape], axis=1)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# --- methods: each returns a function of test indices -> values, and the ranks ---------------------------
def run_tensornet(case: Case, index: np.ndarray, values: np.ndarray) -> tuple[Any, tuple[int, ...], str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t, info = tn.complete(index, values, case.shape, seed=0, return_info=True)
    note = f"stop: {info.stop}, {len(info.steps)} sweeps" + ("; warned" if caught else "")
    return (lambda i: np.asarray(tn.gather(t, i))), t.ranks, note


def run_teneva(case: Case, index: np.ndarray, values: np.ndarray) -> tuple[Any, tuple[int, ...], str]:
    import teneva

    start = teneva.rand(list(case.shape), [1, *case.ranks, 1], seed=0)
    cores = teneva.als(index, values, start, nswp=50)
    return (lambda i: teneva.get_many(cores, i)), tuple([1, *(c.shape[2] for c in cores)]), "told the rank"


def _sampled(cores: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
    carry = cores[0][0][index[:, 0]]
    for k in range(1, len(cores)):
        carry = torch.einsum("ma,amb->mb", carry, cores[k][:, index[:, k], :])
    return carry[:, 0]


def run_torchtt(case: Case, index: np.ndarray, values: np.ndarray) -> tuple[Any, tuple[int, ...], str]:
    import torchtt

    index_t, y = torch.tensor(index), torch.tensor(values)
    ranks = [1, *case.ranks, 1]
    x = torchtt.randn(list(case.shape), ranks, dtype=torch.float64)
    start, steps = time.perf_counter(), 0
    for steps in range(1, 301):  # noqa: B007
        grad = torchtt.manifold.riemannian_gradient(
            x, lambda t: 0.5 * ((_sampled(t.cores, index_t) - y) ** 2).sum()
        )
        with torch.no_grad():
            residual = _sampled(x.cores, index_t) - y
            direction = _sampled(grad.cores, index_t)
            step = float((direction @ residual) / (direction @ direction))
            x = (x - step * grad).round(1e-14, ranks)
        if time.perf_counter() - start > 60:
            break
    found = H.as_train(x).to("numpy")  # tensornet.interop.from_torchtt, outside the timed descent
    return (lambda i: tn.gather(found, i)), tuple(x.R), f"{steps} steps, told the rank"


METHODS = {"tensornet": run_tensornet, "teneva": run_teneva, "torchTT": run_torchtt}


def measure(case: Case) -> list[list[Any]]:
    index = indices(case.shape, case.samples, 10)
    values = case.f(index)
    test = indices(case.shape, TEST_POINTS, 11)
    exact = case.f(test)
    rows = []
    for name, method in METHODS.items():
        start = time.perf_counter()
        try:
            predict, ranks, note = method(case, index, values)
            seconds = time.perf_counter() - start
            error = relative(predict(test), exact)
            rows.append([name, f"{seconds:.2f}", f"{error:.2e}", "yes" if error <= 1e-4 else "no",
                         str(tuple(ranks[1:-1])), note])  # fmt: skip
        except Exception as failure:  # a broken peer is reported, not fatal
            rows.append([name, "-", "-", "-", "-", H.short_error(failure)])
        print(case.name, rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(H.RESULTS / "complete.md"))
    parser.add_argument("--cases", default="a,b,c,d,e")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = cases()
    lines = ["# TT completion: tensornet against teneva ALS and a torchTT Riemannian descent", ""]
    header = ["method", "seconds", "test error", "<= 1e-4", "bond ranks", "notes"]
    for key in args.cases.split(","):
        case = chosen[key]
        lines += [f"## {key}: {case.name}", "", *H.markdown_table(header, measure(case), right=(1, 2)), ""]
    lines += ["Machine and run:", "", *H.machine(peers=("teneva", "torchTT"))]
    H.write_report(args.out, lines)


if __name__ == "__main__":
    main()
