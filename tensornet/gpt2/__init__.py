"""GPT-2 with tensor-train-matrix (TTM) layers: the adapter, training loop and ``python -m tensornet.gpt2``.

GPT-2 is Hugging Face transformers' ``GPT2LMHeadModel``, built from a ``GPT2Config`` (nothing is downloaded).
``tensorize`` replaces its MLP (and optionally attention) layers by ``tensornet.nn.TTMLinear``, from scratch or
from the existing weights, reproducing the parameter counts of Chekalina et al. 2023 with ``shapes="paper"``;
``save_model``/``load_model`` round-trip a tensorized model through a ``save_pretrained``-style folder, its
``config.json`` recording how it was tensorized (``TensorizeConfig``).

The application (``python -m tensornet.gpt2``: the training loop, resume, data and tokenizer caches, run
folders, figures) is :mod:`tensornet.gpt2.app`, built on this adapter's public names; ``train``, ``evaluate``,
``TrainConfig`` and the corpus helpers are re-exported here. :mod:`tensornet.gpt2.files` holds the file
guarantees both share (atomic writes, checked reads). The names are imported on first use (torch and
transformers load then), so ``python -m tensornet.gpt2 --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_HOMES = {
    "LayerReport": "tensornet.nn",
    "TensorizeReport": "tensornet.nn",
    "TiedTTHead": "tensornet.nn",
    "Corpus": ".app._data",
    "load_corpus": ".app._data",
    "load_tokenizer": ".app._data",
    "stdlib_corpus": ".app._data",
    "train_tokenizer": ".app._data",
    "LowRankLinear": "._lowrank",
    "LAYER_GROUPS": "._config",
    "PRESETS": "._config",
    "TrainConfig": ".app._config",
    "build_model": "._model",
    "gpt2_config": "._model",
    "check_model_target": "._model",
    "load_model": "._model",
    "save_model": "._model",
    "save_run_model": "._model",
    "dense_params": "._modelfile",
    "memory_bytes": "._modelfile",
    "read_config": "._modelfile",
    "TensorizeConfig": "._tensorize",
    "balanced_shapes": "._shapes",
    "layer_shapes": "._shapes",
    "lowrank": "._tensorize",
    "lowrank_rank_for": "._tensorize",
    "nparams": "._tensorize",
    "paper_shapes": "._shapes",
    "tensorize": "._tensorize",
    "History": ".app._train",
    "evaluate": ".app._train",
    "train": ".app._train",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tensornet.gpt2' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
