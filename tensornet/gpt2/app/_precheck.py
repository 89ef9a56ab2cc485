"""The command line's checks before work.

Each command's check runs right after parsing, before any corpus is read, tokenizer trained or folder created.
What it raises is reported as a usage error (``error: ...``, exit status 2); what it only doubts is printed as
a ``warning: ...`` and the command goes on.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch

import tensornet.gpt2 as gpt2

from .. import (
    LAYER_GROUPS,
    PRESETS,
    build_model,
    check_model_target,
    dense_params,
    gpt2_config,
    layer_shapes,
    lowrank,
    lowrank_rank_for,
    paper_shapes,
    read_config,
    tensorize,
)
from .. import files as _files
from . import _data, _runfolder
from ._args import UsageError
from ._config import TrainConfig
from ._distributed import Distributed, default_device
from ._resume import check_resume

_deferred: list[str] | None = None  # while the checks run: their warnings, said only if no check fails


def warn(message: str) -> None:
    """A setting that may not do what the user meant: said on stderr, the command goes on."""
    if _deferred is not None:
        _deferred.append(message)
    else:
        print(f"warning: {message}", file=sys.stderr)


def cli_spelling(message: str) -> str:
    """A library message in the command line's words (``--shapes balanced``, not ``shapes='balanced'``)."""
    return message.replace("shapes='balanced'", "--shapes balanced").replace(
        "shapes='paper'", "--shapes paper"
    )


def train_config(args, **extra) -> TrainConfig:
    """The optimisation flags as a :class:`TrainConfig`."""
    names = (
        "steps batch_size block_size lr min_lr_ratio warmup weight_decay beta1 beta2 clip tt_lr_scale"
        " lowrank_lr_scale seed"
    )
    names += " eval_every eval_tokens compile"
    return TrainConfig(**{name: getattr(args, name) for name in names.split()}, **extra)


def _check_exists(flag: str, value: str | None, *, folder: bool = False) -> None:
    if value is None:
        return
    path = Path(value)
    if not path.exists():
        raise UsageError(f"{flag}: {value!r} does not exist")
    if folder and not path.is_dir():
        raise UsageError(f"{flag}: {value!r} is a file; give the folder")


def _check_cache_dir(args) -> None:
    flag = "--cache-dir" if args.cache_dir else "the cache folder ($TENSORNET_CACHE or ~/.cache/tensornet)"
    cache = Path(args.cache_dir) if args.cache_dir else _data.default_cache_dir()
    if not cache.exists():
        _files.check_creatable(cache, flag)
    elif not cache.is_dir():
        raise UsageError(f"{flag}: {str(cache)!r} is a file, not a folder")
    else:
        _files.probe_writable(cache, flag)


def dims(args) -> tuple[int, int, int]:
    """(n_layer, n_embd, n_head) from --preset and the overrides, checked."""
    preset = getattr(args, "preset", None)
    base = PRESETS[preset] if preset is not None else (None, None, None)
    layers, width, heads = (
        v if v is not None else b for v, b in zip((args.n_layer, args.n_embd, args.n_head), base)
    )
    if layers is None or width is None or heads is None:
        raise UsageError("without --preset give --n-layer, --n-embd and --n-head")
    if width % heads:
        raise UsageError(f"--n-embd {width} is not divisible by --n-head {heads}")
    return layers, width, heads


def resolve_shapes(args, width: int, inner: int) -> None:
    """``--shapes auto``: the paper's core shapes where it has them for this MLP and rank, else balanced.

    ``args.shapes`` becomes ``"paper"`` or ``"balanced"``, and ``args.shapes_note`` says which and why (the
    command prints it).
    """
    if args.shapes != "auto":
        return
    rank = args.rank or 64  # (compress --eps: the rank-64 shapes, as tensorize uses)
    if paper_shapes((inner, width), rank) is not None:
        args.shapes = "paper"
        args.shapes_note = "the paper's (--shapes auto: this is a GPT-2 small/medium MLP)"
    else:
        args.shapes = "balanced"
        args.shapes_note = (
            f"balanced, {args.ncores} cores (--shapes auto: the paper gives shapes only for GPT-2 small and "
            f"medium MLPs, 768 <-> 3072 and 1024 <-> 4096, not {width} <-> {inner}; --ncores sets the count)"
        )


def _dry_run(args, width: int, heads: int, *, rank: int, lowrank_rank: int | None = None) -> None:
    """Tensorize one block of a meta-device model (nothing is allocated).

    This way a --rank, --shapes or --ncores that cannot work is reported now rather than after the tokenizer
    is trained. With ``lowrank_rank=-1`` the low-rank baseline is sized like compare does.
    """
    if not rank and not lowrank_rank:
        return
    config = gpt2_config(
        vocab_size=257, block_size=args.block_size, preset=None, n_layer=1, n_embd=width, n_head=heads
    )
    bias = not getattr(args, "no_bias", False)
    sized = lowrank_rank == -1
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            if rank:
                options = dict(shapes=args.shapes, layers=args.layers, bias=bias, ncores=args.ncores)
                _, report = tensorize(build_model(config), rank=rank, **options)
                if sized:
                    layer = report.layers[0].params_after
                    lowrank_rank = lowrank_rank_for(layer, width, 4 * width, bias=bias)
        except (ValueError, TypeError) as err:
            raise UsageError(cli_spelling(str(err))) from None
        try:
            if lowrank_rank:
                lowrank(build_model(config), rank=lowrank_rank, layers=args.layers, bias=bias)
        except (ValueError, TypeError) as err:
            if sized:
                raise UsageError(
                    f"{err}. compare sizes its low-rank baseline to match the TTM model of --rank {rank}: lower "
                    "--rank, or pass --no-lowrank to skip the baseline"
                ) from None
            raise UsageError(f"--lowrank {lowrank_rank}: {err}") from None


def check_memory(
    args, *, layers: int, width: int, vocab: int, block: int, training: bool, model=None, positions=None
):
    """Refuse what cannot fit this machine's (or the device's) memory.

    What is counted: the dense model as built (before any tensorization) with, when ``training``, its
    gradients and AdamW state, plus a lower bound of the activations of one batch (the logits and a few
    tensors per layer). Only sure failures are refused. ``model``: the config.json the sizes come from
    (eval/compress: ``positions`` is its n_positions), else they come from the flags.
    """
    device = torch.device(args.device) if args.device else default_device()
    have = gpt2.memory_bytes(device)  # (looked up on the module: tests replace it)
    if have is None:
        return
    params = dense_params(vocab=vocab, positions=positions or block, width=width, layers=layers)
    weights = (16 if training else 4) * params
    activations = 4 * args.batch_size * block * (2 * vocab + (10 if training else 2) * layers * width)
    where = f"the {have / 2**30:,.1f} GiB of memory on {device}"
    if model is not None and weights > have:
        raise UsageError(
            f"the model {model!r} describes (vocab_size {vocab:,}, n_embd {width:,}, n_layer {layers:,}: "
            f"{params:,} parameters) needs {weights / 2**30:,.1f} GiB, more than {where}"
        )
    if weights + activations > have:
        what = "trained" if training else "evaluated"
        lower = "--batch-size or --block-size"
        if model is None:
            lower = "--n-layer, --n-embd, --vocab-size, --batch-size or --block-size"
        raise UsageError(
            f"a model of {params:,} parameters {what} on batches of --batch-size {args.batch_size} x "
            f"--block-size {block} needs at least {(weights + activations) / 2**30:,.1f} GiB, more than "
            f"{where}: lower {lower}"
        )


def _check_eval_tokens(args, block: int) -> None:
    if 0 < args.eval_tokens < block:
        raise UsageError(
            f"--eval-tokens {args.eval_tokens} is fewer than one window of --block-size {block}: evaluation "
            "would find no window; give 0 (all) or at least the block size"
        )


def _check_data_args(args) -> None:
    _check_exists("--data", args.data)
    _check_exists("--tokenizer", args.tokenizer)
    if args.tokenizer and args.vocab_size is not None:
        raise UsageError("--vocab-size sizes a tokenizer trained here; it does not apply with --tokenizer")
    _check_cache_dir(args)


def _check_compile(args) -> None:
    """``--compile`` on CPU compiles C++ kernels (inductor): a compiler must be there."""
    device = torch.device(args.device) if args.device else default_device()
    if args.compile is None or device.type != "cpu":
        return
    compilers = [os.environ.get("CXX"), "g++", "clang++", "c++"]
    if not any(name and shutil.which(name) for name in compilers):
        raise UsageError(
            f"--compile {args.compile} on CPU builds C++ kernels, but no C++ compiler (g++, clang++ or $CXX) is "
            "on PATH: install one, or train without --compile"
        )
    if args.compile == "reduce-overhead":
        warn(
            "--compile reduce-overhead adds CUDA graphs, which need a GPU: on CPU it compiles as --compile default"
        )


def _check_schedule(args) -> None:
    if args.warmup > args.steps:
        peak = args.lr * args.steps / args.warmup
        warn(
            f"--steps {args.steps} ends inside --warmup {args.warmup}: the learning rate only reaches "
            f"{peak:.3g}, not --lr {args.lr:g}; lower --warmup below --steps to run the full schedule"
        )


def _check_training(args, *, preset_vocab: int) -> tuple[int, int, int]:
    """What compare and train share: data, sizes, memory, schedule, compile; returns (layers, width, heads)."""
    _check_data_args(args)
    layers, width, heads = dims(args)
    _check_eval_tokens(args, args.block_size)
    # a given tokenizer's size is not known yet: the smallest one possible (checked again once it is read)
    vocab = (args.vocab_size or preset_vocab) if not args.tokenizer else 257
    check_memory(args, layers=layers, width=width, vocab=vocab, block=args.block_size, training=True)
    if args.embedding_rank is not None and not args.embeddings:
        raise UsageError("--embedding-rank sets the TT embedding's rank; it needs --embeddings")
    dist = Distributed()  # a malformed torchrun environment
    if args.batch_size % dist.world:
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by the {dist.world} processes")
    _check_compile(args)
    _check_schedule(args)
    return layers, width, heads


def check_compare(args) -> None:
    _, width, heads = _check_training(args, preset_vocab=4096)
    resolve_shapes(args, width, 4 * width)
    _runfolder.check_run_folder(Path(args.out), kind="compare", overwrite=args.overwrite)
    _dry_run(args, width, heads, rank=args.rank, lowrank_rank=None if args.no_lowrank else -1)


def check_train(args) -> None:
    tiny = args.preset == "tiny"
    for name, value in ({"lr": 1e-3, "warmup": 100} if tiny else {"lr": 6.25e-5, "warmup": 4000}).items():
        if getattr(args, name) is None:  # the preset's defaults
            setattr(args, name, value)
    if args.rank and args.lowrank:
        raise UsageError(
            "--rank (a TTM model) and --lowrank (the low-rank baseline) choose different models; give one"
        )
    if (args.embeddings or args.embedding_rank is not None) and not args.rank:
        raise UsageError("--embeddings/--embedding-rank make a TT embedding, which needs --rank")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it; give one")
    _, width, heads = _check_training(args, preset_vocab=4096 if tiny else 16384)
    resolve_shapes(args, width, 4 * width)
    if Distributed().main:
        _runfolder.check_run_folder(
            Path(args.out), kind="train", resume=args.resume, overwrite=args.overwrite
        )
    if args.resume:
        check_resume(args.out, train_config(args, checkpoint_every=args.checkpoint_every), args.stop_at)
    _dry_run(args, width, heads, rank=args.rank, lowrank_rank=args.lowrank or None)


def _layer_weights(sizes: dict) -> dict[str, tuple[int, int]]:
    """``(out, in)`` of every layer compress may convert, from a model's sizes."""
    width = sizes["n_embd"]
    inner = sizes["n_inner"] or 4 * width
    return {
        "mlp.c_fc": (inner, width),
        "mlp.c_proj": (width, inner),
        "attn.c_attn": (3 * width, width),
        "attn.c_proj": (width, width),
    }


def _tt_params(pairs, rank: int) -> int:
    """Parameters of a TT-matrix with core pairs ``(m_k, n_k)`` at ``rank`` (each bond at most its useful rank)."""
    from tensornet.shapes import useful_ranks

    ranks = (1, *(min(rank, r) for r in useful_ranks([m * n for m, n in pairs])), 1)
    return sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(pairs))


def check_compress(args) -> None:
    if args.rank is None and args.eps is None:
        raise UsageError("give exactly one of --rank and --eps")
    sizes = check_eval(args)
    if args.embedding_rank is not None and not args.embeddings:
        raise UsageError("--embedding-rank sets the TT embedding's rank; it needs --embeddings")
    src, out = Path(args.model).resolve(), Path(args.out).resolve()
    if out == src or src in out.parents:
        raise UsageError(
            f"--out {args.out!r} is the source model folder {args.model!r} or inside it: the compressed model "
            "would replace the model it is made from; choose another folder"
        )
    if out in src.parents:
        raise UsageError(
            f"--out {args.out!r} holds the source model folder {args.model!r}; choose another folder"
        )
    check_model_target(Path(args.out), overwrite=args.overwrite, where="--out")
    resolve_shapes(args, sizes["n_embd"], sizes["n_inner"] or 4 * sizes["n_embd"])
    dense, tt = 0, 0
    for key, weight in _layer_weights(sizes).items():
        if key not in (k for group in args.layers for k in LAYER_GROUPS[group]):
            continue
        try:
            pairs = layer_shapes(key, weight, rank=args.rank or 64, shapes=args.shapes, ncores=args.ncores)
        except (ValueError, TypeError) as err:
            raise UsageError(cli_spelling(str(err))) from None
        dense, tt = dense + math.prod(weight), tt + (_tt_params(pairs, args.rank) if args.rank else 0)
    if tt > dense:
        warn(
            f"--rank {args.rank} stores the converted layers in {tt:,} numbers, more than their {dense:,} dense "
            f"weights ({100 * tt / dense:.0f}%): the compressed model is larger than the original; lower --rank "
            "or give --eps"
        )


def _model_folder(args) -> None:
    """MODEL, checked to be a folder; a train run folder stands for its ``model/`` (``args.model`` is set to it).

    A model folder that a killed ``save_model`` had set aside is restored first.
    """
    path = Path(args.model)
    _files.restore_set_aside(path, _files.MODEL_FILES)
    if not path.exists():
        raise UsageError(f"model folder {args.model!r} does not exist")
    _check_exists("the model folder", args.model, folder=True)
    if (path / "config.json").exists() or not (path / _runfolder.MANIFEST).is_file():
        return
    try:
        kind = (_runfolder.read_manifest(path) or {}).get("kind")
    except ValueError:
        return  # an unreadable manifest: not a run folder to look into (read_config says what is missing)
    model = path / "model"
    _files.restore_set_aside(model, _files.MODEL_FILES)
    if kind == "train" and (model / "config.json").is_file():
        args.model = str(model)
        args.model_note = f"the model of the train run in {str(path)!r}"
    elif kind == "train":
        raise UsageError(
            f"{str(path)!r} is a train run folder without a model yet: a run writes model/ when it finishes; "
            f"finish it with train --resume --out {path}, then give {str(model)!r}"
        )


def check_eval(args) -> dict:
    """The model folder's config.json (checked; nothing loaded) against the flags and this machine's memory.

    The flags are --block-size, --eval-tokens and --batch-size. Returns the model's sizes.
    """
    _model_folder(args)
    _check_exists("--text", args.text)
    _check_exists("--tokenizer", args.tokenizer)
    _, sizes = read_config(args.model)
    block = min(args.block_size or sizes["n_positions"], sizes["n_positions"])
    _check_eval_tokens(args, block)
    check_memory(
        args,
        layers=sizes["n_layer"],
        width=sizes["n_embd"],
        vocab=sizes["vocab_size"],
        block=block,
        training=False,
        model=str(Path(args.model) / "config.json"),
        positions=sizes["n_positions"],
    )
    return sizes


CHECKS = {"compare": check_compare, "train": check_train, "compress": check_compress, "eval": check_eval}


def check(args) -> None:
    """The command's checks; their warnings are said once every check passed (an error is said alone)."""
    global _deferred
    _deferred = []
    try:
        CHECKS[args.command](args)
    finally:
        said, _deferred = _deferred, None
    if Distributed().main:  # under torchrun, said once (by the first process)
        for message in said:
            warn(message)
