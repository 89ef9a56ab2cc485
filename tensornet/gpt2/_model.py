"""GPT-2 configurations, and saving/loading dense or tensorized models as ``save_pretrained``-style folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._tensorize import rebuild

# name -> (n_layer, n_embd, n_head); GPT-2 small and medium as published, "tiny" for CPU runs.
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (4, 256, 4),
    "small": (12, 768, 12),
    "medium": (24, 1024, 16),
}


def gpt2_config(
    *,
    vocab_size: int,
    block_size: int,
    preset: str | None = "tiny",
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_head: int | None = None,
    dropout: float = 0.0,
    eos_token_id: int = 0,
):
    """A ``GPT2Config`` from a preset, with any of ``n_layer``/``n_embd``/``n_head`` overriding it."""
    from transformers import GPT2Config

    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    base = PRESETS[preset] if preset is not None else (None, None, None)
    layers, width, heads = (v if v is not None else b for v, b in zip((n_layer, n_embd, n_head), base))
    if layers is None or width is None or heads is None:
        raise ValueError("without a preset give --n-layer, --n-embd and --n-head")
    for name, value in (
        ("n_layer", layers),
        ("n_embd", width),
        ("n_head", heads),
        ("block_size", block_size),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if width % heads:
        raise ValueError(f"n_embd {width} is not divisible by n_head {heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )


def build_model(config, *, seed: int | None = None, device: str | torch.device | None = None):
    """``GPT2LMHeadModel(config)`` with GPT-2's initialisation, seeded."""
    from transformers import GPT2LMHeadModel

    if seed is not None:
        torch.manual_seed(seed)
    model: Any = GPT2LMHeadModel(config)
    return model.to(device) if device is not None else model


_WEIGHTS = "model.safetensors"


def save_model(model: nn.Module, directory: str | os.PathLike, *, tokenizer=None) -> Path:
    """Write ``config.json`` (with ``config.tensornet`` recording any tensorization), ``model.safetensors``
    (the tied LM head left out, as Hugging Face does) and optionally ``tokenizer.json``.

    The folder is assembled next to ``directory`` and renamed into place, so it is never left half-written.
    A dense model's folder also loads with ``GPT2LMHeadModel.from_pretrained``.
    """
    from safetensors.torch import save_file

    target = Path(directory)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model = getattr(model, "module", model)  # unwrap DDP
    config: Any = model.config
    config.save_pretrained(tmp)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp / _WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(str(tmp / "tokenizer.json"))
    if target.exists():
        old = target.with_name(f".{target.name}.old{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)
    return target


def load_model(directory: str | os.PathLike, *, device: str | torch.device | None = None):
    """Load a folder written by ``save_model`` (dense or tensorized) or a local Hugging Face GPT-2 folder."""
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(directory)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{str(path)!r} has no config.json; expected a folder written by save_pretrained/save_model"
        )
    try:
        json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path / 'config.json')!r} is not valid JSON: {err}") from None
    config = GPT2Config.from_pretrained(path)
    model: Any
    settings = getattr(config, "tensornet", None)
    if settings is None:
        if not (path / _WEIGHTS).is_file() and not (path / "pytorch_model.bin").is_file():
            raise ValueError(f"{str(path)!r} has no model.safetensors or pytorch_model.bin")
        model = GPT2LMHeadModel.from_pretrained(path)
    else:
        if not (path / _WEIGHTS).is_file():
            raise ValueError(f"{str(path)!r} has no {_WEIGHTS}")
        model = GPT2LMHeadModel(config)
        rebuild(model, settings)
        state = load_file(str(path / _WEIGHTS))
        dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(dtypes) == 1:  # keep the saved precision (GPT2LMHeadModel(config) builds float32)
            model.to(dtypes.pop())
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise ValueError(
                f"{str(path)!r} does not match its recorded tensorization: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        if not settings.get("embeddings"):  # a TT embedding's head is tied by construction
            model.tie_weights()
    model.eval()
    return model.to(device) if device is not None else model
