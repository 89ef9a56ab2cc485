"""What a model folder must hold, checked before anything is built: config.json, the weights' header, memory."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from . import files as _files
from ._tensorize import TensorizeConfig

WEIGHTS = "model.safetensors"
CHECKSUM = "tensornet_sha256"  # config.json key: SHA-256 of the weights and tokenizer.json saved with it
CONFIG_BYTES = 16 * 2**20  # the most a config.json may hold
TOKENIZER_BYTES = 256 * 2**20
# the sizes GPT2Config reads, capped so that a crafted config.json allocates nothing before the memory check
_SIZES = {"vocab_size": 2**31 - 1, "n_positions": 2**20, "n_embd": 2**16, "n_layer": 1024, "n_head": 2**16}


def memory_bytes(device: torch.device | str | None = None) -> int | None:
    """A CUDA ``device``'s total memory, else this machine's (or its cgroup limit when lower); None if unknown."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    total: int | None = None
    with contextlib.suppress(ValueError, OSError, AttributeError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(ValueError, OSError):
            limit = int(Path(limit_file).read_text().strip())  # "max": no limit (ValueError)
            total = limit if total is None else min(total, limit)
    return total


def dense_params(*, vocab: int, positions: int, width: int, layers: int, inner: int | None = None) -> int:
    """Parameters of the dense ``GPT2LMHeadModel`` (head tied), which is built before any tensorization."""
    inner = inner or 4 * width
    block = 4 * width + (3 * width * width + 3 * width) + (width * width + width)
    block += (width * inner + inner) + (inner * width + width)
    return vocab * width + positions * width + layers * block + 2 * width


def read_config(directory: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """A model folder's ``config.json``, parsed, and the sizes it gives, checked (nothing is built).

    Raises ValueError (or FileNotFoundError/NotADirectoryError) naming the file.
    """
    path = Path(directory)
    if not str(directory) or not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"load_model: {str(path)!r} is a file; give the model's folder")
    file = path / "config.json"
    if not file.exists():
        raise ValueError(
            f"{str(path)!r} has no config.json; expected a folder written by save_pretrained/save_model"
        )
    try:
        raw = _files.parse_json(_files.read_small_file(file, CONFIG_BYTES, "load_model"))
    except ValueError as err:
        raise ValueError(f"load_model: {str(file)!r} is not a readable GPT-2 config.json ({err})") from None
    if not isinstance(raw, dict) or raw.get("model_type", "gpt2") != "gpt2":
        raise ValueError(
            f"load_model: {str(file)!r} is not a GPT-2 config.json; load_model reads GPT-2 folders"
        )
    from transformers import GPT2Config

    defaults, sizes = GPT2Config(), {}
    for key, top in {**_SIZES, "n_inner": 2**20}.items():
        value = sizes[key] = raw.get(key, getattr(defaults, key))
        if (value is not None or key != "n_inner") and (type(value) is not int or not 1 <= value <= top):
            raise ValueError(
                f"load_model: {str(file)!r}: {key} must be an integer in [1, {top:,}], got {value!r}"
            )
    need = 4 * dense_params(
        vocab=sizes["vocab_size"],
        positions=sizes["n_positions"],
        width=sizes["n_embd"],
        layers=sizes["n_layer"],
        inner=sizes["n_inner"],
    )
    have = memory_bytes()
    if have is not None and need > have:  # the dense model is built before the weights are loaded
        raise ValueError(
            f"load_model: the model {str(file)!r} describes ({_gives(sizes)}) needs {need / 2**30:,.1f} GiB "
            f"to build, more than this machine's {have / 2**30:,.1f} GiB of memory"
        )
    return raw, sizes


def _gives(sizes: dict[str, Any]) -> str:
    return ", ".join(f"{k} {sizes[k]}" for k in ("n_layer", "n_positions", "n_embd", "vocab_size"))


def _weights_file(path: Path) -> Path:
    """The folder's safetensors weights; pickle or sharded weights are refused, with what to do."""
    weights = path / WEIGHTS
    if os.path.lexists(weights):
        what = _files.not_a_file(weights)  # a FIFO would never end, a folder is no file
        if what is not None:
            raise ValueError(
                f"load_model: {str(weights)!r} {what}; give a model folder with its weights file"
            )
        return weights
    if (path / "pytorch_model.bin").is_file():
        raise ValueError(
            f"load_model: {str(path)!r} holds pytorch_model.bin but no {WEIGHTS}; pickle weights are not loaded "
            "because unpickling can run arbitrary code. Convert them to safetensors once, where you trust the "
            "file, with GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)"
        )
    raise ValueError(f"{str(path)!r} has no {WEIGHTS} (load_model reads one safetensors file, not shards)")


def _expected_state(config, tensorized: TensorizeConfig | None) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the model ``config`` and the record describe, built on the meta device."""
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        model: Any = GPT2LMHeadModel(config)
        if tensorized is not None:
            tensorized.apply(model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def base_names(names: dict) -> dict:
    """A GPT2Model (base) checkpoint's names as GPT2LMHeadModel's (``transformer.`` prefixed)."""
    if names and not any(k.startswith("transformer.") for k in names):
        return {(k if k.startswith("lm_head.") else f"transformer.{k}"): v for k, v in names.items()}
    return names


def checked_folder(path: Path) -> tuple[Any, TensorizeConfig | None, Path, str | None]:
    """The folder's GPT2Config, tensornet record, weights file and checksum, checked against the weights' header."""
    from transformers import GPT2Config

    raw, sizes = read_config(path)
    file, weights = path / "config.json", _weights_file(path)
    checksum = raw.pop(CHECKSUM, None)
    try:  # transformers and the record raise many error types for a crafted config.json
        config = GPT2Config.from_dict(raw)
        record = raw.get("tensornet")
        tensorized = None if record is None else TensorizeConfig.from_json(record, str(file), "load_model")
        expected = _expected_state(config, tensorized)
    except Exception as err:
        why = " ".join(str(err).split())  # one line, whatever the library wrote
        raise ValueError(
            f"load_model: {str(file)!r} is not a GPT-2 config.json load_model can build ({why})"
        ) from None
    unreadable = f"load_model: {str(weights)!r} is not a readable safetensors file"
    header = _files.read_safetensors(
        weights, unreadable, "; save the model again or restore the file", shapes=True
    )[1]
    header = header if tensorized is not None else base_names(header)
    tied = (tensorized is not None and tensorized.embeddings) or bool(config.tie_word_embeddings)
    skip = re.compile(r"attn\.(masked_)?bias$|\._extra_state$" + ("|^lm_head.weight$" if tied else ""))
    differ = [
        f"{k} {header.get(k)} (expected {expected.get(k)})"
        for k in sorted(expected.keys() | header.keys())
        if header.get(k) != expected.get(k) and not skip.search(k)
    ]
    if differ:
        raise ValueError(
            f"load_model: the weights in {str(weights)!r} do not match {str(file)!r} ({_gives(sizes)}): "
            f"{'; '.join(differ[:4])}. Restore the config.json that was saved with the weights"
        )
    return config, tensorized, weights, checksum


def folder_sha256(state: dict[str, torch.Tensor], tokenizer: Path) -> str:
    """The checksum ``save_model`` records in config.json: the tensors and ``tokenizer`` (when it exists)."""
    text = _files.read_small_file(tokenizer, TOKENIZER_BYTES, "load_model") if tokenizer.exists() else b""
    return _files.content_sha256(state, text)
