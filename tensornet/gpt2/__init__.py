"""GPT-2 with tensor-train-matrix (TTM) layers: the adapter, training loop and ``python -m tensornet.gpt2``.

GPT-2 is Hugging Face transformers' ``GPT2LMHeadModel``, built from a ``GPT2Config`` (nothing is downloaded).
``tensorize`` replaces its MLP (and optionally attention) layers by ``tensornet.nn.TTMLinear``, from scratch or
from the existing weights, reproducing the parameter counts of Chekalina et al. 2023 with ``shapes="paper"``;
``save_model``/``load_model`` round-trip a tensorized model through a ``save_pretrained``-style folder.
"""

from ._data import Corpus, load_corpus, load_tokenizer, stdlib_corpus, train_tokenizer
from ._lowrank import LowRankLinear
from ._model import PRESETS, build_model, gpt2_config, load_model, save_model
from ._tensorize import (
    LayerReport,
    TensorizeReport,
    TiedTTHead,
    balanced_pairs,
    count_params,
    lowrank,
    paper_pairs,
    tensorize,
)
from ._train import History, TrainConfig, evaluate, train

__all__ = [
    "PRESETS",
    "Corpus",
    "History",
    "LayerReport",
    "LowRankLinear",
    "TensorizeReport",
    "TiedTTHead",
    "TrainConfig",
    "balanced_pairs",
    "build_model",
    "count_params",
    "evaluate",
    "gpt2_config",
    "load_corpus",
    "load_model",
    "load_tokenizer",
    "lowrank",
    "paper_pairs",
    "save_model",
    "stdlib_corpus",
    "tensorize",
    "train",
    "train_tokenizer",
]
