"""The GPT-2 adapter's constants, which need no torch: model sizes and the layer names ``tensorize`` replaces."""

from __future__ import annotations

import numbers
from typing import Any

# name -> (n_layer, n_embd, n_head); GPT-2 small and medium as published, "tiny" for CPU runs.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (4, 256, 4),
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
}

# module names inside each GPT2Block, per layer group; "wte" names the token embedding in `shapes`
LAYER_GROUPS: dict[str, tuple[str, ...]] = {
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
    "attn": ("attn.c_attn", "attn.c_proj"),
}
SHAPE_KEYS = (*(key for keys in LAYER_GROUPS.values() for key in keys), "wte")


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
