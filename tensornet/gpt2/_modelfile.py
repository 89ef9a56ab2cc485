"""What a model folder must hold, checked before anything is built: config.json, the weights' header, memory."""

from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from . import files as _files
from ._shapes import is_int
from ._tensorize import TensorizeConfig

_WEIGHTS = "model.safetensors"
_CHECKSUM = "tensornet.sha256"  # safetensors metadata key: SHA-256 of the tensors, verified by load_model
_PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


# ---------------------------------------------------------------------------------- checks before building
CONFIG_BYTES = 16 * 2**20  # the most a config.json may hold
# (key, upper bound): integers GPT2Config reads, checked before anything is built
_SIZES = {"vocab_size": 2**31 - 1, "n_positions": 2**20, "n_embd": 2**16, "n_layer": 1024, "n_head": 2**16}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_TOKEN = (lambda v: v is None or (is_int(v) and v >= 0), "null or a token id >= 0")
_FLAG = (lambda v: isinstance(v, bool), "true or false")
_PROBABILITY = (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
_ATTENTION = (
    lambda v: v in (None, "eager", "sdpa"),
    "null, 'eager' or 'sdpa' (what runs here without optional packages)",
)
_RULES = {  # key: (test, rule in words), for the keys config.json gives
    "n_inner": (
        lambda v: v is None or (is_int(v) and 1 <= v <= 2**20),
        "null or an integer in [1, 1,048,576]",
    ),
    **dict.fromkeys(("bos_token_id", "eos_token_id", "pad_token_id"), _TOKEN),
    **dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"), _PROBABILITY),
    "layer_norm_epsilon": (lambda v: _is_number(v) and v > 0, "a finite number > 0"),
    "initializer_range": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    **dict.fromkeys(("add_cross_attention", "scale_attn_weights", "scale_attn_by_inverse_layer_idx"), _FLAG),
    **dict.fromkeys(("reorder_and_upcast_attn", "tie_word_embeddings", "use_cache"), _FLAG),
    **dict.fromkeys(("_attn_implementation", "attn_implementation"), _ATTENTION),
}


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


def _bad(file: Path, key: str, rule: str, value: Any) -> ValueError:
    return ValueError(
        f"load_model: {str(file)!r}: {key} must be {rule}, got {value!r}; restore the config.json that was "
        "saved with the weights"
    )


def _check_config(raw: Any, file: Path) -> dict[str, Any]:
    """The sizes a parsed ``config.json`` gives (GPT2Config's defaults for keys not given), its settings checked."""
    from transformers import GPT2Config
    from transformers.activations import ACT2FN

    if not isinstance(raw, dict):
        raise ValueError(
            f"load_model: {str(file)!r} is not a GPT-2 config (a JSON object), it is a {type(raw).__name__}"
        )
    model_type = raw.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(
            f"load_model: {str(file)!r} describes a {model_type!r} model; load_model reads GPT-2 folders"
        )
    defaults = GPT2Config()
    sizes: dict[str, Any] = {"n_inner": raw.get("n_inner")}
    for key, top in _SIZES.items():
        value = raw.get(key, getattr(defaults, key))
        if not is_int(value) or not 1 <= value <= top:
            raise _bad(file, key, f"an integer in [1, {top:,}]", value)
        sizes[key] = value
    for key, (ok, rule) in _RULES.items():
        if key in raw and not ok(raw[key]):
            raise _bad(file, key, rule, raw[key])
    if sizes["n_embd"] % sizes["n_head"]:
        raise _bad(file, "n_head", f"a divisor of n_embd {sizes['n_embd']}", sizes["n_head"])
    activation = raw.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in ACT2FN:
        raise _bad(file, "activation_function", f"one of {sorted(ACT2FN)}", activation)
    return sizes


def _unreadable(file: Path) -> tuple[str, str]:
    return (
        f"load_model: {str(file)!r} is not a readable safetensors file",
        "; it is truncated or damaged: save the model again or restore the file",
    )


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the checksum ``save_model`` stores (when present)."""
    metadata, state = _files.read_safetensors(file, *_unreadable(file))
    expected = metadata.get(_CHECKSUM)
    if expected is not None and _files.content_sha256(state) != expected:
        raise ValueError(
            f"load_model: {str(file)!r} fails its checksum: the weights changed after save_model wrote them; "
            "save the model again or restore the file"
        )
    return state


def _check_memory(sizes: dict[str, Any], config: Path) -> None:
    """The dense model ``config.json`` describes must fit this machine's memory (it is built before loading)."""
    need = 4 * dense_params(
        vocab=sizes["vocab_size"],
        positions=sizes["n_positions"],
        width=sizes["n_embd"],
        layers=sizes["n_layer"],
        inner=sizes["n_inner"],
    )
    have = memory_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"load_model: the model {str(config)!r} describes ({_gives(sizes)}) needs {need / 2**30:,.1f} GiB "
            f"to build, more than this machine's {have / 2**30:,.1f} GiB of memory"
        )


def _expected_state(config, tensorized: TensorizeConfig | None) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the model ``config`` and the record describe, built on the meta device."""
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        model: Any = GPT2LMHeadModel(config)
        if tensorized is not None:
            tensorized.apply(model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatch(
    expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]], tied: bool
) -> tuple[list[str], list[str], list[str]]:
    # a TT layer's core shapes (its _extra_state) are absent from folders saved before they were recorded
    missing = [
        k
        for k in expected
        if k not in got and not (tied and k == "lm_head.weight") and not k.endswith("._extra_state")
    ]
    unexpected = [k for k in got if k not in expected and not re.search(r"attn\.(masked_)?bias$", k)]
    shapes = [
        f"{k} {got[k]} (expected {expected[k]})" for k in got if k in expected and got[k] != expected[k]
    ]
    return missing, unexpected, shapes


def _gives(sizes: dict[str, Any]) -> str:
    return ", ".join(f"{k} {sizes[k]}" for k in ("n_layer", "n_positions", "n_embd", "vocab_size"))


def _few(items: list[str], n: int) -> str:
    return f"{items[:n]}{' ...' if len(items) > n else ''}"


def read_config(directory: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """A model folder's ``config.json``, parsed and checked, and the sizes it gives (nothing is built).

    Raises ValueError (or FileNotFoundError/NotADirectoryError) naming the file.
    """
    if not str(directory):
        raise ValueError("load_model: the model folder path is empty")
    path = Path(directory)
    _files.restore_set_aside(path, _files.MODEL_FILES)  # a save_model killed between its two renames
    if not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"load_model: {str(path)!r} is a file; give the model's folder")
    config_file = path / "config.json"
    if not config_file.exists():
        raise ValueError(
            f"{str(path)!r} has no config.json; expected a folder written by save_pretrained/save_model"
        )
    try:
        raw = _files.parse_json(_files.read_small_file(config_file, CONFIG_BYTES, "load_model"))
    except ValueError as err:
        if str(err).startswith("load_model:"):
            raise
        raise ValueError(f"load_model: {str(config_file)!r} is not valid JSON ({err})") from None
    return raw, _check_config(raw, config_file)


def base_names(names: dict) -> dict:
    """A GPT2Model (base) checkpoint's names as GPT2LMHeadModel's (``transformer.`` prefixed)."""
    if names and not any(k.startswith("transformer.") for k in names):
        return {(k if k.startswith("lm_head.") else f"transformer.{k}"): v for k, v in names.items()}
    return names


def _weights_file(path: Path) -> Path:
    """The folder's safetensors weights; pickle or sharded weights are refused, with what to do."""
    weights = path / _WEIGHTS
    if weights.exists() or weights.is_symlink():
        what = _files.not_a_file(weights)  # a FIFO would never end, a folder is no file
        if what is not None:
            raise ValueError(
                f"load_model: {str(weights)!r} {what}; give a model folder with its weights file"
            )
        return weights
    pickled = [name for name in _PICKLE_WEIGHTS if (path / name).is_file()]
    if pickled:
        raise ValueError(
            f"load_model: {str(path)!r} holds {pickled[0]} but no {_WEIGHTS}; pickle weights are not loaded "
            "because unpickling can run arbitrary code. Convert them to safetensors once, where you trust the "
            "file, with GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)"
        )
    if (path / f"{_WEIGHTS}.index.json").is_file():
        raise ValueError(f"load_model: {str(path)!r} holds sharded weights, which load_model does not read")
    raise ValueError(f"{str(path)!r} has no {_WEIGHTS}")


def checked_folder(path: Path) -> tuple[Any, TensorizeConfig | None, Path]:
    """The folder's GPT2Config, tensornet record and weights file, checked against the weights' header."""
    from transformers import GPT2Config

    raw, sizes = read_config(path)
    config_file = path / "config.json"
    _check_memory(sizes, config_file)  # before the meta model of a crafted size is built
    weights = _weights_file(path)
    record = raw.get("tensornet")
    tensorized = None if record is None else TensorizeConfig.from_json(record, str(config_file), "load_model")
    header = _files.read_safetensors(weights, *_unreadable(weights), shapes=True)[1]
    if tensorized is None:
        header = base_names(header)
    try:
        config = GPT2Config.from_dict(raw)
    except Exception as err:  # transformers' own validation raises several error types
        raise ValueError(
            f"load_model: {str(config_file)!r} is not a valid GPT-2 config ({type(err).__name__}: {err})"
        ) from None
    try:
        expected = _expected_state(config, tensorized)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as err:
        raise ValueError(
            f"load_model: the tensornet record in {str(config_file)!r} is malformed ({type(err).__name__}: {err})"
        ) from None
    tied = (tensorized is not None and tensorized.embeddings) or bool(config.tie_word_embeddings)
    missing, unexpected, shapes = _mismatch(expected, header, tied)
    if missing or unexpected or shapes:
        why = ""
        if tensorized is None and any(re.search(r"\.(packed_cores|cores\.\d+|a|b)$", k) for k in unexpected):
            why = (
                " The weights hold TT cores or low-rank factors but config.json has no tensornet record: "
                "restore the config.json that save_model wrote with them."
            )
        raise ValueError(
            f"load_model: the weights in {str(weights)!r} do not match {str(config_file)!r} ({_gives(sizes)}): missing "
            f"{_few(missing, 5)}, unexpected {_few(unexpected, 5)}"
            + (f", other shapes {_few(shapes, 3)}" if shapes else "")
            + f".{why or ' Restore the config.json that was saved with the weights.'}"
        )
    return config, tensorized, weights
