"""The application over the GPT-2 adapter: ``python -m tensornet.gpt2 {compare,train,compress,eval}``.

The training loop (:func:`train`, :func:`evaluate`), resumable checkpoints, the corpus and tokenizer caches,
run folders and figures. It uses only the adapter's (``tensornet.gpt2``) and ``tensornet.nn``'s public names.
The names are imported on first use (torch and transformers load then).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_HOMES = {
    "Corpus": "._data",
    "load_corpus": "._data",
    "load_tokenizer": "._data",
    "stdlib_corpus": "._data",
    "train_tokenizer": "._data",
    "TrainConfig": "._config",
    "History": "._train",
    "evaluate": "._train",
    "train": "._train",
    "main": "._cli",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tensornet.gpt2.app' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
