"""Factorising dimensions into core shapes, e.g. ``768 -> (8, 8, 12)``."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from . import _checks

__all__ = ["factorize", "prime_factors", "ttm_shapes", "useful_ranks"]


_LARGEST = 2**64  # mode sizes and layer widths are far below this; larger numbers are refused
_TRIAL = 1 << 12  # trial division below this, then Miller-Rabin and Pollard-Brent for what remains


def _is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for ``n < 3.3e24`` (the first 13 primes as bases)."""
    if n < 2:
        return False
    bases = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    if n in bases:
        return True
    if any(n % p == 0 for p in bases):
        return False
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for a in bases:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _split(n: int) -> int:
    """A non-trivial factor of a composite ``n`` with no factor below ``_TRIAL``.

    Pollard-Brent rho: about n^(1/4) steps, at most ~2^16 for n < 2^64.
    """
    for c in range(1, 64):
        y, m, g, r, q = 2, 128, 1, 1, 1
        x = ys = y
        while g == 1:
            x = y
            for _ in range(r):
                y = (y * y + c) % n
            k = 0
            while k < r and g == 1:
                ys = y
                for _ in range(min(m, r - k)):
                    y = (y * y + c) % n
                    q = q * abs(x - y) % n
                g = math.gcd(q, n)
                k += m
            r *= 2
        if g == n:
            g = 1
            while g == 1:
                ys = (ys * ys + c) % n
                g = math.gcd(abs(x - ys), n)
        if g != n:
            return g
    raise ArithmeticError(f"prime_factors: no factor of {n} found")  # not reached for n < 2^64


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``1 <= n < 2^64`` in ascending order (``[]`` for 1).

    Parameters
    ----------
    n : int

    Returns
    -------
    list of int

    Raises
    ------
    ValueError
        ``n`` not an int in ``[1, 2^64)``.

    Notes
    -----
    Trial division by small numbers, then Miller-Rabin and Pollard-Brent rho for the rest (a large prime
    is recognised at once instead of trial-dividing up to its square root).

    Cost: ``O(2^12)`` trial divisions plus about ``n^(1/4)`` steps of rho for the remaining factors.
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n < _LARGEST:
        raise ValueError(f"prime_factors: n must be an int in [1, 2^64), got {n!r}")
    n = int(n)
    factors, p = [], 2
    while p < _TRIAL and p * p <= n:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1 if p == 2 else 2
    pending = [n] if n > 1 else []
    while pending:
        m = pending.pop()
        if m < _TRIAL * _TRIAL or _is_prime(m):  # below _TRIAL^2 with no small factor: prime
            factors.append(m)
        else:
            g = _split(m)
            pending += [g, m // g]
    return sorted(factors)


def factorize(n: int, ncores: int) -> tuple[int, ...]:
    """``n`` as a product of ``ncores`` factors as equal as possible, ascending (1s pad primes).

    Parameters
    ----------
    n : int
        In ``[1, 2^64)``.
    ncores : int
        In ``[1, 4096)``.

    Returns
    -------
    tuple of int
        E.g. ``factorize(768, 3) == (8, 8, 12)``, ``factorize(3072, 3) == (12, 16, 16)``.

    Raises
    ------
    ValueError
        An argument out of its range or not an int.

    Notes
    -----
    Greedy: each prime factor, largest first, goes to the currently smallest factor.

    Cost: that of :func:`prime_factors`.
    """
    for name, value, top, text in (("n", n, _LARGEST, "2^64"), ("ncores", ncores, 4096, "4096")):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value < top:
            raise ValueError(f"factorize: {name} must be an int in [1, {text}), got {value!r}")
    bins = [1] * ncores
    for p in sorted(prime_factors(int(n)), reverse=True):
        bins[bins.index(min(bins))] *= p
    return tuple(sorted(bins))


def ttm_shapes(
    out_features: int, in_features: int, ncores: int = 3
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Balanced ``(row_shape, col_shape)`` for a weight of shape ``(out_features, in_features)``.

    Each side is :func:`factorize` d into ``ncores`` factors; errors as :func:`factorize`.
    """
    return factorize(out_features, ncores), factorize(in_features, ncores)


def useful_ranks(mode_sizes: Sequence[int]) -> tuple[int, ...]:
    """The largest useful bond ranks of a train with modes of ``mode_sizes``.

    Parameters
    ----------
    mode_sizes : sequence of int
        ``(n_1, ..., n_d)``; for a TTM pass ``m_k * n_k``.

    Returns
    -------
    tuple of int
        ``min(prod n_1..n_k, prod n_{k+1}..n_d)`` for k = 1..d-1: the rank of unfolding k of any tensor
        of this shape, so a larger TT rank adds parameters and no expressiveness.

    Raises
    ------
    TypeError, ValueError
        Sizes that are not positive ints.
    """
    if isinstance(mode_sizes, Sequence) and len(mode_sizes) == 0:
        return ()
    sizes = _checks.check_shape("useful_ranks", "mode_sizes", mode_sizes)
    return tuple(min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1))
