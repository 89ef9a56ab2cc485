"""GPT-2 configurations, and saving/loading dense or tensorized models as ``save_pretrained``-style folders."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import files as _files
from ._modelfile import CHECKSUM, WEIGHTS, base_names, checked_folder, folder_sha256
from ._shapes import PRESETS, count


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
        count("gpt2_config", name, value)
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


_MARK = {"format": "tensornet-model", "version": 1, "written_by": "tensornet.gpt2.save_model"}


def _marked(folder: Path) -> bool:
    """Whether ``folder`` carries save_model's mark file."""
    mark = folder / _files.MODEL_MARK
    try:
        record = _files.parse_json(_files.read_small_file(mark, 65536, "save_model"))
    except ValueError:
        return False
    return _files.plain_file(mark) and isinstance(record, dict) and record.get("format") == _MARK["format"]


def check_model_target(
    target: Path, *, overwrite: bool = False, where: str = "save_model", require_mark: bool = True
) -> None:
    """Refuse a ``save_model`` target that would lose someone's files (see :func:`save_model`) or is not writable.

    ``require_mark=False``: a run folder's own ``model/``, which its manifest vouches for. Nothing is changed.
    """
    target = Path(target)
    _files.check_name_length(target, where)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(
            f"{where}: {str(target)!r} is a file or a link, not a folder; choose a folder path"
        )
    if not target.exists():
        return _files.check_creatable(target, where)
    flag = "--overwrite" if where.startswith("--") else "overwrite=True"
    own = [p for p in target.iterdir() if _files.tmp_owner(p.name) not in _files.MODEL_FILES]  # not leftovers
    if own and not overwrite:
        raise FileExistsError(
            f"{where}: {str(target)!r} already exists and is not empty; pass {flag} to replace a model "
            "folder written by save_model, or choose a new folder"
        )
    foreign = [p.name for p in own if p.name not in _files.MODEL_FILES or not _files.plain_file(p)]
    if own and (foreign or (require_mark and not _marked(target))):
        raise FileExistsError(
            f"{where}: {str(target)!r} was not written by tensornet's save_model (it has no {_files.MODEL_MARK}, "
            f"or holds {', '.join(foreign[:5]) or 'nothing else'}); {flag} replaces only save_model's own "
            "folders, so nothing was changed: choose another folder"
        )
    _files.probe_writable(target, where)


def save_model(
    model: nn.Module, directory: str | os.PathLike, *, tokenizer=None, overwrite: bool = False
) -> Path:
    """Write config.json, model.safetensors, optionally tokenizer.json, and the mark tensornet-model.json.

    ``config.json`` has ``config.tensornet`` recording any tensorization and the SHA-256 of the weights and
    tokenizer written with it; ``model.safetensors`` leaves the tied LM head out, as Hugging Face does.

    An existing ``directory`` is used only when empty, or with ``overwrite=True`` when it is a folder
    ``save_model`` wrote (marked, holding nothing but these files); a file, or any other folder, is refused.
    Each file is written to a new temporary file and renamed into place, config.json last: a save killed at
    any moment leaves the old model, the new one, or a folder that fails its checksum (never a mix that
    loads). A dense model's folder also loads with ``GPT2LMHeadModel.from_pretrained``.
    """
    given = Path(directory)
    check_model_target(given, overwrite=overwrite)
    _write_model(model, given, tokenizer)
    return given


def save_run_model(model: nn.Module, directory: Path, *, tokenizer=None) -> Path:
    """``save_model`` into a run folder's own (locked) ``model/``, replaced when it holds only save_model's files."""
    check_model_target(directory, overwrite=True, where="--out", require_mark=False)
    _write_model(model, directory, tokenizer)
    return directory


def _write_model(model: Any, target: Path, tokenizer) -> None:
    from safetensors.torch import save_file

    model = getattr(model, "module", model)  # unwrap DDP
    state: dict[str, torch.Tensor] = {
        k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"
    }
    if hasattr(model.config, "validate"):  # as save_pretrained does
        model.config.validate()
    config = json.loads(model.config.to_json_string(use_diff=True))  # what save_pretrained writes
    text = None if tokenizer is None else tokenizer.to_str(pretty=True).encode("utf-8")
    config[CHECKSUM] = _files.content_sha256(state, text or b"")
    mark = (json.dumps(_MARK, indent=2) + "\n").encode("utf-8")
    target.mkdir(parents=True, exist_ok=True)
    _files.remove_stale_tmp(target, _files.MODEL_FILES, live=False)  # of a killed save_model
    # one file at a time, config.json last: killed before it, the old config.json fails its checksum
    _files.replace_file(target / _files.MODEL_MARK, lambda p: p.write_bytes(mark))
    _files.replace_file(target / WEIGHTS, lambda p: save_file(state, p, metadata={"format": "pt"}))
    if text is None:
        (target / "tokenizer.json").unlink(missing_ok=True)
    else:
        _files.replace_file(target / "tokenizer.json", lambda p: p.write_bytes(text))
    config_json = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8")
    _files.replace_file(target / "config.json", lambda p: p.write_bytes(config_json))


def load_model(directory: str | os.PathLike, *, device: str | torch.device | None = None):
    """Load a folder written by ``save_model`` (dense or tensorized) or a local Hugging Face GPT-2 folder.

    A Hugging Face folder needs ``model.safetensors``. Pickle weights (``pytorch_model.bin``) are refused:
    unpickling can run code.

    ``config.json`` is checked before anything is built: its sizes and the memory they need, then (on the
    meta device) the model it and its tensornet record describe against the weights file's header; the
    weights and tokenizer against the checksum save_model recorded. Raises ValueError naming the file.
    """
    from transformers import GPT2LMHeadModel

    path = Path(directory)
    config, tensorized, weights, checksum = checked_folder(path)
    unreadable = f"load_model: {str(weights)!r} is not a readable safetensors file"
    state = _files.read_safetensors(weights, unreadable, "; save the model again or restore the file")[1]
    if checksum is not None and folder_sha256(state, path / "tokenizer.json") != checksum:
        raise ValueError(
            f"load_model: {str(path)!r} fails its checksum: its weights or tokenizer.json are not what save_model "
            "wrote with its config.json (damaged, or an interrupted save); save the model again"
        )
    state = base_names(state)
    model: Any = GPT2LMHeadModel(config)
    if tensorized is not None:
        tensorized.apply(model)
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # keep the saved precision (GPT2LMHeadModel(config) builds float32)
        model.to(dtypes.pop())
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(
            f"load_model: the weights in {str(weights)!r} do not fit {str(path / 'config.json')!r}: "
            f"{str(err)[:400]}"
        ) from None
    if not (tensorized is not None and tensorized.embeddings) and config.tie_word_embeddings:
        model.tie_weights()  # a TT embedding's head is tied by construction
    model.eval()
    return model.to(device) if device is not None else model
