"""Layers :func:`tensornet.nn.tensorize` must leave dense: their parent reads their weight tensor itself.

A TT layer stands in for an ``nn.Linear`` where the model calls the layer. Some modules instead hand the
child's ``.weight`` / ``.bias`` tensors to a fused kernel: ``nn.MultiheadAttention`` passes
``out_proj.weight`` to ``F.multi_head_attention_forward``, and ``nn.TransformerEncoderLayer``'s inference
fast path passes ``linear1``, ``linear2`` and ``self_attn.out_proj`` to
``torch._transformer_encoder_layer_fwd``. Given a TT layer, whose ``.weight`` is a
:class:`tensornet.TTM`, they fail in forward with torch's "must be Tensor, not TTM". Such reads are found
in the source of the ancestors' ``forward`` (``self.<path>.weight`` or ``.bias``), which catches torch's
cases and models written the same way; a read through another name (``getattr``, a local alias) or in a
class whose source is unavailable is not seen.
"""

from __future__ import annotations

import inspect
import re
import weakref

from torch import nn

__all__ = ["direct_reader"]


# per class, read once (classes made at run time are not kept alive by it)
_SOURCES: weakref.WeakKeyDictionary[type, str] = weakref.WeakKeyDictionary()


def _forward_source(cls: type) -> str:
    """The source of ``cls.forward`` ('' where it is torch's default or cannot be read)."""
    cached = _SOURCES.get(cls)
    if cached is not None:
        return cached
    forward = getattr(cls, "forward", None)
    source = ""
    if forward is not None and forward is not nn.Module.forward:
        try:
            source = inspect.getsource(forward)
        except (OSError, TypeError):  # built in, compiled or made at run time: nothing to read
            source = ""
    _SOURCES[cls] = source
    return source


def direct_reader(model: nn.Module, name: str) -> str | None:
    """How an ancestor of the layer ``name`` reads its weight tensor directly; None when none does.

    E.g. "self_attn (MultiheadAttention) reads out_proj.weight in forward".
    """
    parts = name.split(".")
    for depth in range(len(parts)):
        owner = ".".join(parts[:depth])
        module = model.get_submodule(owner)
        path = ".".join(parts[depth:])
        found = re.search(rf"\bself\.{re.escape(path)}\.(weight|bias)\b", _forward_source(type(module)))
        if found is not None:
            where = owner or "the model"
            return f"{where} ({type(module).__name__}) reads {path}.{found.group(1)} in forward"
    return None
