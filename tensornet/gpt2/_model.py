"""GPT-2 configurations, and saving/loading dense or tensorized models as ``save_pretrained``-style folders."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _files
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
_CHECKSUM = "tensornet.sha256"  # safetensors metadata key: SHA-256 of the tensors, verified by load_model
_PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


def check_model_target(target: Path, *, overwrite: bool = False, where: str = "save_model") -> None:
    """Refuse a ``save_model`` target that would lose someone's files; check it can be written.

    A file is always refused; an existing folder is used when empty, and replaced only with ``overwrite`` and
    only when it holds nothing but what ``save_model`` writes. Nothing is created or changed."""
    target = Path(target)
    if target.is_symlink():
        raise FileExistsError(f"{where}: {str(target)!r} is a symbolic link; give a real folder path")
    if not target.exists():
        _files.check_creatable(target, where)
        return
    if not target.is_dir():
        raise FileExistsError(f"{where}: {str(target)!r} is a file, not a folder; choose a folder path")
    entries = sorted(target.iterdir())
    if entries:
        flag = "--overwrite" if where.startswith("--") else "overwrite=True"
        if not overwrite:
            raise FileExistsError(
                f"{where}: {str(target)!r} already exists and is not empty; pass {flag} to replace a model "
                "folder written by save_model, or choose a new folder"
            )
        foreign = [
            p.name for p in entries if p.name not in _files.MODEL_FILES or not p.is_file() or p.is_symlink()
        ]
        if foreign:
            raise FileExistsError(
                f"{where}: {str(target)!r} holds files save_model does not write ({', '.join(foreign[:5])}); "
                f"{flag} replaces only save_model's own folders, so nothing was changed: choose another folder"
            )
        _files.probe_writable(target, where)
    _files.probe_writable(target.parent, where)


def save_model(
    model: nn.Module, directory: str | os.PathLike, *, tokenizer=None, overwrite: bool = False
) -> Path:
    """Write ``config.json`` (with ``config.tensornet`` recording any tensorization), ``model.safetensors``
    (the tied LM head left out, as Hugging Face does, with a SHA-256 of the tensors in its metadata) and
    optionally ``tokenizer.json``.

    An existing ``directory`` is used only when empty, or with ``overwrite=True`` when it holds nothing but
    these files (a folder written by ``save_model``); a file, or a folder with other files, is refused. The
    folder is assembled next to ``directory`` and renamed into place, so it is never left half-written.
    A dense model's folder also loads with ``GPT2LMHeadModel.from_pretrained``.
    """
    given = Path(directory)
    check_model_target(given, overwrite=overwrite)
    target = Path(os.path.abspath(given))  # "." or "..": the folder still has a name to rename
    target.parent.mkdir(parents=True, exist_ok=True)
    # leftovers of an interrupted save_model of this folder, by a process that is gone
    _files.remove_stale_tmp(target.parent, [target.name], dir_files=_files.MODEL_FILES, live=False)
    tmp = _files.tmp_path(target)
    model = getattr(model, "module", model)  # unwrap DDP
    config: Any = model.config
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    tmp.mkdir()
    try:
        config.save_pretrained(tmp)
        metadata = {"format": "pt", _CHECKSUM: _files.content_sha256(state)}
        _files.write_safetensors(tmp / _WEIGHTS, state, metadata)
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        for file in tmp.iterdir():
            with open(file, "rb+") as f:
                os.fsync(f.fileno())
        if target.is_dir() and any(target.iterdir()):  # checked above: only save_model's files
            old = _files.tmp_path(target, "old")
            os.replace(target, old)
            os.replace(tmp, target)
            for file in old.iterdir():
                file.unlink()
            old.rmdir()
        else:  # new, or an empty folder (rename replaces an empty folder)
            os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            for file in tmp.iterdir():
                file.unlink()
            tmp.rmdir()
        raise
    return given


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the checksum ``save_model`` stores (when present)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is not a mapping)
    except Exception as err:  # safetensors raises its own error type for every malformed file
        raise ValueError(
            f"load_model: {str(file)!r} is not a readable safetensors file ({type(err).__name__}: {err}); it is "
            "truncated or damaged: save the model again or restore the file"
        ) from None
    expected = metadata.get(_CHECKSUM)
    if expected is not None and _files.content_sha256(state) != expected:
        raise ValueError(
            f"load_model: {str(file)!r} fails its checksum: the weights changed after save_model wrote them; "
            "save the model again or restore the file"
        )
    return state


def load_model(directory: str | os.PathLike, *, device: str | torch.device | None = None):
    """Load a folder written by ``save_model`` (dense or tensorized) or a local Hugging Face GPT-2 folder with
    ``model.safetensors``. Pickle weights (``pytorch_model.bin``) are refused: unpickling can run code."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(directory)
    if not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"load_model: {str(path)!r} is a file; give the model's folder")
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{str(path)!r} has no config.json; expected a folder written by save_pretrained/save_model"
        )
    try:
        json.loads((path / "config.json").read_text())
        config = GPT2Config.from_pretrained(path)
    except (ValueError, TypeError, OSError, UnicodeDecodeError) as err:
        raise ValueError(
            f"load_model: {str(path / 'config.json')!r} is not a valid GPT-2 config: {err}"
        ) from None
    weights = path / _WEIGHTS
    if not weights.is_file():
        pickled = [name for name in _PICKLE_WEIGHTS if (path / name).is_file()]
        if pickled:
            raise ValueError(
                f"load_model: {str(path)!r} holds {pickled[0]} but no {_WEIGHTS}; pickle weights are not loaded "
                "because unpickling can run arbitrary code. Convert them to safetensors once, where you trust the file, with "
                "GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)"
            )
        if (path / f"{_WEIGHTS}.index.json").is_file():
            raise ValueError(
                f"load_model: {str(path)!r} holds sharded weights, which load_model does not read"
            )
        raise ValueError(f"{str(path)!r} has no {_WEIGHTS}")
    state = _read_weights(weights)
    settings = getattr(config, "tensornet", None)
    model: Any = GPT2LMHeadModel(config)
    if settings is not None:
        try:
            if not isinstance(settings, dict):
                raise TypeError(f"expected an object, got {type(settings).__name__}")
            rebuild(model, settings)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"load_model: the tensornet record in {str(path / 'config.json')!r} is malformed "
                f"({type(err).__name__}: {err})"
            ) from None
    elif state and not any(k.startswith("transformer.") for k in state):  # a GPT2Model (base) checkpoint
        state = {(k if k.startswith("lm_head.") else f"transformer.{k}"): v for k, v in state.items()}
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # keep the saved precision (GPT2LMHeadModel(config) builds float32)
        model.to(dtypes.pop())
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(
            f"load_model: the weights in {str(weights)!r} do not fit {str(path / 'config.json')!r}: "
            f"{str(err)[:400]}"
        ) from None
    tied = settings.get("embeddings") if settings is not None else False
    if config.tie_word_embeddings or tied:
        missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in unexpected if not re.search(r"attn\.(masked_)?bias$", k)]  # old HF buffers
    if missing or unexpected:
        cores = settings is None and any(
            re.search(r"\.(packed_cores|cores\.\d+|a|b)$", k) for k in unexpected
        )
        why = (
            " The weights hold TT cores or low-rank factors but config.json has no tensornet record: restore "
            "the config.json that save_model wrote with them."
            if cores
            else ""
        )
        raise ValueError(
            f"load_model: the weights in {str(weights)!r} do not match {str(path / 'config.json')!r}: missing "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}.{why}"
        )
    if not tied and config.tie_word_embeddings:  # a TT embedding's head is tied by construction
        model.tie_weights()
    model.eval()
    return model.to(device) if device is not None else model
