"""Building trains from what the strategies draw, in the order that lets hypothesis shrink them well.

Hypothesis shrinks the sequence of choices a test case was built from: it deletes runs of choices and moves
each towards its simplest value (an ``integers(a, b)`` towards ``a``, a ``sampled_from`` towards its first
element). The strategies therefore draw the structure first, one element per core (its mode size(s) and the rank
of the bond to its right), so that deleting an element deletes a core together with its bond and leaves
the other cores' sizes and ranks aligned; then the dtype, then one seed for all the entries (core k's
from ``(seed, k)``). Sizes and ranks shrink towards 1, the dtype towards float64, the backend towards numpy,
the seed towards 0 and a power-of-two scale towards 1. One seed rather than one per core: hypothesis spends
hundreds of extra calls trying to trade value between sibling integers, which for seeds means nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

from ..random import core_std

SEEDS = st.integers(0, 2**32 - 1)
"""Seeds of the cores' entries (shrinking towards 0)."""


def resolve(draw: Any, value: Any, default: Any) -> Any:
    """``value`` itself, a draw from it when it is a strategy, or a draw from ``default`` when None."""
    if value is None:
        return draw(default) if default is not None else None
    if isinstance(value, st.SearchStrategy):
        return draw(value)
    return value


def reachable(sizes: Sequence[int], wanted: Sequence[int]) -> tuple[int, ...]:
    """The bond ranks ``wanted`` clipped to what the mode sizes allow (``r_k <= r_{k-1} n_k``, ``r_k <= n_{k+1} r_{k+1}``).

    A generic train with the clipped ranks has exactly these TT ranks.
    """
    ranks = [1]
    for k in range(len(sizes) - 1):
        ranks.append(max(1, min(int(wanted[k]), ranks[-1] * int(sizes[k]))))
    ranks.append(1)
    for k in range(len(sizes) - 1, 0, -1):
        ranks[k] = min(ranks[k], int(sizes[k]) * ranks[k + 1])
    return tuple(ranks[1:-1])


def is_complex(dtype: Any) -> bool:
    return "complex" in str(dtype)


def cores_from_seed(
    mode_shapes: Sequence[tuple[int, ...]],
    bonds: Sequence[int],
    seed: int,
    *,
    std: float,
    complex_: bool,
) -> list[np.ndarray]:
    """Cores of i.i.d. normal entries, core k from the seed ``(seed, k)``, scaled as :func:`tensornet.random_tt` scales them.

    The entries of the tensor then have standard deviation ``std``; complex cores are circular (real and
    imaginary parts of equal variance).
    """
    ranks = (1, *(int(r) for r in bonds), 1)
    scale = core_std(std, tuple(ranks[1:-1]))
    cores = []
    for k, modes in enumerate(mode_shapes):
        rng = np.random.default_rng((int(seed), k))
        shape = (ranks[k], *modes, ranks[k + 1])
        if complex_:
            part = scale / math.sqrt(2.0)
            cores.append(part * rng.standard_normal(shape) + 1j * (part * rng.standard_normal(shape)))
        else:
            cores.append(scale * rng.standard_normal(shape))
    return cores


def spread_pow2(cores: list[np.ndarray], factor: float) -> list[np.ndarray]:
    """The cores of ``factor`` times the train: a power of two split exactly over the cores, else on core 0."""
    if factor == 1.0:
        return cores
    mantissa, exponent = math.frexp(factor)
    if abs(mantissa) != 0.5:
        return [cores[0] * factor, *cores[1:]]
    d = len(cores)
    shares = [(exponent - 1) // d + (1 if k < (exponent - 1) % d else 0) for k in range(d)]
    sign = -1.0 if mantissa < 0 else 1.0
    # multiplying by 2^s is exact (np.ldexp takes no complex arrays)
    return [c * (math.ldexp(sign if k == 0 else 1.0, s)) for k, (c, s) in enumerate(zip(cores, shares))]
