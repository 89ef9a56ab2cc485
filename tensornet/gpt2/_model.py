"""GPT-2 configurations, and saving/loading dense or tensorized models as ``save_pretrained``-style folders."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _checkpoint, _files
from ._config import PRESETS
from ._tensorize import TensorizeConfig


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
_MARK = {"format": "tensornet-model", "version": 1, "written_by": "tensornet.gpt2.save_model"}


def _marked(folder: Path) -> bool:
    """Whether ``folder`` carries save_model's mark file (a regular file with its format tag)."""
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
    """Refuse a ``save_model`` target that would lose someone's files; check it can be written.

    A file is always refused; an existing folder is used when empty, and replaced only with ``overwrite`` and
    only when it holds nothing but what ``save_model`` writes, including its mark file ``tensornet-model.json``
    (``require_mark=False``: a run folder's own ``model/``, which its manifest vouches for). Nothing is created
    or changed."""
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
    """Write ``config.json`` (with ``config.tensornet`` recording any tensorization), ``model.safetensors``
    (the tied LM head left out, as Hugging Face does, with a SHA-256 of the tensors in its metadata),
    optionally ``tokenizer.json``, and the mark ``tensornet-model.json``.

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
    """``save_model`` into a run folder's own ``model/`` (held under the run's lock; its manifest lists the
    model files): replaced when it holds nothing but save_model's files, marked or not (older tensornet)."""
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
    metadata = {"format": "pt", _CHECKSUM: _checkpoint.content_sha256(state)}
    tmp = _files.make_tmp_dir(target, _files.MODEL_FILES)
    try:
        _files.write_new(tmp / "config.json", lambda f: f.write(config_json))
        _files.write_new(tmp / _WEIGHTS, lambda f: _checkpoint.write_safetensors(f, state, metadata))
        if tokenizer_json is not None:
            _files.write_new(tmp / "tokenizer.json", lambda f: f.write(tokenizer_json))
        mark = (json.dumps(_MARK, indent=2) + "\n").encode("utf-8")
        _files.write_new(tmp / _files.MODEL_MARK, lambda f: f.write(mark))
        if target.is_dir() and any(target.iterdir()):  # checked above: only save_model's files
            old = _files.tmp_path(target, "old")
            _files.clear_leftover(old, _files.MODEL_FILES)
            os.replace(target, old)
            os.replace(tmp, target)
            for file in old.iterdir():
                file.unlink()
            old.rmdir()
        else:  # new, or an empty folder (rename replaces an empty folder)
            os.replace(tmp, target)
    except BaseException as err:
        if tmp.is_dir() and not tmp.is_symlink():
            for file in tmp.iterdir():
                file.unlink()
            tmp.rmdir()
        if isinstance(err, OSError) and err.errno is not None:
            raise _files.write_error(target, err) from None
        raise
    _files._fsync_dir(target.parent)


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against the checksum ``save_model`` stores (when present)."""
    metadata, state = _checkpoint.read_safetensors(
        file,
        f"load_model: {str(file)!r} is not a readable safetensors file",
        "; it is truncated or damaged: save the model again or restore the file",
    )
    expected = metadata.get(_CHECKSUM)
    if expected is not None and _checkpoint.content_sha256(state) != expected:
        raise ValueError(
            f"load_model: {str(file)!r} fails its checksum: the weights changed after save_model wrote them; "
            "save the model again or restore the file"
        )
    return state


# ---------------------------------------------------------------------------------- checks before building
CONFIG_BYTES = 16 * 2**20  # the most a config.json may hold
_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on a header
# (key, upper bound): integers GPT2Config reads, checked before anything is built
_SIZES = {"vocab_size": 2**31 - 1, "n_positions": 2**20, "n_embd": 2**16, "n_layer": 1024, "n_head": 2**16}
_PROBABILITIES = ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout")
_FLAGS = (
    "add_cross_attention",
    "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn",
    "tie_word_embeddings",
    "use_cache",
)
_ATTENTION = (None, "eager", "sdpa")  # what runs without optional packages


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def memory_bytes(device: torch.device | str | None = None) -> int | None:
    """The memory a model on ``device`` can use: a CUDA device's total memory, else this machine's physical
    memory (or its cgroup limit when lower); None when unknown."""
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
    """Types and ranges of the GPT-2 settings in a parsed ``config.json`` (nothing is built); returns the
    sizes the model would have, with GPT2Config's defaults for keys not given."""
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
    sizes: dict[str, Any] = {}
    for key, top in _SIZES.items():
        value = raw.get(key, getattr(defaults, key))
        if not _is_int(value) or not 1 <= value <= top:
            raise _bad(file, key, f"an integer in [1, {top:,}]", value)
        sizes[key] = value
    inner = raw.get("n_inner")
    if inner is not None and (not _is_int(inner) or not 1 <= inner <= 2**20):
        raise _bad(file, "n_inner", "null or an integer in [1, 1,048,576]", inner)
    sizes["n_inner"] = inner
    if sizes["n_embd"] % sizes["n_head"]:
        raise _bad(file, "n_head", f"a divisor of n_embd {sizes['n_embd']}", sizes["n_head"])
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = raw.get(key)
        if value is not None and (not _is_int(value) or value < 0):
            raise _bad(file, key, "null or a token id >= 0", value)
    for key in _PROBABILITIES:
        value = raw.get(key, 0.0)
        if not _is_number(value) or not 0 <= value <= 1:
            raise _bad(file, key, "a number in [0, 1]", value)
    for key, rule in (("layer_norm_epsilon", "a finite number > 0"), ("initializer_range", "a number >= 0")):
        value = raw.get(key, getattr(defaults, key))
        if not _is_number(value) or value < 0 or (key == "layer_norm_epsilon" and value == 0):
            raise _bad(file, key, rule, value)
    for key in _FLAGS:
        if key in raw and not isinstance(raw[key], bool):
            raise _bad(file, key, "true or false", raw[key])
    activation = raw.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in ACT2FN:
        raise _bad(file, "activation_function", f"one of {sorted(ACT2FN)}", activation)
    for key in ("_attn_implementation", "attn_implementation"):
        if raw.get(key) not in _ATTENTION:
            raise _bad(
                file, key, "null, 'eager' or 'sdpa' (what runs here without optional packages)", raw[key]
            )
    return sizes


def _read_header(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header alone (8 bytes and a JSON object)."""

    def damaged(why: str) -> ValueError:
        return ValueError(
            f"load_model: {str(file)!r} is not a readable safetensors file ({why}); it is truncated or "
            "damaged: save the model again or restore the file"
        )

    what = _files.not_a_file(file)
    if what is not None:
        raise ValueError(f"load_model: {str(file)!r} {what}; give a model folder with its weights file")
    try:
        with open(file, "rb") as f:
            start = f.read(8)
            if len(start) < 8:
                raise damaged("shorter than a header")
            (size,) = struct.unpack("<Q", start)
            if size > _HEADER_BYTES:
                raise damaged(f"a header of {size:,} bytes")
            header = _files.parse_json(f.read(size))
    except OSError as err:
        raise ValueError(f"load_model: cannot read {str(file)!r} ({err.strerror or err})") from None
    except ValueError as err:
        if str(err).startswith("load_model:"):
            raise
        raise damaged(f"its header is not JSON: {err}") from None
    if not isinstance(header, dict):
        raise damaged("its header is not a JSON object")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(_is_int(n) and n >= 0 for n in shape)):
            raise damaged(f"no shape for {name!r}")
        shapes[name] = tuple(shape)
    return shapes


def _check_fit(
    sizes: dict[str, Any], header: dict[str, tuple[int, ...]], config: Path, weights: Path
) -> None:
    """config.json's sizes against the tensors the weights file holds, and the dense model against memory:
    a config that does not describe these weights is refused before anything is allocated."""
    width, positions, layers = sizes["n_embd"], sizes["n_positions"], sizes["n_layer"]
    blocks = {int(m[1]) for k in header if (m := re.match(r"(?:transformer\.)?h\.(\d+)\.", k))}
    if blocks and blocks != set(range(layers)):
        raise ValueError(
            f"load_model: {str(config)!r} says n_layer {layers}, but {str(weights)!r} holds {len(blocks)} "
            "blocks; restore the config.json that was saved with the weights"
        )
    for key, expected, names in (
        ("wpe", (positions, width), "n_positions, n_embd"),
        ("wte", (sizes["vocab_size"], width), "vocab_size, n_embd"),
        ("ln_f", (width,), "n_embd"),
    ):
        for name in (f"transformer.{key}.weight", f"{key}.weight"):
            if name in header and header[name] != expected:
                raise ValueError(
                    f"load_model: {str(config)!r} gives ({names}) = {expected}, but {name} in {str(weights)!r} "
                    f"has shape {header[name]}; restore the config.json that was saved with the weights"
                )
    need = 4 * dense_params(
        vocab=sizes["vocab_size"], positions=positions, width=width, layers=layers, inner=sizes["n_inner"]
    )
    have = memory_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"load_model: the model {str(config)!r} describes needs {need / 2**30:,.1f} GiB to build, more than "
            f"this machine's {have / 2**30:,.1f} GiB of memory"
        )


def _expected_state(config, tensorized: TensorizeConfig | None) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the model ``config`` (and the tensornet record) describe, built on the meta
    device (nothing is allocated)."""
    from transformers import GPT2LMHeadModel

    with torch.device("meta"):
        model: Any = GPT2LMHeadModel(config)
        if tensorized is not None:
            tensorized.apply(model)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatch(
    expected: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]], tied: bool
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in got and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in got if k not in expected and not re.search(r"attn\.(masked_)?bias$", k)]
    shapes = [
        f"{k} {got[k]} (expected {expected[k]})" for k in got if k in expected and got[k] != expected[k]
    ]
    return missing, unexpected, shapes


def read_config(directory: str | os.PathLike) -> tuple[dict, dict[str, Any]]:
    """A model folder's ``config.json``, parsed and checked (``_check_config``), and the sizes it gives:
    cheap, nothing built. Raises ValueError (or FileNotFoundError/NotADirectoryError) naming the file."""
    if not str(directory):
        raise ValueError("load_model: the model folder path is empty")
    path = Path(directory)
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


def load_model(directory: str | os.PathLike, *, device: str | torch.device | None = None):
    """Load a folder written by ``save_model`` (dense or tensorized) or a local Hugging Face GPT-2 folder with
    ``model.safetensors``. Pickle weights (``pytorch_model.bin``) are refused: unpickling can run code.

    ``config.json`` is checked before anything is built: types and ranges of its settings, the tensornet
    record, agreement with the tensor shapes in the weights file's header, and the memory the model needs."""
    from transformers import GPT2LMHeadModel

    path = Path(directory)
    config, tensorized, weights = _checked_folder(path)
    state = _base_names(_read_weights(weights))
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


def _base_names(names: dict) -> dict:
    """A GPT2Model (base) checkpoint's names as GPT2LMHeadModel's (``transformer.`` prefixed)."""
    if names and not any(k.startswith("transformer.") for k in names):
        return {(k if k.startswith("lm_head.") else f"transformer.{k}"): v for k, v in names.items()}
    return names


def _weights_file(path: Path) -> Path:
    """The folder's safetensors weights; pickle or sharded weights are refused, with what to do."""
    weights = path / _WEIGHTS
    if weights.exists():
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


def _checked_folder(path: Path) -> tuple[Any, TensorizeConfig | None, Path]:
    """The folder's GPT2Config, tensornet record and weights file, checked against the weights' header."""
    from transformers import GPT2Config

    raw, sizes = read_config(path)
    config_file = path / "config.json"
    weights = _weights_file(path)
    record = raw.get("tensornet")
    tensorized = None if record is None else TensorizeConfig.from_json(record, str(config_file), "load_model")
    header = _read_header(weights)
    if tensorized is None:
        header = _base_names(header)
    _check_fit(sizes, header, config_file, weights)
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
            f"load_model: the weights in {str(weights)!r} do not match {str(config_file)!r}: missing "
            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
            + (f", other shapes {shapes[:3]}{' ...' if len(shapes) > 3 else ''}" if shapes else "")
            + f".{why}"
        )
    return config, tensorized, weights
