"""GPT-2 with tensor-train-matrix (TTM) layers: the adapter, training loop and ``python -m tensornet.gpt2``.

GPT-2 is Hugging Face transformers' ``GPT2LMHeadModel``, built from a ``GPT2Config`` (nothing is downloaded).
``tensorize`` replaces its MLP (and optionally attention) layers by ``tensornet.nn.TTMLinear``, from scratch or
from the existing weights, reproducing the parameter counts of Chekalina et al. 2023 with ``shapes="paper"``;
``save_model``/``load_model`` round-trip a tensorized model through a ``save_pretrained``-style folder, its
``config.json`` recording how it was tensorized (``TensorizeConfig``).

The application (``python -m tensornet.gpt2``: the training loop, resume, data and tokenizer caches, run
folders, figures) is :mod:`tensornet.gpt2.app`, built on this adapter's public names; ``train``, ``evaluate``,
``TrainConfig`` and the corpus helpers are re-exported here. :mod:`tensornet.gpt2.files` holds the file
guarantees of ``save_model``/``load_model``, which the application shares. The names are imported on first
use (torch and transformers load then), so ``python -m tensornet.gpt2 --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import Any

# the module that defines them -> public names
_NAMES = {
    "tensornet.nn": ("LayerReport", "TensorizeReport", "TiedTTHead"),
    "._lowrank": ("LowRankLinear",),
    "._model": (
        "build_model",
        "check_model_target",
        "gpt2_config",
        "load_model",
        "save_model",
        "save_run_model",
    ),
    "._modelfile": ("dense_params", "memory_bytes", "read_config"),
    "._shapes": ("LAYER_GROUPS", "PRESETS", "balanced_shapes", "layer_shapes", "paper_shapes"),
    "._tensorize": ("TensorizeConfig", "lowrank", "lowrank_rank_for", "nparams", "tensorize"),
    ".app._config": ("TrainConfig",),
    ".app._data": ("Corpus", "load_corpus", "load_tokenizer", "stdlib_corpus", "train_tokenizer"),
    ".app._train": ("History", "evaluate", "train"),
}
_HOMES = {name: home for home, names in _NAMES.items() for name in names}
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
