"""The command line's checks before work: what would fail only after the corpus is read or a model built.

Each command's check runs right after parsing, before any corpus is read, tokenizer trained or folder created.
A ValueError or OSError it raises is the CLI's one-line usage error (exit status 2); a setting that may not do
what was meant is collected as a warning and said once every check passed (by the first process only).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

import tensornet.gpt2 as gpt2

from .. import files as _files
from . import _data, _runfolder
from ._compare import build_variant, mlp_params_per_layer
from ._config import TrainConfig
from ._distributed import Distributed, default_device
from ._resume import check_resume


def warn(message: str) -> None:
    """A setting that may not do what the user meant: said on stderr, the command goes on."""
    print(f"warning: {message}", file=sys.stderr)


def cli_spelling(message: str) -> str:
    """A library message in the command line's words (``--shapes balanced``, not ``shapes='balanced'``)."""
    return message.replace("shapes='balanced'", "--shapes balanced").replace(
        "shapes='paper'", "--shapes paper"
    )


def train_config(args, **extra) -> TrainConfig:
    """The optimisation flags as a :class:`TrainConfig` (its fields that the command has a flag for)."""
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**given | extra)


def _exists(flag: str, value: str | None) -> None:
    if value is not None and not Path(value).exists():
        raise ValueError(f"{flag}: {value!r} does not exist")


def _check_data_args(args) -> None:
    _exists("--data", args.data)
    _exists("--tokenizer", args.tokenizer)
    if args.tokenizer and args.vocab_size is not None:
        raise ValueError("--vocab-size sizes a tokenizer trained here; it does not apply with --tokenizer")
    flag = "--cache-dir" if args.cache_dir else "the cache folder ($TENSORNET_CACHE or ~/.cache/tensornet)"
    cache = Path(args.cache_dir) if args.cache_dir else _data.default_cache_dir()
    if not cache.exists():
        _files.check_creatable(cache, flag)
    elif not cache.is_dir():
        raise ValueError(f"{flag}: {str(cache)!r} is a file, not a folder")
    else:
        _files.probe_writable(cache, flag)


def dims(args) -> tuple[int, int, int]:
    """(n_layer, n_embd, n_head) from --preset and the overrides (compare: no preset, every size has a default)."""
    base = gpt2.PRESETS[args.preset] if getattr(args, "preset", None) else (None, None, None)
    layers, width, heads = (
        b if v is None else v for v, b in zip((args.n_layer, args.n_embd, args.n_head), base)
    )
    if width % heads:
        raise ValueError(f"--n-embd {width} is not divisible by --n-head {heads}")
    return layers, width, heads


def resolve_shapes(args, width: int, inner: int) -> None:
    """``--shapes auto`` as ``paper`` where the paper has shapes for this MLP and rank, else ``balanced``."""
    if args.shapes != "auto":
        return
    if gpt2.paper_shapes((inner, width), args.rank or 64) is not None:  # (compress --eps: the rank-64 shapes)
        args.shapes = "paper"
        args.shapes_note = "the paper's (--shapes auto: this is a GPT-2 small/medium MLP)"
    else:
        args.shapes = "balanced"
        args.shapes_note = (
            f"balanced, {args.ncores} cores (--shapes auto: the paper gives shapes only for GPT-2 small and "
            f"medium MLPs, 768 <-> 3072 and 1024 <-> 4096, not {width} <-> {inner}; --ncores sets the count)"
        )


def model_spec(args, config: dict) -> dict:
    """Compare's or train's model as ``_compare.build_variant`` builds it; ``config``: ``gpt2_config``'s."""
    given = ("seed", "rank", "shapes", "ncores", "embeddings", "embedding_rank", "layers")
    spec = {name: getattr(args, name) for name in given} | {"config": config, "bias": not args.no_bias}
    if args.command == "train":
        spec |= {
            "variant": "ttm" if args.rank else "lowrank" if args.lowrank else "dense",
            "lowrank_rank": args.lowrank,
        }
    return spec


def _dry_run(args, width: int, heads: int) -> None:
    """One block of the model(s) on the meta device: a --rank or --shapes that cannot work, before any work."""
    config = dict(
        vocab_size=257, block_size=args.block_size, preset=None, n_layer=1, n_embd=width, n_head=heads
    )
    spec = model_spec(args, config)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        if spec.get("variant", "ttm") != "ttm":  # train: dense or low-rank
            try:
                build_variant(spec)
            except (ValueError, TypeError) as err:
                raise ValueError(f"--lowrank {args.lowrank}: {err}") from None
            return
        try:
            params = mlp_params_per_layer(spec)
        except (ValueError, TypeError) as err:
            raise ValueError(cli_spelling(str(err))) from None
        if args.command == "compare" and not args.no_lowrank:  # sized as compare sizes it
            rank = gpt2.lowrank_rank_for(params, width, 4 * width, bias=spec["bias"])
            try:
                build_variant(spec | {"variant": "lowrank", "lowrank_rank": rank})
            except (ValueError, TypeError) as err:
                raise ValueError(
                    f"{err}. compare sizes its low-rank baseline to match the TTM model of --rank {args.rank}: "
                    "lower --rank, or pass --no-lowrank to skip the baseline"
                ) from None


def check_memory(
    args, *, layers: int, width: int, vocab: int, block: int, training: bool, model=None, positions=None
):
    """Refuse what cannot fit this machine's (or the device's) memory: only sure failures.

    Counted: the dense model as built with, when ``training``, its gradients and AdamW state, plus a lower
    bound of one batch's activations (the logits and a few tensors per layer). ``model``: the config.json the
    sizes come from (eval/compress; ``positions`` its n_positions), else they come from the flags.
    """
    device = torch.device(args.device) if args.device else default_device()
    have = gpt2.memory_bytes(device)  # (looked up on the module: tests replace it)
    if have is None:
        return
    params = gpt2.dense_params(vocab=vocab, positions=positions or block, width=width, layers=layers)
    weights = (16 if training else 4) * params
    activations = 4 * args.batch_size * block * (2 * vocab + (10 if training else 2) * layers * width)
    where = f"the {have / 2**30:,.1f} GiB of memory on {device}"
    if model is not None and weights > have:
        raise ValueError(
            f"the model {model!r} describes (vocab_size {vocab:,}, n_embd {width:,}, n_layer {layers:,}: "
            f"{params:,} parameters) needs {weights / 2**30:,.1f} GiB, more than {where}"
        )
    if weights + activations > have:
        lower = (
            "--batch-size or --block-size"
            if model
            else "--n-layer, --n-embd, --vocab-size, --batch-size or --block-size"
        )
        raise ValueError(
            f"a model of {params:,} parameters {'trained' if training else 'evaluated'} on batches of --batch-size "
            f"{args.batch_size} x --block-size {block} needs at least {(weights + activations) / 2**30:,.1f} GiB, "
            f"more than {where}: lower {lower}"
        )


def vocab_size(args) -> int:
    """The size of the tokenizer trained here: --vocab-size, else 4096 for compare and the tiny preset."""
    return args.vocab_size or (16384 if getattr(args, "preset", "tiny") not in (None, "tiny") else 4096)


def _check_training(args, said: list[str]) -> None:
    """What compare and train share: data, sizes, memory, processes, compile, schedule; then the dry run."""
    _check_data_args(args)
    layers, width, heads = dims(args)
    _data.check_windows(None, None, args.block_size, args.eval_tokens)
    # a given tokenizer's size is not known yet: the smallest one possible (checked again once it is read)
    vocab = vocab_size(args) if not args.tokenizer else 257
    check_memory(args, layers=layers, width=width, vocab=vocab, block=args.block_size, training=True)
    dist = Distributed()  # (raises for a malformed torchrun environment)
    if args.batch_size % dist.world:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {dist.world} processes")
    device = torch.device(args.device) if args.device else default_device()
    if args.compile is not None and device.type == "cpu":  # inductor compiles C++ kernels on CPU
        if not any(name and shutil.which(name) for name in (os.environ.get("CXX"), "g++", "clang++", "c++")):
            raise ValueError(
                f"--compile {args.compile} on CPU builds C++ kernels, but no C++ compiler (g++, clang++ or $CXX) "
                "is on PATH: install one, or train without --compile"
            )
        if args.compile == "reduce-overhead":
            said.append(
                "--compile reduce-overhead adds CUDA graphs, which need a GPU: on CPU it compiles as --compile default"
            )
    if args.warmup > args.steps:
        said.append(
            f"--steps {args.steps} ends inside --warmup {args.warmup}: the learning rate only reaches "
            f"{args.lr * args.steps / args.warmup:.3g}, not --lr {args.lr:g}; lower --warmup below --steps to run "
            "the full schedule"
        )
    resolve_shapes(args, width, 4 * width)
    resume = getattr(args, "resume", False)  # (compare has no --resume)
    if args.command == "compare" or dist.main:
        _runfolder.check_run_folder(
            Path(args.out), kind=args.command, resume=resume, overwrite=args.overwrite
        )
    if resume:
        check_resume(args.out, train_config(args), args.stop_at)
    _dry_run(args, width, heads)


def check_train(args, said: list[str]) -> None:
    tiny = args.preset == "tiny"
    for name, value in ({"lr": 1e-3, "warmup": 100} if tiny else {"lr": 6.25e-5, "warmup": 4000}).items():
        if getattr(args, name) is None:  # the preset's defaults
            setattr(args, name, value)
    if args.rank and args.lowrank:
        raise ValueError(
            "--rank (a TTM model) and --lowrank (the low-rank baseline) choose different models; give one"
        )
    if (args.embeddings or args.embedding_rank is not None) and not args.rank:
        raise ValueError("--embeddings/--embedding-rank make a TT embedding, which needs --rank")
    _check_training(args, said)


def check_compress(args, said: list[str]) -> None:
    if args.rank is None and args.eps is None:
        raise ValueError("give exactly one of --rank and --eps")
    sizes = check_eval(args, said)
    src, out = Path(args.model).resolve(), Path(args.out).resolve()
    if out == src or src in out.parents:
        raise ValueError(
            f"--out {args.out!r} is the source model folder {args.model!r} or inside it: the compressed model "
            "would replace the model it is made from; choose another folder"
        )
    if out in src.parents:
        raise ValueError(
            f"--out {args.out!r} holds the source model folder {args.model!r}; choose another folder"
        )
    gpt2.check_model_target(Path(args.out), overwrite=args.overwrite, where="--out")
    width = sizes["n_embd"]
    inner = sizes["n_inner"] or 4 * width
    resolve_shapes(args, width, inner)
    weights = {
        "mlp.c_fc": (inner, width),
        "mlp.c_proj": (width, inner),
        "attn.c_attn": (3 * width, width),
        "attn.c_proj": (width, width),
    }
    dense = tt = 0
    for key in (key for group in args.layers for key in gpt2.LAYER_GROUPS[group]):
        try:
            pairs = gpt2.layer_shapes(
                key, weights[key], rank=args.rank or 64, shapes=args.shapes, ncores=args.ncores
            )
        except (ValueError, TypeError) as err:
            raise ValueError(cli_spelling(str(err))) from None
        dense, tt = dense + math.prod(weights[key]), tt + (_tt_params(pairs, args.rank) if args.rank else 0)
    if tt > dense:
        said.append(
            f"--rank {args.rank} stores the converted layers in {tt:,} numbers, more than their {dense:,} dense "
            f"weights ({100 * tt / dense:.0f}%): the compressed model is larger than the original; lower --rank "
            "or give --eps"
        )


def _tt_params(pairs, rank: int) -> int:
    """Parameters of a TT-matrix with core pairs ``(m_k, n_k)`` at ``rank`` (each bond at most its useful rank)."""
    from tensornet.shapes import useful_ranks

    ranks = (1, *(min(rank, r) for r in useful_ranks([m * n for m, n in pairs])), 1)
    return sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(pairs))


def check_eval(args, said: list[str] | None = None) -> dict:
    """MODEL's config.json (a train run folder: its ``model/``) against the flags and memory; its sizes."""
    path = Path(args.model)
    if not (path / "config.json").exists() and (path / _runfolder.MANIFEST).is_file():
        try:
            kind = (_runfolder.read_manifest(path) or {}).get("kind")
        except ValueError:
            kind = None  # an unreadable manifest: not a run folder to look into (read_config says what is missing)
        model = path / "model"
        if kind == "train" and (model / "config.json").is_file():
            args.model, args.model_note = str(model), f"the model of the train run in {str(path)!r}"
        elif kind == "train":
            raise ValueError(
                f"{str(path)!r} is a train run folder without a model yet: a run writes model/ when it finishes; "
                f"finish it with train --resume --out {path}, then give {str(model)!r}"
            )
    _exists("--text", args.text)
    _exists("--tokenizer", args.tokenizer)
    _, sizes = gpt2.read_config(args.model)  # (a missing folder or a damaged config.json: its one-line error)
    block = min(args.block_size or sizes["n_positions"], sizes["n_positions"])
    _data.check_windows(None, None, block, args.eval_tokens)
    config = str(Path(args.model) / "config.json")
    size = dict(layers=sizes["n_layer"], width=sizes["n_embd"], vocab=sizes["vocab_size"], block=block)
    check_memory(args, **size, training=False, model=config, positions=sizes["n_positions"])
    return sizes


CHECKS: dict[str, Callable[[Any, list[str]], object]] = {
    "compare": _check_training,
    "train": check_train,
    "compress": check_compress,
    "eval": check_eval,
}


def check(args) -> None:
    """The command's checks; their warnings are said once every check passed (an error is said alone)."""
    said: list[str] = []
    if getattr(args, "embedding_rank", None) is not None and not args.embeddings:
        raise ValueError("--embedding-rank sets the TT embedding's rank; it needs --embeddings")
    CHECKS[args.command](args, said)
    if Distributed().main:  # under torchrun, said once (by the first process)
        for message in said:
            warn(message)
