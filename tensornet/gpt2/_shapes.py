"""GPT-2's sizes, layer names and the core shapes of its TTM layers (Chekalina et al. 2023's, balanced, or given).

One pair order everywhere: ``(m_k, n_k)``, a TTM core's row and column factors; for a linear layer ``(out_k, in_k)``.
"""

import math
import numbers
from collections.abc import Mapping
from typing import Any

import tensornet as tn

# name -> (n_layer, n_embd, n_head); GPT-2 small and medium as published, "tiny" for CPU runs.
PRESETS = {"tiny": (4, 256, 4), "small": (12, 768, 12), "medium": (24, 1024, 16)}

# module names inside each GPT2Block, per layer group
LAYER_GROUPS = {"mlp": ("mlp.c_fc", "mlp.c_proj"), "attn": ("attn.c_attn", "attn.c_proj")}


def is_int(value: Any) -> bool:
    """An integral number that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def count(fn: str, name: str, value: Any, *, optional: bool = False) -> Any:
    """``value`` as an int ``>= 1`` (None passes when ``optional``); else TypeError/ValueError naming it."""
    if optional and value is None:
        return None
    if not is_int(value):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{fn}: {name} must be {kind}, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{fn}: {name} must be >= 1, got {value}")
    return int(value)


Pairs = tuple[tuple[int, int], ...]  # ((m_1, n_1), ..., (m_d, n_d)): a (prod m, prod n) weight

# The paper's c_fc core shapes as (out_k, in_k) pairs, by (width, MLP width), each with the largest rank it is
# used for; c_proj (MLP width -> width) takes every pair reversed.
PAPER_SHAPES: dict[tuple[int, int], tuple[tuple[float, Pairs], ...]] = {
    (768, 3072): (  # GPT-2 small: the paper's r = 16 (5 cores), 32 and 64 (4 cores), 80 (3 cores)
        (16, ((4, 4), (4, 4), (4, 4), (4, 4), (12, 3))),
        (64, ((8, 8), (8, 8), (8, 12), (6, 1))),
        (math.inf, ((16, 16), (16, 16), (12, 3))),
    ),
    (1024, 4096): ((math.inf, ((16, 16), (16, 16), (16, 4))),),  # GPT-2 medium: r = 72
}


def paper_shapes(shape: tuple[int, int], rank: int) -> Pairs | None:
    """The paper's pairs ``(out_k, in_k)`` for a GPT-2 small/medium MLP weight ``(out, in)`` at ``rank``, or None."""
    for (width, hidden), table in PAPER_SHAPES.items():
        pairs = next(p for bound, p in table if rank <= bound)
        if tuple(shape) == (hidden, width):  # c_fc
            return pairs
        if tuple(shape) == (width, hidden):  # c_proj
            return tuple((n, m) for m, n in pairs)
    return None


def balanced_shapes(shape: tuple[int, int], ncores: int) -> Pairs:
    """``(out_k, in_k)`` pairs of ``tn.shapes.factorize`` of both sides of ``shape = (out, in)``, ascending."""
    return tuple(zip(tn.shapes.factorize(shape[0], ncores), tn.shapes.factorize(shape[1], ncores)))


def _check_pairs(pairs: Any, shape: tuple[int, int], where: str) -> Pairs:
    try:
        given = tuple((m, n) for m, n in pairs)
    except (TypeError, ValueError):
        given = ((None, None),)
    if not given or not all(is_int(m) and is_int(n) for m, n in given):  # int(8.5) would cut a pair silently
        raise TypeError(
            f"tensorize: shapes for {where} must be (out_k, in_k) pairs of integers, not {pairs!r}"
        )
    product = (math.prod(m for m, _ in given), math.prod(n for _, n in given))
    if product != tuple(shape) or min(min(pair) for pair in given) < 1:
        raise ValueError(
            f"tensorize: shapes for {where} multiply to (out, in) = {product}; give positive (out_k, in_k) "
            "pairs whose products are the layer's sizes"
        )
    return tuple((int(m), int(n)) for m, n in given)


def layer_shapes(
    key: str, shape: tuple[int, int], *, rank: int, shapes: Any = "paper", ncores: int = 3
) -> Pairs:
    """The ``(out_k, in_k)`` core pairs of the layer ``key`` (``"mlp.c_fc"``, ...) of weight ``shape`` ``(out, in)``.

    ``shapes`` as :func:`tensorize` takes it; attention, which the paper keeps dense, falls back to balanced.
    """
    where = f"{key} (out, in) = {tuple(shape)}"
    if isinstance(shapes, Mapping):
        if key not in shapes:
            raise ValueError(
                f"tensorize: shapes has no entry for {key!r}; keys must be among {sorted(shapes)}"
            )
        return _check_pairs(shapes[key], shape, where)
    if shapes not in ("paper", "balanced"):
        raise ValueError(f"tensorize: shapes must be 'paper', 'balanced' or a mapping, got {shapes!r}")
    pairs = paper_shapes(shape, rank) if shapes == "paper" else None
    if pairs is None and shapes == "paper" and key.startswith("mlp."):
        raise ValueError(
            f"tensorize: the paper gives shapes only for GPT-2 small (768 <-> 3072) and medium (1024 <-> 4096) "
            f"MLPs, not {where}; use shapes='balanced' or give them explicitly"
        )
    return pairs or balanced_shapes(shape, ncores)


def check_useful(rank: int, pairs: Pairs, name: str) -> None:
    """A rank above every bond's useful maximum ``min(prod_{j<=k} m_j n_j, prod_{j>k} m_j n_j)`` is an error."""
    useful = tn.shapes.useful_ranks([m * n for m, n in pairs]) or (1,)
    if rank > max(useful):
        shape = "".join(f"({m},{n})" for m, n in pairs)
        raise ValueError(
            f"tensorize: rank {rank} is larger than useful for {name} with core shapes {shape}: no bond can use "
            f"more than {max(useful)} (useful maxima {useful}); lower --rank or use more/larger cores"
        )
