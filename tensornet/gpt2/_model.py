"""GPT-2 configurations, and saving/loading dense or tensorized models as ``save_pretrained``-style folders."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import files as _files
from ._modelfile import _CHECKSUM, _WEIGHTS, base_names, checked_folder, read_weights
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
    if not _files.plain_file(mark):
        return False
    try:
        record = _files.parse_json(_files.read_small_file(mark, 65536, "save_model"))
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("format") == _MARK["format"]


def check_model_target(
    target: Path, *, overwrite: bool = False, where: str = "save_model", require_mark: bool = True
) -> None:
    """Refuse a ``save_model`` target that would lose someone's files (see :func:`save_model`) or is not writable.

    ``require_mark=False``: a run folder's own ``model/``, which its manifest vouches for. Nothing is changed.
    """
    target = Path(target)
    _files.check_name_length(target, where)
    _files.restore_set_aside(target, _files.MODEL_FILES)  # a save_model killed between its two renames
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
        foreign = [p.name for p in entries if p.name not in _files.MODEL_FILES or not _files.plain_file(p)]
        if foreign:
            raise FileExistsError(
                f"{where}: {str(target)!r} holds files save_model does not write ({', '.join(foreign[:5])}); "
                f"{flag} replaces only save_model's own folders, so nothing was changed: choose another folder"
            )
        if require_mark and not _marked(target):
            raise FileExistsError(
                f"{where}: {str(target)!r} was not written by tensornet's save_model (it has no "
                f"{_files.MODEL_MARK}); {flag} replaces only save_model's own folders, so nothing was changed: "
                "move it away yourself or choose another folder"
            )
        _files.probe_writable(target, where)
    _files.probe_writable(target.parent, where)


def save_model(
    model: nn.Module, directory: str | os.PathLike, *, tokenizer=None, overwrite: bool = False
) -> Path:
    """Write config.json, model.safetensors, optionally tokenizer.json, and the mark tensornet-model.json.

    ``config.json`` has ``config.tensornet`` recording any tensorization; ``model.safetensors`` leaves the
    tied LM head out, as Hugging Face does, with a SHA-256 of the tensors in its metadata.

    An existing ``directory`` is used only when empty, or with ``overwrite=True`` when it is a folder
    ``save_model`` wrote (marked, holding nothing but these files); a file, or any other folder, is refused.
    The folder is assembled next to ``directory`` (every file created new, never through a symbolic link) and
    renamed into place, so it is never left half-written. A dense model's folder also loads with
    ``GPT2LMHeadModel.from_pretrained``.
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


def _write_model(model: nn.Module, given: Path, tokenizer) -> None:
    target = Path(os.path.abspath(given))  # "." or "..": the folder still has a name to rename
    target.parent.mkdir(parents=True, exist_ok=True)
    # leftovers of an interrupted save_model of this folder, by a process that is gone
    _files.remove_stale_tmp(target.parent, [target.name], dir_files=_files.MODEL_FILES, live=False)
    model = getattr(model, "module", model)  # unwrap DDP
    config: Any = model.config
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    if hasattr(config, "validate"):  # as save_pretrained does
        config.validate()
    config_json = config.to_json_string(use_diff=True).encode("utf-8")  # what save_pretrained writes
    tokenizer_json = None if tokenizer is None else tokenizer.to_str(pretty=True).encode("utf-8")
    metadata = {"format": "pt", _CHECKSUM: _files.content_sha256(state)}
    tmp = _files.make_tmp_dir(target)
    old: Path | None = None  # the replaced folder while it is out of place
    try:
        _files.write_new(tmp / "config.json", lambda f: f.write(config_json))
        _files.write_new(tmp / _WEIGHTS, lambda f: _files.write_weights(f, state, metadata))
        if tokenizer_json is not None:
            _files.write_new(tmp / "tokenizer.json", lambda f: f.write(tokenizer_json))
        mark = (json.dumps(_MARK, indent=2) + "\n").encode("utf-8")
        _files.write_new(tmp / _files.MODEL_MARK, lambda f: f.write(mark))
        if target.is_dir() and any(target.iterdir()):  # checked above: only save_model's files
            # two renames: killed between them, the next start renames the old folder back
            # (_files.remove_stale_tmp); failing between them, it is renamed back below
            old = _files.set_aside(target)
        os.replace(tmp, target)  # a rename replaces an empty folder, or makes a new one
        if old is not None:
            _files.remove_folder(old)
    except BaseException as err:
        with contextlib.suppress(OSError):
            if old is not None and not os.path.lexists(target):
                os.replace(old, target)
            for folder in (tmp, old):
                if folder is not None and folder.is_dir() and not folder.is_symlink():
                    _files.remove_folder(folder)
        if isinstance(err, OSError) and err.errno is not None:
            raise _files.write_error(target, err) from None
        raise
    _files.fsync_dir(target.parent)


def load_model(directory: str | os.PathLike, *, device: str | torch.device | None = None):
    """Load a folder written by ``save_model`` (dense or tensorized) or a local Hugging Face GPT-2 folder.

    A Hugging Face folder needs ``model.safetensors``. Pickle weights (``pytorch_model.bin``) are refused:
    unpickling can run code.

    ``config.json`` is checked before anything is built: types and ranges of its settings, the tensornet
    record, agreement with the tensor shapes in the weights file's header, and the memory the model needs.
    """
    from transformers import GPT2LMHeadModel

    path = Path(directory)
    config, tensorized, weights = checked_folder(path)
    state = base_names(read_weights(weights))
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
