"""Factorising dimensions into core shapes, e.g. ``768 -> (8, 8, 12)``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = ["factorize", "max_ranks", "prime_factors", "ttm_shapes"]


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n >= 1`` in ascending order (``[]`` for 1)."""
    factors, p = [], 2
    while p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    if n > 1:
        factors.append(n)
    return factors


def factorize(n: int, ncores: int) -> tuple[int, ...]:
    """``n`` as a product of ``ncores`` factors as equal as possible, ascending (1s pad primes).

    Greedy: each prime factor, largest first, goes to the currently smallest factor.
    ``factorize(768, 3) == (8, 8, 12)``, ``factorize(3072, 3) == (12, 16, 16)``.
    """
    for name, value in (("n", n), ("ncores", ncores)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"factorize: {name} must be a positive int, got {value!r}")
    bins = [1] * ncores
    for p in sorted(prime_factors(int(n)), reverse=True):
        bins[bins.index(min(bins))] *= p
    return tuple(sorted(bins))


def ttm_shapes(
    out_features: int, in_features: int, ncores: int = 3
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Balanced ``(row_shape, col_shape)`` for a weight of shape ``(out_features, in_features)``."""
    return factorize(out_features, ncores), factorize(in_features, ncores)


def max_ranks(mode_sizes: Sequence[int]) -> tuple[int, ...]:
    """Useful maximum bond ranks ``min(prod n_1..n_k, prod n_{k+1}..n_d)`` for k = 1..d-1.

    For a TTM pass ``m_k * n_k`` as the mode sizes.
    """
    sizes = [int(n) for n in mode_sizes]
    return tuple(min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1))
