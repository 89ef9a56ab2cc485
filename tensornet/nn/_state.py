"""What a TT layer's state dict carries besides its parameters: the core shapes, checked on load.

The cores are one flat parameter (``packed_cores``), so its size alone cannot tell two factorisations
with the same number of entries apart (``in_shape=(4, 4, 8)`` and ``(8, 4, 4)`` at equal ranks): loading
one into the other would give another function without a word. The state dict therefore carries the core
shapes as the layer's extra state (``<prefix>_extra_state``, an int64 tensor ``(d, 4)``: a plain tensor,
so ``torch.load(weights_only=True)`` and safetensors keep it), and loading checks it before anything is
copied. State dicts saved before it existed (no such key) load as before, checked by size only.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_loaded_shapes", "shapes_state"]

CoreShapes = tuple[tuple[int, int, int, int], ...]


def shapes_state(core_shapes: CoreShapes) -> torch.Tensor:
    """The extra state of a layer with these core shapes: an int64 CPU tensor ``(d, 4)``."""
    return torch.tensor(core_shapes, dtype=torch.int64, device="cpu")


def _as_shapes(value: Any) -> CoreShapes | None:
    """The core shapes a saved extra state holds, or None where it is not a ``(d, 4)`` tensor of counts."""
    if not isinstance(value, torch.Tensor) or value.ndim != 2 or value.shape[1] != 4 or value.shape[0] < 1:
        return None
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        return None
    rows = value.detach().to("cpu").tolist()
    return tuple((int(a), int(b), int(c), int(d)) for a, b, c, d in rows)


def _describe(shapes: CoreShapes, names: tuple[str, str]) -> str:
    rows = tuple(s[1] for s in shapes)
    cols = tuple(s[2] for s in shapes)
    ranks = (1, *(s[3] for s in shapes))
    return f"{names[0]}={rows}, {names[1]}={cols}, rank={ranks}"


def check_loaded_shapes(
    layer_name: str,
    core_shapes: CoreShapes,
    names: tuple[str, str],
    state_dict: dict[str, Any],
    prefix: str,
    error_msgs: list[str],
) -> bool:
    """Whether the state's core shapes (if it records them) are ``core_shapes``; if not, say why.

    The reason goes to ``error_msgs`` (``load_state_dict`` raises it, with ``strict=False`` too, as it does
    for a size mismatch), naming both factorisations and how to build a layer that takes the state.
    """
    key = f"{prefix}_extra_state"
    if key not in state_dict:
        return True
    saved = _as_shapes(state_dict[key])
    if saved is None:
        value = state_dict[key]
        what = f"shape {tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value)
        error_msgs.append(
            f"{layer_name} at {prefix or 'the root'}: {key} should be the int64 (cores, 4) tensor of the core "
            f"shapes that state_dict() writes, got {what}"
        )
        return False
    if saved == tuple(core_shapes):
        return True
    error_msgs.append(
        f"factorisation mismatch for {prefix}packed_cores: the state's cores have shapes {saved} "
        f"({_describe(saved, names)}) but this {layer_name}'s have {tuple(core_shapes)} "
        f"({_describe(tuple(core_shapes), names)}); build the layer with {_describe(saved, names)} to load "
        f"it (clip_rank=False keeps ranks above the useful maximum as they were saved)"
    )
    return False
