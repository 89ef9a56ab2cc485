"""The GPT-2 adapter's constants, which need no torch.

Model sizes (``PRESETS``) and the layer names
``tensorize`` replaces (``LAYER_GROUPS``, ``SHAPE_KEYS``).
"""

from __future__ import annotations

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
