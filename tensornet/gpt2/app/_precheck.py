"""The command line's checks before any work: a ValueError/OSError is the one-line usage error, exit 2."""

import os
import re
import shutil
import sys
import warnings
from dataclasses import fields
from pathlib import Path

import torch

import tensornet.gpt2 as gpt2

from .. import files as _files
from . import _data
from ._compare import build_variant, mlp_params_per_layer
from ._config import TrainConfig
from ._distributed import Distributed, default_device
from ._resume import check_resume
from ._runfolder import check_run_folder, read_manifest


def warn(message: str) -> None:  # a setting that may not do what the user meant; the command goes on
    print(f"warning: {message}", file=sys.stderr)


def train_config(args, **extra) -> TrainConfig:
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**given | extra)


def dims(args) -> tuple[int, int, int]:
    base = gpt2.PRESETS[args.preset] if getattr(args, "preset", None) else (None, None, None)
    sizes = (args.n_layer, args.n_embd, args.n_head)
    layers, width, heads = (b if v is None else v for v, b in zip(sizes, base))
    if width % heads:
        raise ValueError(f"--n-embd {width} is not divisible by --n-head {heads}")
    return layers, width, heads


def vocab_size(args) -> int:  # of the tokenizer trained here
    return args.vocab_size or (16384 if getattr(args, "preset", "tiny") not in (None, "tiny") else 4096)


def model_spec(args, config: dict) -> dict:
    """Compare's or train's model for ``_compare.build_variant``; ``config``: ``gpt2_config``'s."""
    given = ("seed", "rank", "shapes", "ncores", "embeddings", "embedding_rank", "layers")
    spec = {name: getattr(args, name) for name in given} | {"config": config, "bias": not args.no_bias}
    if args.command == "train":
        variant = "ttm" if args.rank else "lowrank" if args.lowrank else "dense"
        spec |= {"variant": variant, "lowrank_rank": args.lowrank}
    return spec


def resolve_shapes(args, width: int, inner: int) -> None:
    """``--shapes auto`` as ``paper`` where the paper has shapes for this MLP and rank, else ``balanced``."""
    if args.shapes == "auto":
        paper = gpt2.paper_shapes((inner, width), args.rank or 64) is not None  # (compress --eps: rank 64's)
        args.shapes = "paper" if paper else "balanced"
        balanced = f"balanced, {args.ncores} cores (--shapes auto: the paper's are for GPT-2 small/medium"
        args.shapes_note = "the paper's (--shapes auto)" if paper else f"{balanced}, not {width} <-> {inner})"


def _in_flag_words(err: Exception, before: str = "") -> ValueError:
    said = re.sub(r"shapes='(\w+)'", r"--shapes \1", str(err)).replace("tensorize: shapes", "--shapes")
    return ValueError(before + said)


def check_memory(args, *, layers, width, vocab, block, training, model=None, positions=None) -> None:
    """Refuse what surely cannot fit: dense weights (AdamW state when training) and a batch's activations."""
    device = _device(args)
    have = gpt2.memory_bytes(device)  # (looked up on the module: tests replace it)
    params = gpt2.dense_params(vocab=vocab, positions=positions or block, width=width, layers=layers)
    batch = 4 * args.batch_size * block * (2 * vocab + (10 if training else 2) * layers * width)
    need = (16 if training else 4) * params + batch
    if have is not None and need > have:
        sizes = "" if model else "--n-layer, --n-embd, --vocab-size, "
        raise ValueError(
            f"{model or 'the model'} (vocab_size {vocab:,}, n_embd {width:,}, n_layer {layers:,}) on batches of "
            f"{args.batch_size} x {block} needs {need / 2**30:,.1f} GiB, more than the {have / 2**30:,.1f} GiB on "
            f"{device}: lower {sizes}--batch-size or --block-size"
        )


def _device(args) -> torch.device:
    return torch.device(args.device) if args.device else default_device()


def _exists(**paths: str | None) -> None:
    for flag, value in paths.items():
        if value is not None and not Path(value).exists():
            raise ValueError(f"--{flag}: {value!r} does not exist")


def _check_training(args) -> None:
    """Compare and train: files, sizes, memory, compile, folders, then one block of each model on meta."""
    if args.command == "train":
        tiny = args.preset == "tiny"  # the preset's lr and warmup unless given
        args.lr = (1e-3 if tiny else 6.25e-5) if args.lr is None else args.lr
        args.warmup = (100 if tiny else 4000) if args.warmup is None else args.warmup
    _exists(data=args.data, tokenizer=args.tokenizer)
    if args.tokenizer and args.vocab_size is not None:
        raise ValueError("--vocab-size sizes a tokenizer trained here; it does not apply with --tokenizer")
    cache = Path(args.cache_dir or _data.default_cache_dir())
    (_files.probe_writable if cache.exists() else _files.check_creatable)(cache, "--cache-dir")
    layers, width, heads = dims(args)
    _data.check_windows(None, None, args.block_size, args.eval_tokens)
    vocab = vocab_size(args) if not args.tokenizer else 257  # (a given tokenizer: checked once it is read)
    check_memory(args, layers=layers, width=width, vocab=vocab, block=args.block_size, training=True)
    dist = Distributed()  # (raises for a malformed torchrun environment)
    if args.batch_size % dist.world:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {dist.world} processes")
    compilers = (os.environ.get("CXX"), "g++", "clang++", "c++")
    if args.compile and _device(args).type == "cpu" and not any(c and shutil.which(c) for c in compilers):
        raise ValueError(f"--compile {args.compile} on CPU needs a C++ compiler (g++, clang++ or $CXX)")
    resolve_shapes(args, width, 4 * width)
    resume = getattr(args, "resume", False)  # (compare has no --resume)
    if args.command == "compare" or dist.main:
        check_run_folder(Path(args.out), kind=args.command, resume=resume, overwrite=args.overwrite)
    if resume:
        check_resume(args.out, train_config(args), args.stop_at)
    config = dict(vocab_size=257, block_size=args.block_size, n_layer=1, n_embd=width, n_head=heads)
    spec = model_spec(args, config)
    before = f"--lowrank {args.lowrank}: " if args.command == "train" and args.lowrank else ""
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")  # a clipped rank is said when the model is built
            params = build_variant(spec) if args.command == "train" else mlp_params_per_layer(spec)
            if args.command == "compare" and not args.no_lowrank:  # its low-rank baseline
                before = (
                    f"the low-rank baseline sized to --rank {args.rank} (lower it or pass --no-lowrank): "
                )
                rank = gpt2.lowrank_rank_for(params, width, 4 * width, bias=spec["bias"])
                build_variant(spec | {"variant": "lowrank", "lowrank_rank": rank})
    except (ValueError, TypeError) as err:
        raise _in_flag_words(err, before) from None


def _check_compress(args) -> None:
    if (args.rank is None) == (args.eps is None):
        raise ValueError("give exactly one of --rank and --eps")
    raw, sizes = _check_eval(args)
    if "tensornet" in raw:
        raise ValueError(f"{args.model!r} is already tensorized: compress converts a dense model")
    src, out = Path(args.model).resolve(), Path(args.out).resolve()
    if out == src or src in out.parents or out in src.parents:
        raise ValueError(f"--out {args.out!r} must not hold or be in the source model folder {args.model!r}")
    gpt2.check_model_target(Path(args.out), overwrite=args.overwrite, where="--out")
    width, inner = sizes["n_embd"], sizes["n_inner"] or 4 * sizes["n_embd"]
    resolve_shapes(args, width, inner)
    weights = {"mlp.c_fc": (inner, width), "mlp.c_proj": (width, inner)}
    weights |= {"attn.c_attn": (3 * width, width), "attn.c_proj": (width, width)}
    for key in (key for group in args.layers for key in gpt2.LAYER_GROUPS[group]):
        try:
            gpt2.layer_shapes(key, weights[key], rank=args.rank or 64, shapes=args.shapes, ncores=args.ncores)
        except (ValueError, TypeError) as err:
            raise _in_flag_words(err) from None


def _check_eval(args) -> tuple[dict, dict]:
    """MODEL's config.json (a train run folder: its ``model/``) against flags and memory; it, its sizes."""
    path = Path(args.model)
    if not (path / "config.json").exists() and (read_manifest(path) or {}).get("kind") == "train":
        if not (path / "model" / "config.json").is_file():
            raise ValueError(f"{path}: a run without a model yet; train --resume --out {path} finishes it")
        args.model, args.model_note = str(path / "model"), f"the model of the train run in {str(path)!r}"
    _exists(text=args.text, tokenizer=args.tokenizer)
    raw, sizes = gpt2.read_config(args.model)  # (no folder, a damaged config.json: its one-line error)
    block = min(args.block_size or sizes["n_positions"], sizes["n_positions"])
    _data.check_windows(None, None, block, args.eval_tokens)
    size = dict(layers=sizes["n_layer"], width=sizes["n_embd"], vocab=sizes["vocab_size"], block=block)
    config = str(Path(args.model) / "config.json")
    check_memory(args, **size, training=False, model=config, positions=sizes["n_positions"])
    return raw, sizes


def check(args) -> None:
    """The command's checks: a ValueError or OSError names what is wrong and what to do."""
    if getattr(args, "embedding_rank", None) is not None and not args.embeddings:
        raise ValueError("--embedding-rank sets the TT embedding's rank; it needs --embeddings")
    if args.command == "train" and args.embeddings and not args.rank:
        raise ValueError("--embeddings makes a TT embedding, which needs --rank")
    if getattr(args, "lowrank", 0) and args.rank:
        raise ValueError("--rank and --lowrank choose two different models (TTM, low-rank); give one")
    {"compress": _check_compress, "eval": _check_eval}.get(args.command, _check_training)(args)
