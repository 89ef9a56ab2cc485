"""Probe: the starts and first stages tried on case b of bench_complete.py, each measured the same way.

Run:  python benchmarks/probe_complete_b.py [--seeds 100,101,102] [--samples 20000] [--modes 8]
      [--sweeps 40] [--attempts all] [--out benchmarks/results/complete_b_probe.md]

Case b: a random rank-3 TT on 10^8 (``tn.random_tt``, seed 1) from the benchmark's 20,000 samples and its 4,000
test entries (seeds 10 and 11); ``--samples`` draws more from the same generator, ``--modes`` changes the number
of modes of 10 (the train is still ``random_tt``'s of rank 3 and seed 1), ``--sweeps`` the sweeps of the random
starts. The first 90% of the samples are fitted. Every attempt works at fixed ranks with the sweeps of
``tn.complete`` (``tensornet.learn._als``: proximal ALS, the same kernel), so what differs is only the start
or the first stage:

* ``truth + noise``: the control -- the true cores plus Gaussian noise of the same norm on every core;
* ``random, rank r``: a random train of the target rank (3) or one above (4), no rank growth;
* ``relative weights``: a first stage weighted ``1 / (y^2 + median y^2)`` (relative errors: the largest
  entries stop dominating), then plain sweeps (the least-squares fixed point);
* ``capped weights``: a first stage where entries above the 90% quantile of ``|y|`` weigh as that quantile;
* ``coarse 100^4``: the modes merged in pairs (4 modes of 100, rank 3), swept, then each merged core split
  by a rank-3 SVD to start the 8-mode sweeps (continuation in the number of modes);
* ``spectral``: the TT-SVD of the zero-filled sampled tensor, computed on the samples (each unfolding's Gram
  matrix from the samples sharing its column), with or without each sample's own (diagonal) contribution;
* ``two-site``: DMRG-style sweeps solving each merged pair of cores and splitting it at rank 3;
* ``adam``: no ALS -- a train of rank 8 (over-parameterised) from a small random start (entries 0.1 times
  Gaussian), fitted by full-batch Adam (torch, learning rate 5e-3, 3,000 steps) on the mean squared error:
  the implicit low-rank bias of small starts (Razin, Maman & Cohen, ICML 2022, for hierarchical tensor
  factorisations) in place of a rank search;
* ``complete``: ``tn.complete`` itself with its defaults (ranks by held-back error, restarts) on the fitted
  samples -- for the sample counts at which the whole method recovers the train.

The spectral start draws nothing at random: it runs once, on the first seed. ``--attempts`` takes a comma list
of the keys of ``ATTEMPTS`` (e.g. ``random3``).

One BLAS thread; times are wall clock on a shared machine.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import _harness as H  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sparse  # noqa: E402

import tensornet as tn  # noqa: E402
from tensornet.learn import _als  # noqa: E402

Cores = list[np.ndarray]


class Problem:
    """Case b's samples (scaled to max |y| = 1), the fitting subset and the test entries."""

    def __init__(self, samples: int, modes: int, budget: int = 40) -> None:
        self.budget = budget  # sweeps of the random starts
        self.shape = (10,) * modes
        self.truth = tn.random_tt(self.shape, 3, seed=1)
        index = _indices(self.shape, samples, 10)
        values = np.asarray(tn.gather(self.truth, index))
        self.scale = float(np.abs(values).max())
        self.fit = samples * 9 // 10
        self.index, self.values = index[: self.fit], values[: self.fit] / self.scale
        self.test = _indices(self.shape, 4000, 11)
        self.exact = np.asarray(tn.gather(self.truth, self.test))
        self.samples = _als.make_samples(self.index, self.values, None, self.shape)

    def test_error(self, cores: Cores) -> float:
        predicted = self.scale * np.asarray(_als.evaluate(cores, self.test))
        return float(np.linalg.norm(predicted - self.exact) / np.linalg.norm(self.exact))

    def sweeps(self, cores: Cores, count: int, weights: np.ndarray | None = None) -> tuple[Cores, float]:
        """``count`` ALS sweeps (weighted if given); the cores and the relative fitting error (unweighted)."""
        samples = (
            self.samples
            if weights is None
            else _als.make_samples(self.index, self.values, weights, self.shape)
        )
        cores = _als.orthogonalize_right(cores)
        rights = _als.right_interfaces(cores, samples)
        for _ in range(count):
            cores, rights, _ = _als.sweep(cores, rights, samples)
        predicted = np.asarray(_als.evaluate(cores, self.samples.index))
        return cores, float(np.linalg.norm(predicted - self.values) / np.linalg.norm(self.values))


def _indices(shape: tuple[int, ...], count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)  # as bench_complete.indices
    return np.stack([rng.integers(0, n, count) for n in shape], axis=1)


def _random(rng: np.random.Generator, shape: tuple[int, ...], rank: int) -> Cores:
    bonds = [1] + [rank] * (len(shape) - 1) + [1]
    return [rng.standard_normal((bonds[k], n, bonds[k + 1])) / np.sqrt(bonds[k]) for k, n in enumerate(shape)]


# --- the attempts: each takes the problem and a seed, returns (cores, note) ------------------------------
def truth_noise(p: Problem, rng: np.random.Generator) -> tuple[Cores, str]:
    cores = [np.asarray(c) for c in p.truth.cores]
    noisy = [c + np.linalg.norm(c) / np.sqrt(c.size) * rng.standard_normal(c.shape) for c in cores]
    noisy[0] = noisy[0] / p.scale
    return p.sweeps(noisy, 40)[0], "40 sweeps"


def random_rank(rank: int) -> Callable[[Problem, np.random.Generator], tuple[Cores, str]]:
    def attempt(p: Problem, rng: np.random.Generator) -> tuple[Cores, str]:
        cores, fitted = p.sweeps(_random(rng, p.shape, rank), p.budget)
        return cores, f"{p.budget} sweeps, fitting error {fitted:.2g}"

    return attempt


def weighted(kind: str) -> Callable[[Problem, np.random.Generator], tuple[Cores, str]]:
    def attempt(p: Problem, rng: np.random.Generator) -> tuple[Cores, str]:
        y2 = p.values**2
        relative = kind == "relative"
        w = 1.0 / (y2 + np.median(y2)) if relative else np.minimum(1.0, np.quantile(y2, 0.9) / y2)
        cores, _ = p.sweeps(_random(rng, p.shape, 3), 30, w)
        first = p.test_error(cores)
        return p.sweeps(cores, 20)[0], f"30 weighted sweeps (test {first:.2g}), 20 plain"

    return attempt


def coarse(p: Problem, rng: np.random.Generator) -> tuple[Cores, str]:
    half = len(p.shape) // 2  # modes 2j and 2j+1 merged (an odd last mode is left out: use even --modes)
    merged = p.index[:, 0 : 2 * half : 2] * 10 + p.index[:, 1 : 2 * half : 2]
    samples = _als.make_samples(merged, p.values, None, (100,) * half)
    cores = _als.orthogonalize_right(_random(rng, (100,) * half, 3))
    rights = _als.right_interfaces(cores, samples)
    for _ in range(40):
        cores, rights, _ = _als.sweep(cores, rights, samples)
    test = p.test[:, 0 : 2 * half : 2] * 10 + p.test[:, 1 : 2 * half : 2]
    coarse_error = np.linalg.norm(p.scale * np.asarray(_als.evaluate(cores, test)) - p.exact)
    split: Cores = []
    for core in cores:  # (a, 100, b) -> (a, 10, r) (r, 10, b) by a truncated SVD
        a, _, b = core.shape
        u, s, vt = np.linalg.svd(core.reshape(a * 10, 10 * b), full_matrices=False)
        split += [u[:, :3].reshape(a, 10, -1), (s[:3, None] * vt[:3]).reshape(-1, 10, b)]
    note = f"coarse: 40 sweeps (test {coarse_error / np.linalg.norm(p.exact):.2g}); split, 20 sweeps"
    return p.sweeps(split, 20)[0], note


def spectral(diagonal: bool) -> Callable[[Problem, np.random.Generator], tuple[Cores, str]]:
    def attempt(p: Problem, rng: np.random.Generator) -> tuple[Cores, str]:
        cores = _sampled_tt_svd(p.index, p.values, p.shape, 3, diagonal)
        start = p.test_error(cores)
        return p.sweeps(cores, 20)[0], f"start test {start:.2g}; 20 sweeps"

    return attempt


def _sampled_tt_svd(
    index: np.ndarray, values: np.ndarray, shape: tuple[int, ...], rank: int, diagonal: bool
) -> Cores:
    """TT-SVD of the zero-filled tensor, on the samples: each sample carries its projected row vector."""
    m, d = index.shape
    carried, cores, before = values[:, None], [], 1
    for k in range(d - 1):
        code = np.zeros(m, dtype=np.int64)
        for mode in range(k + 1, d):
            code = code * shape[mode] + index[:, mode]
        _, column = np.unique(code, return_inverse=True)
        rows = np.arange(before)[None, :] * shape[k] + index[:, k][:, None]  # row (alpha, i_k)
        unfolding = sparse.csr_matrix(
            (carried.ravel(), (rows.ravel(), np.repeat(column, before))), shape=(before * shape[k], m)
        )
        gram = (unfolding @ unfolding.T).toarray()
        if not diagonal:  # drop every sample's product with itself (the zero-filled Gram's bias)
            own = np.einsum("ma,mb->mab", carried, carried)
            for a in range(before):
                for b in range(before):
                    np.add.at(gram, (rows[:, a], rows[:, b]), -own[:, a, b])
        w, u = np.linalg.eigh(gram)
        core = u[:, np.argsort(-np.abs(w))[:rank]].reshape(before, shape[k], -1)
        cores.append(core)
        carried = np.einsum("ma,amb->mb", carried, core[:, index[:, k], :])
        before = core.shape[2]
    last = np.zeros((before, shape[-1], 1))
    for a in range(before):
        np.add.at(last[a, :, 0], index[:, -1], carried[:, a])
    return [*cores, last]


def two_site(p: Problem, rng: np.random.Generator) -> tuple[Cores, str]:
    shape = p.shape
    d = len(shape)
    pairs = []
    for k in range(d - 1):
        rows = np.concatenate([p.index[:, :k], (p.index[:, k] * 10 + p.index[:, k + 1])[:, None],
                               p.index[:, k + 2:]], axis=1)  # fmt: skip
        pairs.append(_als.make_samples(rows, p.values, None, (*shape[:k], 100, *shape[k + 2 :])))
    cores = _random(rng, shape, 3)
    ones = np.ones((p.fit, 1))
    for _ in range(15):
        cores = _als.orthogonalize_right(cores)
        rights = _als.right_interfaces(cores, p.samples)
        lefts = [ones] * d
        for k in range(d - 1):  # left to right; the pair solved, split left-orthogonal at rank 3
            pair = np.einsum("anb,bmc->anmc", cores[k], cores[k + 1]).reshape(cores[k].shape[0], 100, -1)
            pair = _als.solve_core(lefts[k], rights[k + 1], pairs[k], k, _als.RIDGE, pair)
            a, _, b = pair.shape
            u, s, vt = np.linalg.svd(pair.reshape(a * 10, 10 * b), full_matrices=False)
            cores[k], cores[k + 1] = u[:, :3].reshape(a, 10, -1), (s[:3, None] * vt[:3]).reshape(-1, 10, b)
            lefts[k + 1] = _als.interface_step(lefts[k], cores[k], p.samples.index[:, k], left=True)
    return cores, "15 left-to-right two-site sweeps"


def adam(p: Problem, rng: np.random.Generator) -> tuple[Cores, str]:
    import torch

    torch.manual_seed(int(rng.integers(2**31)))
    bonds = [1] + [8] * (len(p.shape) - 1) + [1]
    cores = [(0.1 * torch.randn(bonds[k], n, bonds[k + 1], dtype=torch.float64)).requires_grad_()
             for k, n in enumerate(p.shape)]  # fmt: skip
    index, y = torch.as_tensor(p.index), torch.as_tensor(p.values / np.sqrt(np.mean(p.values**2)))
    optimizer = torch.optim.Adam(cores, lr=5e-3)
    for _ in range(3000):
        optimizer.zero_grad()
        carry = cores[0][0][index[:, 0]]
        for k in range(1, len(cores)):
            carry = torch.einsum("ma,amb->mb", carry, cores[k][:, index[:, k], :])
        loss = ((carry[:, 0] - y) ** 2).mean()
        loss.backward()
        optimizer.step()
    found = [c.detach().numpy() for c in cores]
    found[0] = found[0] * np.sqrt(np.mean(p.values**2))
    return found, f"3000 Adam steps at rank 8, fitting error {float(loss.detach()) ** 0.5:.2g}"


def complete(p: Problem, rng: np.random.Generator) -> tuple[Cores, str]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t, info = tn.complete(p.index, p.values, p.shape, seed=int(rng.integers(2**31)), return_info=True)
    note = f"ranks {t.ranks[1:-1]}, held-back error {info.validation_error:.2g}, {len(info.steps)} sweeps"
    return [np.asarray(c) for c in t.cores], note


ATTEMPTS = {  # key: (what the table calls it, the attempt, whether it draws at random)
    "noise": ("truth + noise of its size", truth_noise, True),
    "random3": ("random, rank 3 (the target)", random_rank(3), True),
    "random4": ("random, rank 4", random_rank(4), True),
    "relative": ("relative weights, then plain", weighted("relative"), True),
    "capped": ("capped weights, then plain", weighted("capped"), True),
    "coarse": ("coarse 100^4, then split", coarse, True),
    "spectral": ("spectral (sampled TT-SVD)", spectral(True), False),
    "spectral0": ("spectral, own products dropped", spectral(False), False),
    "twosite": ("two-site (DMRG) sweeps", two_site, True),
    "adam": ("Adam at rank 8 from a small start", adam, True),
    "complete": ("tn.complete (defaults)", complete, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="100,101,102")
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--modes", type=int, default=8)
    parser.add_argument("--sweeps", type=int, default=40, help="sweeps of the random starts")
    parser.add_argument("--attempts", default="all")
    parser.add_argument("--out", default=str(H.RESULTS / "complete_b_probe.md"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    keys = list(ATTEMPTS) if args.attempts == "all" else args.attempts.split(",")
    problem = Problem(args.samples, args.modes, args.sweeps)
    rows = []
    for key in keys:
        name, attempt, random = ATTEMPTS[key]
        for seed in seeds if random else seeds[:1]:
            start = time.perf_counter()
            cores, note = attempt(problem, np.random.default_rng(seed))
            seconds = time.perf_counter() - start
            rows.append(
                [
                    name,
                    str(seed) if random else "-",
                    f"{seconds:.1f}",
                    f"{problem.test_error(cores):.2e}",
                    note,
                ]
            )
            print(rows[-1], flush=True)
    header = ["attempt", "seed", "seconds", "test error", "notes"]
    lines = [
        f"# Case b of bench_complete.py ({args.modes} modes, {args.samples:,} samples): starts probed",
        "",
    ]
    lines += [*H.markdown_table(header, rows, right=(1, 2, 3)), "", "Machine and run:", "", *H.machine()]
    H.write_report(args.out, lines)


if __name__ == "__main__":
    main()
