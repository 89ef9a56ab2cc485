"""Benchmark: tensornet.linalg (solve, eigsh) against torchTT's amen_solve and quimb's DMRG, side by side in one run.

Run:  python benchmarks/bench_solvers.py [--repeats 3] [--slow] [--out benchmarks/results/solvers.md]

Cases (float64, one BLAS/torch/numba thread):

* ``-L x = 1`` with L the Dirichlet Laplacian ``tridiag(1, -2, 1)`` Kronecker sum (unscaled), relative residual
  1e-8: on ``32^8`` and ``16^20`` points (tensornet ``solve`` vs torchTT ``amen_solve``);
* the 1-D Poisson problem ``-u'' = 1`` on 2^20 points in QTT (h-scaled; exact solution ``x(1 - x)/2`` at the
  points): torchTT ``amen_solve`` at eps 1e-10 (and 1e-8 with ``--slow``: ~3 minutes), tensornet ``solve`` (which
  stops at its floor and warns) and the closed-form QTT inverse ``laplacian_inverse`` applied by
  ``tn.matvec(eps=1e-13)``; the error is the largest ``|u - x(1-x)/2|`` over 20,000 random grid points (relative
  to ``max u = 1/8``);
* the ground energy of the open Heisenberg chain (S = 1/2, J = 1), L = 32: quimb ``DMRG2`` (bond dims
  8..128, cutoff 1e-12, tol 1e-10; after its numba warm-up) vs tensornet ``eigsh(tol=1e-10)``; reference
  -13.997315618144 (quimb converged; exact diagonalisation gives -6.911737145574 for L = 16);
* the lowest eigenvalue of ``-L`` on ``32^8`` points, ``8 * 4 sin^2(pi / 66)`` in closed form: quimb ``DMRG2`` and
  ``DMRG1`` on the same MPO (with their default local tolerance, and with ``local_eig_tol=1e-12``, which they need to
  get it right) vs tensornet ``eigsh(tol=1e-13)`` (its tol is relative to the RMS eigenvalue ~16, so 1e-13
  asks for ~2e-12 on 0.072).

Every residual is computed by tensornet in TT form from the returned cores (``||A x - b|| / ||b||``); "correct"
means: residual <= 1e-8 (Laplacian solves), error <= 1e-8 against the exact solution (QTT Poisson; the residual
of the exact solution itself is ~1e-4 there), |E - E_ref| <= 1e-8 (Heisenberg), relative error <= 1e-10
(Laplacian eigenvalue). The target is ``tensornet <= 0.5 x`` the fastest correct peer.

Times are medians over ``--repeats`` interleaved rounds after one untimed call (warm-up: numba's JIT, torch's
first calls, plan caches), wall clock and this process's CPU time; the torchTT QTT runs (~20 s and ~3 min) are
timed once, without a warm-up. Also measured: the switch point between dense and Krylov local solves
(``--switch``), which sets ``DENSE_SOLVE`` / ``DENSE_EIG`` in :mod:`tensornet.linalg`.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import _harness  # noqa: E402  (puts the checkout first on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

import tensornet as tn  # noqa: E402
from tensornet import interop  # noqa: E402
from tensornet.linalg import ConvergenceWarning, eigsh, heisenberg, laplacian_inverse, solve  # noqa: E402

torch.set_num_threads(1)
HEISENBERG_32 = -13.997315618144
PEERS = ("torchtt", "quimb", "numba")


# --- problems ----------------------------------------------------------------------------------------------
def laplacian(n: int, d: int) -> tn.TTM:
    return tn.scale(tn.laplacian((n,) * d), -1.0)


def qtt_poisson(level: int) -> tuple[tn.TTM, tn.TT, float]:
    n = 2**level
    h = 1.0 / (n + 1)
    return tn.scale(tn.laplacian(n, step=h, qtt=True), -1.0), tn.ones((2,) * level), h


def residual(a: tn.TTM, x: tn.TT, b: tn.TT) -> float:
    return float(tn.norm(tn.matvec(a, x) - b) / tn.norm(b))


def poisson_error(u: tn.TT, h: float, count: int = 20_000) -> float:
    level = u.ncores
    index = np.random.default_rng(12345).integers(0, 2, size=(count, level))
    x = (index @ (2.0 ** np.arange(level - 1, -1, -1)) + 1.0) * h
    return float(np.max(np.abs(np.asarray(tn.gather(u, index)) - x * (1 - x) / 2))) / 0.125


# --- peers -------------------------------------------------------------------------------------------------
def torchtt_module() -> Any:
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "C++ implementation not available. Using pure Python."
        import torchtt
        import torchtt.solvers
    return torchtt


def torchtt_solve(a: tn.TTM, b: tn.TT, eps: float) -> Callable[[], tn.TT]:
    tt = torchtt_module()
    a_t, b_t = interop.to_torchtt(a), interop.to_torchtt(b)
    return lambda: interop.from_torchtt(tt.solvers.amen_solve(a_t, b_t, eps=eps, verbose=False)).to("numpy")


def quimb_mpo(a: tn.TTM) -> Any:
    return interop.to_quimb(
        a
    )  # (r, m, n, r') in quimb's 'lrud' order, the end sites without their outer bond


def quimb_dmrg(
    mpo: Any, kind: str, bond_dims: list[int], local_tol: float | None, tol: float
) -> Callable[[], float]:
    import quimb.tensor as qtn

    def run() -> float:
        solver = (qtn.DMRG2 if kind == "DMRG2" else qtn.DMRG1)(mpo, bond_dims=bond_dims, cutoffs=1e-12)
        if local_tol is not None:
            solver.opts["local_eig_tol"] = local_tol
        solver.solve(tol=tol, verbosity=0)
        return float(solver.energy), int(solver.state.max_bond())

    return run  # type: ignore[return-value]


# --- running -----------------------------------------------------------------------------------------------
def quiet(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` with ConvergenceWarnings recorded (the message is kept for the report) instead of printed."""
    notes: list[str] = []

    def run() -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            out = fn()
        notes[:] = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
        return out

    run.notes = notes  # type: ignore[attr-defined]
    return run


def measure(fns: dict[str, Callable[[], Any]], repeats: int) -> _harness.Measured:
    return _harness.time_interleaved(fns, rounds=repeats, min_rounds=repeats, warmup=1)


def once(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def verdict(ours: float, peers: dict[str, tuple[float, bool]]) -> str:
    correct = {name: t for name, (t, ok) in peers.items() if ok}
    if not correct:
        return "no peer correct"
    name, best = min(correct.items(), key=lambda item: item[1])
    r = ours / best
    return f"{r:.2f}x the fastest correct peer ({name}): {'met' if r <= 0.5 else 'MISSED'} (target <= 0.5x)"


def solve_cases(repeats: int) -> list[str]:
    lines: list[str] = []
    rows = []
    for n, d in ((32, 8), (16, 20)):
        a, b = laplacian(n, d), tn.ones((n,) * d)
        fns = {
            "tensornet solve": quiet(lambda a=a, b=b: solve(a, b, tol=1e-8)),
            "torchTT amen_solve": torchtt_solve(a, b, 1e-8),
        }
        got = measure(fns, repeats)
        times = got.median("wall")
        cpu = got.median("cpu")
        checks = {name: residual(a, x, b) for name, x in got.results.items()}
        for name in fns:
            if name in got.failures:
                rows.append([f"{n}^{d}", name, "failed: " + got.failures[name], "", "", "", ""])
                continue
            rows.append([
                f"-L x = 1, {n}^{d}, tol 1e-8", name, f"{times[name]:.3f}", f"{cpu[name]:.3f}",
                f"{checks[name]:.1e}", got.results[name].largest_rank, "yes" if checks[name] <= 1e-8 else "no",
            ])  # fmt: skip
        peers = {k: (times[k], checks[k] <= 1e-8) for k in times if k != "tensornet solve"}
        rows.append(["", "**ratio**", verdict(times["tensornet solve"], peers), "", "", "", ""])
    lines += _harness.markdown_table(
        ["case", "method", "median s (wall)", "median s (CPU)", "residual (TT form)", "max rank", "correct"],
        rows,
        right=(2, 3),
    )
    return lines


def qtt_case(slow: bool, repeats: int) -> list[str]:
    a, b, h = qtt_poisson(20)
    ours = {
        "tensornet solve (AMEn, tol 1e-8)": quiet(lambda: solve(a, b, tol=1e-8)),
        "tensornet laplacian_inverse + matvec(eps=1e-13)": lambda: tn.scale(
            tn.matvec(laplacian_inverse(2**20, step=h, qtt=True), b, eps=1e-13), -1.0
        ),
    }
    got = measure(ours, repeats)
    rows = []
    for name, fn in ours.items():
        u = got.results[name]
        note = "; ".join(n[:110] for n in getattr(fn, "notes", []))
        rows.append([name, f"{got.median('wall')[name]:.3f}", f"{got.median('cpu')[name]:.3f}", f"{residual(a, u, b):.1e}",
                     f"{poisson_error(u, h):.1e}", u.largest_rank, note or "-"])  # fmt: skip
    peer_times = {}
    for eps in (1e-10, 1e-8) if slow else (1e-10,):
        name = f"torchTT amen_solve (eps {eps:g})"
        u, wall, cpu = once(torchtt_solve(a, b, eps))
        error = poisson_error(u, h)
        peer_times[name] = (wall, error <= 1e-8)
        rows.append(
            [
                name,
                f"{wall:.3f}",
                f"{cpu:.3f}",
                f"{residual(a, u, b):.1e}",
                f"{error:.1e}",
                u.largest_rank,
                "one timed call",
            ]
        )
    exact_residual = (
        "the exact solution's own residual, rounded to float64, is ~1e-4 (cond(A) ~ 4e11 times u)"
    )
    best = got.median("wall")["tensornet laplacian_inverse + matvec(eps=1e-13)"]
    rows.append(["**ratio**", verdict(best, peer_times), "", "", "", "", exact_residual])
    return _harness.markdown_table(
        ["method", "s (wall)", "s (CPU)", "residual (TT form)", "error vs x(1-x)/2", "max rank", "notes"],
        rows,
        right=(1, 2),
    )


def eigen_cases(repeats: int) -> list[str]:
    rows = []
    chain = heisenberg(32)
    fns: dict[str, Callable[[], Any]] = {
        "tensornet eigsh (tol 1e-10)": lambda: (float(eigsh(chain, tol=1e-10)[0][0]), None),
        "quimb DMRG2 (8..128, cutoff 1e-12, tol 1e-10)": quimb_dmrg(
            _heis_mpo(), "DMRG2", [8, 16, 32, 64, 128], None, 1e-10
        ),
    }
    got = measure(fns, repeats)
    rows += _eigen_rows("Heisenberg L = 32", got, fns, HEISENBERG_32, absolute=1e-8)
    lap = laplacian(32, 8)
    exact = 8 * 4 * math.sin(math.pi / 66) ** 2
    mpo = quimb_mpo(lap)
    fns = {
        "tensornet eigsh (tol 1e-13)": lambda: (float(eigsh(lap, tol=1e-13)[0][0]), None),
        "quimb DMRG2 (default local tol)": quimb_dmrg(mpo, "DMRG2", [4, 8], None, 1e-10),
        "quimb DMRG1 (default local tol)": quimb_dmrg(mpo, "DMRG1", [4, 8], None, 1e-10),
        "quimb DMRG2 (local_eig_tol 1e-12)": quimb_dmrg(mpo, "DMRG2", [4, 8], 1e-12, 1e-12),
        "quimb DMRG1 (local_eig_tol 1e-12)": quimb_dmrg(mpo, "DMRG1", [4, 8], 1e-12, 1e-12),
    }
    got = measure(fns, repeats)
    rows += _eigen_rows("lowest eigenvalue of -L, 32^8", got, fns, exact, relative=1e-10)
    return _harness.markdown_table(
        ["case", "method", "median s (wall)", "median s (CPU)", "value", "error", "correct"],
        rows,
        right=(2, 3),
    )


def _heis_mpo() -> Any:
    import quimb.tensor as qtn

    return qtn.MPO_ham_heis(32, j=1.0, cyclic=False)


def _eigen_rows(
    case: str, got: Any, fns: dict[str, Any], reference: float, absolute: float = 0.0, relative: float = 0.0
) -> list[list[Any]]:
    rows, peers = [], {}
    wall, cpu = got.median("wall"), got.median("cpu")
    ours = next(name for name in fns if name.startswith("tensornet"))
    for name in fns:
        if name in got.failures:
            rows.append([case, name, "failed: " + got.failures[name], "", "", "", ""])
            continue
        value = got.results[name][0]
        error = abs(value - reference)
        ok = error <= max(absolute, relative * abs(reference))
        rows.append(
            [
                case,
                name,
                f"{wall[name]:.3f}",
                f"{cpu[name]:.3f}",
                f"{value:.12f}",
                f"{error:.1e}",
                "yes" if ok else "no",
            ]
        )
        if name != ours:
            peers[name] = (wall[name], ok)
    rows.append([case, "**ratio**", verdict(wall[ours], peers), "", "", "", ""])
    return rows


def switch_point() -> list[str]:
    """Dense LU / eigh against the factored Krylov solvers on local problems of growing size.

    Cold: from zero (CG) or a random vector (Lanczos); warm: from the answer perturbed by 1e-3 (relative), what
    a sweep hands the local solver once its frames settle.
    """
    from tensornet.linalg._local import LocalOperator
    from tensornet.linalg._ops import Ops

    rng = np.random.default_rng(0)
    rows = []
    for r, n, big_r in (
        (4, 2, 3),
        (6, 2, 3),
        (8, 2, 3),
        (12, 2, 3),
        (16, 2, 3),
        (3, 32, 2),
        (4, 32, 2),
        (6, 16, 2),
    ):
        left = rng.standard_normal((r, big_r, r))
        left = np.einsum("aib,cib->aic", left, left) + np.eye(r)[:, None, :]  # SPD slices
        right = rng.standard_normal((r, big_r, r))
        right = np.einsum("aib,cib->aic", right, right) + np.eye(r)[:, None, :]
        w = rng.standard_normal((big_r, n, n, big_r))
        w = np.einsum("aijb,akjb->aikb", w, w) + 0.1 * np.eye(n)[None, :, :, None]
        ops = Ops(left)
        h = LocalOperator(ops, left, w, right)
        dense = h.dense()
        f = rng.standard_normal((h.size, 1))
        x = np.linalg.solve(dense, f)
        values, vectors = np.linalg.eigh((dense + dense.T) / 2)
        v0 = vectors[:, :1]
        noise = rng.standard_normal((h.size, 1))
        warm_x = x + 1e-3 * np.linalg.norm(x) * noise / np.linalg.norm(noise)
        warm_v = v0 + 1e-3 * noise / np.linalg.norm(noise)
        target = 1e-10 * float(np.linalg.norm(f))
        eig_target = 1e-6 * abs(float(values[-1]))
        fns = _local_solvers(ops, h, f, warm_x, warm_v, noise, target, eig_target)
        t = _harness.time_interleaved(fns, rounds=5).median("cpu")
        rows.append([f"{h.size}", f"r={r} n={n} R={big_r}", *(f"{t[name] * 1e3:.2f}" for name in fns)])
    return _harness.markdown_table(
        [
            "N",
            "local problem",
            "dense LU",
            "CG cold",
            "CG warm",
            "dense eigh",
            "Lanczos cold",
            "Lanczos warm",
        ],
        rows,
        right=(2, 3, 4, 5, 6, 7),
    )


def _local_solvers(
    ops: Any, h: Any, f: Any, warm_x: Any, warm_v: Any, noise: Any, target: float, eig_target: float
) -> dict[str, Callable[[], Any]]:
    from tensornet.linalg import _krylov

    return {
        "dense solve": lambda: np.linalg.solve(h.dense(), f),
        "CG cold": lambda: _krylov.cg(ops, h.matvec, f, np.zeros_like(f), target, 4000, None),
        "CG warm": lambda: _krylov.cg(ops, h.matvec, f, warm_x, target, 4000, None),
        "dense eigh": lambda: _krylov.dense_eigh(ops, h.dense(), 1),
        "Lanczos cold": lambda: _krylov.lanczos(ops, h.matvec, noise, eig_target, 400),
        "Lanczos warm": lambda: _krylov.lanczos(ops, h.matvec, warm_v, eig_target, 400),
    }


def matvec_cases(repeats: int) -> list[str]:
    """``tn.matvec(A, x, eps=)`` (default route, and the sketch forced) against ``round(matvec(A, x), eps)``."""
    from tensornet import _matvec_round

    def sketched(a: tn.TTM, x: tn.TT, eps: float) -> tn.TT:
        _matvec_round.SKETCH_ONLY_IF_TOO_LARGE = False
        try:
            return tn.matvec(a, x, eps=eps)
        finally:
            _matvec_round.SKETCH_ONLY_IF_TOO_LARGE = True

    chain = heisenberg(24)
    ground = eigsh(chain, tol=1e-8)[1][0]
    squared = tn.round(chain @ chain, eps=1e-14)
    wide = tn.random_ttm((4,) * 8, (4,) * 8, 8, seed=1)
    hidden = tn.random_ttm((4,) * 8, (4,) * 8, 2, seed=3)
    hidden = hidden + hidden + hidden + hidden + hidden + hidden  # stored rank 12, true rank 2
    cases = [
        ("Heisenberg(24) @ ground state (R = 5, r = 55)", chain, ground),
        ("Heisenberg(24)^2 @ ground state (R = 9)", squared, ground),
        ("random rank-8 TTM @ rank-3 TT, 4^8", wide, tn.random_tt((4,) * 8, 3, seed=2)),
        ("6 x (rank-2 TTM) @ rank-2 TT, 4^8 (true rank 4)", hidden, tn.random_tt((4,) * 8, 2, seed=4)),
    ]
    rows = []
    for name, a, x in cases:
        exact = tn.matvec(a, x)
        for eps in (1e-6, 1e-10):
            fns = {
                "default": lambda a=a, x=x, eps=eps: tn.matvec(a, x, eps=eps),
                "sketch": lambda a=a, x=x, eps=eps: sketched(a, x, eps),
                "round": lambda a=a, x=x, eps=eps: tn.round(tn.matvec(a, x), eps=eps),
            }
            got = measure(fns, repeats)
            t = got.median("cpu")
            errors = [float(tn.norm(got.results[k] - exact) / tn.norm(exact)) for k in ("default", "sketch")]
            rows.append([
                name, f"{eps:g}", f"{t['default'] * 1e3:.1f}", f"{t['sketch'] * 1e3:.1f}", f"{t['round'] * 1e3:.1f}",
                _harness.ratio(t["sketch"], t["round"]), f"{errors[0]:.1e} / {errors[1]:.1e}",
                got.results["default"].largest_rank,
            ])  # fmt: skip
    return _harness.markdown_table(
        [
            "case",
            "eps",
            "matvec(eps=) ms",
            "sketch forced ms",
            "round(matvec()) ms",
            "sketch / round",
            "errors",
            "rank",
        ],
        rows,
        right=(2, 3, 4, 5),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--slow", action="store_true", help="also torchTT on the QTT case at eps 1e-8 (~3 min)"
    )
    parser.add_argument("--switch", action="store_true", help="also the dense/Krylov switch-point table")
    parser.add_argument("--matvec", action="store_true", help="also tn.matvec(eps=) against round(matvec)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    lines = ["# Solvers: tensornet.linalg vs torchTT amen_solve and quimb DMRG (CPU)", ""]
    lines += _harness.machine(peers=PEERS)
    lines += ["", "## Linear systems: Laplacian", "", *solve_cases(args.repeats)]
    lines += ["", "## 1-D Poisson in QTT, 2^20 points", "", *qtt_case(args.slow, args.repeats)]
    lines += ["", "## Eigenvalues", "", *eigen_cases(args.repeats)]
    if args.matvec:
        lines += ["", "## Rounded products", "", *matvec_cases(args.repeats)]
    if args.switch:
        lines += ["", "## Dense vs Krylov local solves (CPU ms)", "", *switch_point()]
    lines += ["", f"- total benchmark time {time.perf_counter() - start:.0f} s"]
    if hasattr(os, "getloadavg"):
        lines.append(
            "- load average at the end (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg())
        )
    print("\n".join(lines))
    _harness.write_report(args.out, lines)


if __name__ == "__main__":
    main()
