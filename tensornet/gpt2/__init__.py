"""GPT-2 with tensor-train-matrix (TTM) layers: the adapter, training loop and ``python -m tensornet.gpt2``.

GPT-2 is Hugging Face transformers' ``GPT2LMHeadModel``, built from a ``GPT2Config`` (nothing is downloaded).
``tensorize`` replaces its MLP (and optionally attention) layers by ``tensornet.nn.TTMLinear``, from scratch or
from the existing weights, reproducing the parameter counts of Chekalina et al. 2023 with ``shapes="paper"``;
``save_model``/``load_model`` round-trip a tensorized model through a ``save_pretrained``-style folder, its
``config.json`` recording how it was tensorized (``TensorizeConfig``).
"""

from tensornet.nn import LayerReport, TensorizeReport
from tensornet.nn._head import TiedTTHead

from ._data import Corpus, load_corpus, load_tokenizer, stdlib_corpus, train_tokenizer
from ._lowrank import LowRankLinear
from ._model import PRESETS, build_model, gpt2_config, load_model, save_model
from ._tensorize import TensorizeConfig, balanced_shapes, layer_shapes, lowrank, paper_shapes, tensorize
from ._train import History, TrainConfig, evaluate, train

__all__ = [
    "PRESETS",
    "Corpus",
    "History",
    "LayerReport",
    "LowRankLinear",
    "TensorizeConfig",
    "TensorizeReport",
    "TiedTTHead",
    "TrainConfig",
    "balanced_shapes",
    "build_model",
    "evaluate",
    "gpt2_config",
    "layer_shapes",
    "load_corpus",
    "load_model",
    "load_tokenizer",
    "lowrank",
    "paper_shapes",
    "save_model",
    "stdlib_corpus",
    "tensorize",
    "train",
    "train_tokenizer",
]
