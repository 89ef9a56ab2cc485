"""``python -m tensornet``: a tour of TT-SVD and rounding on the CPU, a few seconds long.

Decomposes a smooth function sampled on a grid and a random TT-matrix, and prints ranks, the
achieved error against the eps guarantee, compression and timings.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import tensornet as tn


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the tour (``argv``: the command line without the program name); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m tensornet", description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=1e-6, help="relative accuracy of TT-SVD (default 1e-6)")
    parser.add_argument("--ndim", type=int, default=6, help="number of modes of the function tensor")
    parser.add_argument("--size", type=int, default=10, help="grid points per mode")
    args = parser.parse_args(argv)
    if args.eps < 0 or args.ndim < 1 or args.size < 1:
        parser.error("--eps must be >= 0, --ndim and --size >= 1")

    grid = np.linspace(0.0, 1.0, args.size)
    mesh = np.meshgrid(*([grid] * args.ndim), indexing="ij")
    x = 1.0 / (1.0 + np.sum(np.stack(mesh) ** 2, axis=0))
    print(f"f(x) = 1 / (1 + |x|^2) on a {args.size}^{args.ndim} grid ({x.size:,} entries)")
    t, seconds = _timed(tn.tt_svd, x, eps=args.eps)
    error = np.linalg.norm(t.full() - x) / np.linalg.norm(x)
    print(f"  tt_svd(eps={args.eps:g}): {t}")
    print(f"  relative error {error:.2e} <= eps {args.eps:g}: {error <= args.eps}")
    print(f"  compression {t.compression:,.1f}x, {seconds * 1e3:.1f} ms")

    rows, cols = (4, 8, 8, 12), (4, 8, 8, 3)
    w = tn.random_ttm(rows, cols, 8, std=0.02, seed=0)
    print(f"\nrandom TTM {w.shape[0]}x{w.shape[1]}: {w}")
    dense = w.full()
    back, seconds = _timed(tn.ttm_svd, dense, rows, cols, eps=1e-10)
    print(f"  ttm_svd of its dense matrix recovers ranks {back.ranks} in {seconds * 1e3:.1f} ms")
    doubled = w + w + w
    rounded, seconds = _timed(tn.round, doubled, eps=1e-10)
    print(f"  (W + W + W) has ranks {doubled.ranks}; round -> {rounded.ranks} in {seconds * 1e3:.1f} ms")
    rel = float(tn.norm(rounded - tn.scale(w, 3.0)) / tn.norm(tn.scale(w, 3.0)))
    print(f"  ||round(3W) - 3W|| / ||3W|| = {rel:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
