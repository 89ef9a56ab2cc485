"""Choosing the layers :func:`tensornet.nn.adapt` adapts: target patterns, per-layer shapes, tied weights."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from tensornet import _checks

from ._hf import conv1d_class

ShapePair = tuple[tuple[int, ...], tuple[int, ...]]


def _is_linear(module: nn.Module) -> bool:
    conv1d = conv1d_class()
    return isinstance(module, nn.Linear) or (conv1d is not None and isinstance(module, conv1d))


def _matches(fn: str, targets: Any) -> Any:
    """A predicate on module names for PEFT-style ``targets`` (a regex string, or names matched as suffixes)."""
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as error:
            raise ValueError(
                f"{fn}: targets {targets!r} is not a valid regular expression ({error})"
            ) from None
        return lambda name: pattern.fullmatch(name) is not None
    if isinstance(targets, re.Pattern):
        return lambda name: targets.fullmatch(name) is not None
    if not isinstance(targets, Sequence | set | frozenset) or not all(isinstance(t, str) for t in targets):
        raise TypeError(
            f"{fn}: targets must be a regex string or a list of module names (as PEFT's target_modules), "
            f"got {targets!r}"
        )
    if not targets:
        raise ValueError(f"{fn}: targets is empty; name the modules to adapt, e.g. ['c_attn', 'c_fc']")
    suffixes = tuple(targets)
    return lambda name: any(name == t or name.endswith(f".{t}") for t in suffixes)


def _shape_for(fn: str, shapes: Any, name: str) -> ShapePair | tuple[None, None]:
    """The ``(out_shape, in_shape)`` for the module ``name`` from ``shapes`` (None: factorised)."""
    if shapes is None:
        return None, None
    if isinstance(shapes, Mapping):
        if name not in shapes:
            return None, None
        shapes = shapes[name]
    if not isinstance(shapes, tuple | list) or len(shapes) != 2:
        raise TypeError(
            f"{fn}: shapes must be None, an (out_shape, in_shape) pair or a dict of such pairs by module "
            f"name, got {shapes!r} for {name}"
        )
    out_shape = _checks.check_shape(fn, "shapes[0] (out_shape)", shapes[0])
    in_shape = _checks.check_shape(fn, "shapes[1] (in_shape)", shapes[1])
    return out_shape, in_shape


def _check_shape_keys(fn: str, shapes: Any, chosen: list[tuple[str, nn.Module]]) -> None:
    """Refuse a ``shapes`` dict key naming no target (a misspelt one would leave the default shapes)."""
    if isinstance(shapes, Mapping):
        unmatched = sorted(set(shapes) - {name for name, _ in chosen}, key=str)
        if unmatched:
            raise ValueError(
                f"{fn}: shapes has keys {unmatched} that name no target; its keys are full module names of "
                f"the targets, which are {[name for name, _ in chosen]}"
            )


def _check_untied(fn: str, model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> None:
    """Refuse a target whose weight another module (or another name of it) also holds.

    :func:`merge` writes the update into the weight in place: a tied weight (GPT-2's ``lm_head`` is
    ``wte``) would change the other module too.
    """
    owners: dict[int, list[tuple[str, nn.Module]]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module.named_parameters(recurse=False):
            full = f"{mod_name}.{param_name}" if mod_name else param_name
            owners.setdefault(id(param), []).append((full, module))
    for name, module in chosen:
        weight = getattr(module, "weight", None)
        others = [full for full, _ in owners.get(id(weight), []) if full != f"{name}.weight"]
        if others:
            raise ValueError(
                f"{fn}: {name}'s weight is shared with {', '.join(others)} (tied weights); merge would "
                f"change them too. Untie it first (e.g. {name}.weight = nn.Parameter({name}.weight.clone()), "
                "or tie_word_embeddings=False in a transformers config) or leave it out of targets"
            )
