"""GPT-2 configurations, and saving/loading dense or tensorized models as ``save_pretrained``-style folders."""

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import files as _files
from ._shapes import PRESETS, count
from ._tensorize import TensorizeConfig

WEIGHTS = "model.safetensors"
CHECKSUM = "tensornet_sha256"  # config.json key: SHA-256 of the weights and tokenizer.json saved with it
CONFIG_BYTES = 16 * 2**20  # the most a config.json may hold
TOKENIZER_BYTES = 256 * 2**20
_AGAIN = "; save the model again or restore the file"
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
    """A model folder's ``config.json`` and its sizes, checked against caps and memory; ValueError naming the file."""
    path = Path(directory)
    if not str(directory) or not path.exists():
        raise FileNotFoundError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"load_model: {str(path)!r} is a file; give the model's folder")
    file = path / "config.json"
    if not file.exists():
        raise ValueError(f"{str(path)!r} has no config.json; give a save_pretrained/save_model folder")
    try:
        raw = _files.parse_json(_files.read_small_file(file, CONFIG_BYTES, "load_model"))
    except ValueError as err:
        raise ValueError(f"load_model: {str(file)!r} is not a readable GPT-2 config.json ({err})") from None
    if not isinstance(raw, dict) or raw.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"load_model: {str(file)!r} is not a GPT-2 config.json")
    from transformers import GPT2Config

    defaults, sizes = GPT2Config(), {}
    for key, top in {**_SIZES, "n_inner": 2**20}.items():
        value = sizes[key] = raw.get(key, getattr(defaults, key))
        if (value is not None or key != "n_inner") and (type(value) is not int or not 1 <= value <= top):
            raise ValueError(
                f"load_model: {str(file)!r}: {key} must be an int in [1, {top:,}], not {value!r}"
            )
    vocab, positions, width, layers, inner = (
        sizes[k] for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_inner")
    )
    need = 4 * dense_params(vocab=vocab, positions=positions, width=width, layers=layers, inner=inner)
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
    """The folder's safetensors weights; pickle (or sharded) weights are refused."""
    weights = path / WEIGHTS
    if not os.path.lexists(weights):
        why = ": pytorch_model.bin is a pickle, which can run code: save it as safetensors"
        why *= (path / "pytorch_model.bin").exists()  # (never loaded)
        raise ValueError(f"load_model: {str(path)!r} has no {WEIGHTS}{why}")
    what = _files.not_a_file(weights)  # a FIFO would never end, a folder is no file
    if what is not None:
        raise ValueError(f"load_model: {str(weights)!r} {what}; give a model folder with its weights file")
    return weights


def base_names(names: dict) -> dict:
    """A GPT2Model (base) checkpoint's names as GPT2LMHeadModel's (``transformer.`` prefixed)."""
    if names and not any(k.startswith("transformer.") for k in names):
        return {(k if k.startswith("lm_head.") else f"transformer.{k}"): v for k, v in names.items()}
    return names


def _build(raw: dict, file: Path, *, meta: bool) -> tuple[Any, TensorizeConfig | None]:
    """The model a parsed ``config.json`` and its tensornet record describe (on the meta device: no memory)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    try:  # transformers and the record raise many error types for a crafted config.json
        record = raw.get("tensornet")
        tensorized = None if record is None else TensorizeConfig.from_json(record, str(file), "load_model")
        with torch.device("meta") if meta else contextlib.nullcontext():
            model = GPT2LMHeadModel(GPT2Config.from_dict(raw))
            return model if tensorized is None else tensorized.apply(model), tensorized
    except Exception as err:
        why = " ".join(str(err).split())  # one line, whatever the library wrote
        raise ValueError(
            f"load_model: {str(file)!r} is not a config.json load_model can build ({why})"
        ) from None


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
    for name, value in zip(("n_layer", "n_embd", "n_head", "block_size"), (layers, width, heads, block_size)):
        count("gpt2_config", name, value)
    if width % heads:
        raise ValueError(f"n_embd {width} is not divisible by n_head {heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    dropouts: dict[str, Any] = dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop"), dropout)
    ids: dict[str, Any] = dict.fromkeys(("bos_token_id", "eos_token_id"), eos_token_id)
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        **dropouts,
        **ids,
    )


def build_model(config, *, seed: int | None = None, device: str | torch.device | None = None):
    """``GPT2LMHeadModel(config)`` with GPT-2's initialisation, seeded."""
    from transformers import GPT2LMHeadModel

    if seed is not None:
        torch.manual_seed(seed)
    model: Any = GPT2LMHeadModel(config)
    return model.to(device) if device is not None else model


_MARK = {"format": "tensornet-model", "version": 1, "written_by": "tensornet.gpt2.save_model"}


def check_model_target(
    target: Path, *, overwrite: bool = False, where: str = "save_model", require_mark: bool = True
) -> None:
    """Refuse a ``save_model`` target that would lose someone's files (see :func:`save_model`) or is not writable.

    ``require_mark=False``: a run folder's own ``model/``, which its manifest vouches for. Nothing is changed.
    """
    target = Path(target)
    _files.check_name_length(target, where)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise FileExistsError(f"{where}: {str(target)!r} is a file or a link, not a folder; choose a folder")
    if not target.exists():
        return _files.check_creatable(target, where)
    flag = "--overwrite" if where.startswith("--") else "overwrite=True"
    own = [p for p in target.iterdir() if _files.tmp_owner(p.name) not in _files.MODEL_FILES]  # not leftovers
    if own and not overwrite:
        raise FileExistsError(
            f"{where}: {str(target)!r} already exists and is not empty; pass {flag} to replace a model "
            "folder written by save_model, or choose a new folder"
        )
    foreign = [p.name for p in own if p.name not in _files.MODEL_FILES or not p.is_file() or p.is_symlink()]
    if own and (foreign or (require_mark and not (target / _files.MODEL_MARK).is_file())):
        raise FileExistsError(
            f"{where}: {str(target)!r} was not written by tensornet's save_model (no {_files.MODEL_MARK}) or "
            f"holds files it does not write ({', '.join(foreign[:5])}); {flag} replaces only save_model's own "
            "folders, so nothing was changed: choose another folder"
        )
    _files.probe_writable(target, where)


def save_model(
    model: nn.Module, directory: str | os.PathLike, *, tokenizer=None, overwrite: bool = False
) -> Path:
    """Write config.json, model.safetensors, optionally tokenizer.json, and the mark tensornet-model.json.

    ``config.json`` records the tensorization (``tensornet``) and the SHA-256 of the weights and tokenizer
    written with it; the weights leave the tied LM head out, as Hugging Face does (a dense folder loads with
    ``GPT2LMHeadModel.from_pretrained``). An existing ``directory`` is used only when empty, or with
    ``overwrite=True`` when ``save_model`` wrote it (marked, holding only these files). Each file is renamed
    into place, config.json last: a save killed at any moment leaves the old model, the new one, or a folder
    that fails its checksum, never a mix that loads.
    """
    return _save(model, Path(directory), tokenizer, overwrite=overwrite)


def save_run_model(model: nn.Module, directory: Path, *, tokenizer=None) -> Path:
    """``save_model`` into a run folder's own (locked) ``model/``, replaced when it holds only save_model's files."""
    return _save(model, Path(directory), tokenizer, overwrite=True, where="--out", require_mark=False)


def _save(model: Any, target: Path, tokenizer, **checks: Any) -> Path:
    from safetensors.torch import save_file

    check_model_target(target, **checks)
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
    return target


def load_model(directory: str | os.PathLike, *, device: str | torch.device | None = None):
    """Load a folder written by ``save_model`` (dense or tensorized) or a local Hugging Face GPT-2 folder.

    The weights must be ``model.safetensors`` (pickle weights are never loaded: unpickling can run code).
    Checked before anything is built: config.json's sizes and the memory they need, then the model it and its
    record describe (on the meta device) against the weights' header, then, in a folder save_model marked, the
    checksum it recorded. Raises ValueError naming the file.
    """
    path = Path(directory)
    raw, sizes = read_config(path)
    file, weights = path / "config.json", _weights_file(path)
    checksum = raw.pop(CHECKSUM, None)
    model, tensorized = _build(raw, file, meta=True)
    unreadable = f"load_model: {str(weights)!r} is not a readable safetensors file"
    header = _files.read_safetensors(weights, unreadable, _AGAIN, shapes=True)[1]
    header = header if tensorized is not None else base_names(header)
    tied = (tensorized is not None and tensorized.embeddings) or model.config.tie_word_embeddings
    skip = re.compile(r"attn\.(masked_)?bias$|\._extra_state$" + ("|^lm_head.weight$" if tied else ""))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
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
    metadata, state = _files.read_safetensors(weights, unreadable, _AGAIN)
    tokenizer = path / "tokenizer.json"
    text = _files.read_small_file(tokenizer, TOKENIZER_BYTES, "load_model") if tokenizer.exists() else b""
    marked = (path / _files.MODEL_MARK).is_file()  # (a Hugging Face re-save keeps the key, not the mark)
    old = metadata.get("tensornet.sha256")  # the weights' own, written by save_model before 2026-12
    if (checksum is not None and marked and _files.content_sha256(state, text) != checksum) or (
        old is not None and _files.content_sha256(state) != old
    ):
        raise ValueError(
            f"load_model: {str(path)!r} fails its checksum: its weights or tokenizer.json are not what save_model "
            "wrote with its config.json (damaged, or an interrupted save); save the model again"
        )
    model = _build(raw, file, meta=False)[0]
    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(dtypes) == 1:  # keep the saved precision (GPT2LMHeadModel(config) builds float32)
        model.to(dtypes.pop())
    try:
        model.load_state_dict(base_names(state), strict=False)
    except RuntimeError as err:  # (torch's message has a line per tensor)
        why = " ".join(str(err).split())[:400]
        raise ValueError(
            f"load_model: the weights in {str(weights)!r} do not fit {str(file)!r}: {why}"
        ) from None
    if tied and not (tensorized is not None and tensorized.embeddings):
        model.tie_weights()  # a TT embedding's head is tied by construction
    return model.eval().to(device) if device is not None else model.eval()
