"""GPT-2 with tensor-train-matrix (TTM) layers: the adapter, training loop and ``python -m tensornet.gpt2``.

``tensorize`` replaces the MLP (and optionally attention) layers of Hugging Face's ``GPT2LMHeadModel`` by
``tensornet.nn.TTMLinear``, reproducing the parameter counts of Chekalina et al. 2023 with ``shapes="paper"``;
``save_model``/``load_model`` round-trip it through a ``save_pretrained``-style folder whose ``config.json``
records the tensorization (``TensorizeConfig``). The application (the command line, training, run folders) is
:mod:`tensornet.gpt2.app`; its ``train``, ``evaluate``, ``TrainConfig`` and corpus helpers are re-exported here.
Names are imported on first use, so ``python -m tensornet.gpt2 --help`` loads neither torch nor transformers.
"""

import importlib
from typing import Any

_NAMES = {  # the module that defines them -> public names
    "tensornet.nn": "LayerReport TensorizeReport TiedTTHead",
    "._model": "build_model check_model_target dense_params gpt2_config load_model memory_bytes read_config "
    "save_model save_run_model",
    "._shapes": "LAYER_GROUPS PRESETS balanced_shapes layer_shapes paper_shapes",
    "._tensorize": "LowRankLinear TensorizeConfig lowrank lowrank_rank_for nparams tensorize",
    ".app._config": "TrainConfig",
    ".app._data": "Corpus load_corpus load_tokenizer stdlib_corpus train_tokenizer",
    ".app._train": "History evaluate train",
}
_HOMES = {name: home for home, names in _NAMES.items() for name in names.split()}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'tensornet.gpt2' has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(_HOMES[name], __name__), name)
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
