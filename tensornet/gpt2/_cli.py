"""``python -m tensornet.gpt2 {compare,train,compress,eval}``: the command line (the only place that prints)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from . import _checkpoint, _data, _files
from ._model import (
    PRESETS,
    build_model,
    check_model_target,
    gpt2_config,
    load_model,
    save_model,
    save_run_model,
)
from ._tensorize import LAYER_GROUPS, SHAPE_KEYS, layer_shapes, lowrank, nparams, tensorize
from ._train import (
    CHECKPOINT,
    Distributed,
    TrainConfig,
    check_checkpoint_fits,
    check_resume,
    check_tokens,
    default_device,
    evaluate,
    train,
)

_EPILOG = """The embedded corpus (used when --data is not given) is the Python standard library's source code:
deterministic file order, a fixed ~5% validation split by file name, no network. The tokenizer is a
byte-level BPE trained on the training text with Hugging Face tokenizers and cached under --cache-dir.
Output folders: a new or empty folder, or one this command wrote (marked by tensornet-run.json); --overwrite
replaces only the files it wrote there."""


# learning-rate multiplier of the TT cores in `compare` (measured for its model; not a universal setting)
TT_LR_SCALE = 5.0


class UsageError(ValueError):
    """A flag's value, or a combination of flags, that the command refuses before doing any work."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line ``error: ...`` (exit status 2) instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------------------------------ value parsers
def _int(lo: int, hi: int | None = None):
    """An argparse ``type=``: an integer in ``[lo, hi]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            rule = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _float(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse ``type=``: a finite number in the interval from ``lo`` to ``hi`` (open ends as flagged)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
        if not math.isfinite(value) or not inside:
            if hi == math.inf:
                rule = f"{'>' if lo_open else '>='} {lo:g}"
            else:
                rule = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be a finite number {rule}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _shapes(value: str):
    """``--shapes``: 'paper', 'balanced' or a JSON object of (out_k, in_k) pairs per layer name."""
    if value in ("paper", "balanced"):
        return value
    try:
        shapes = json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(
            f"must be 'paper', 'balanced' or a JSON object, got {value!r} (not valid JSON)"
        ) from None
    if not isinstance(shapes, dict) or not shapes:
        raise argparse.ArgumentTypeError(
            f"JSON must be a non-empty object mapping layer names to lists of [out_k, in_k] pairs, got {value!r}"
        )
    for key, pairs in shapes.items():
        if key not in SHAPE_KEYS:
            raise argparse.ArgumentTypeError(f"unknown layer {key!r}; the keys are among {list(SHAPE_KEYS)}")
        if not (
            isinstance(pairs, list)
            and pairs
            and all(
                isinstance(p, list)
                and len(p) == 2
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in p)
                for p in pairs
            )
        ):
            raise argparse.ArgumentTypeError(
                f"{key!r} must be a non-empty list of [out_k, in_k] pairs of positive integers, got {pairs!r}"
            )
    return shapes


def _layers(value: str) -> tuple[str, ...]:
    layers = tuple(s.strip() for s in value.split(",") if s.strip())
    bad = [s for s in layers if s not in LAYER_GROUPS]
    if bad or not layers:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated subset of {sorted(LAYER_GROUPS)}, got {value!r}"
        )
    return layers


def _device(value: str) -> str:
    """``--device``: a torch device string this machine has."""
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {value!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{value!r} asks for CUDA, but torch sees no CUDA device here")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"{value!r}: this machine has {count} CUDA device(s), 0 to {count - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{value!r}: the MPS backend is not available here")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {value!r}; use cpu, cuda or cuda:N")
    return value


def _path(text: str) -> str:
    """An argparse ``type=`` for paths: not empty (``""`` would silently mean the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("the path is empty; give a file or folder")
    return text


_path.__name__ = "path"

# upper bounds of the size flags: far above what fits a machine today (the memory check refuses sooner), low
# enough that no flag overflows an integer or builds a model for hours before failing
MAX_LAYERS, MAX_WIDTH, MAX_HEADS = 1024, 65536, 4096
MAX_BLOCK, MAX_BATCH, MAX_STEPS = 65536, 65536, 10**9
MAX_RANK, MAX_NCORES, MAX_THREADS = 65536, 64, 1024
MAX_CHARS = MAX_TOKENS = 2**40
_STEPS, _NONNEG_STEPS = _int(1, MAX_STEPS), _int(0, MAX_STEPS)
_LAYERS, _WIDTH, _HEADS = _int(1, MAX_LAYERS), _int(1, MAX_WIDTH), _int(1, MAX_HEADS)
_BLOCK, _BATCH = _int(1, MAX_BLOCK), _int(1, MAX_BATCH)
_RANK, _RANK0, _NCORES = _int(1, MAX_RANK), _int(0, MAX_RANK), _int(1, MAX_NCORES)
_CHARS, _TOKENS, _THREADS = _int(1, MAX_CHARS), _int(0, MAX_TOKENS), _int(1, MAX_THREADS)
_SEED = _int(0, 2**32 - 1)
_VOCAB = _int(257, 2**31 - 1)
_UNIT = _float(0, 1)  # [0, 1]
_BETA = _float(0, 1, hi_open=True)  # [0, 1)
_LR = _float(0, 1, lo_open=True)  # (0, 1]
_NONNEG_F = _float(0)
_POS_F = _float(0, lo_open=True)
_EPS = _float(0, 1, lo_open=True, hi_open=True)


def _add_data_args(p: argparse.ArgumentParser, *, max_chars: int | None) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        type=_path,
        metavar="PATH",
        help="UTF-8 text file or folder of them (default: the embedded Python standard library corpus)",
    )
    g.add_argument(
        "--max-chars",
        type=_CHARS,
        default=max_chars,
        metavar="N",
        help="use only the first N characters of training text (and N/10 of validation text), N <= 2**40"
        + (f"; default {max_chars:,}" if max_chars else "; default: all"),
    )
    g.add_argument(
        "--tokenizer",
        type=_path,
        metavar="PATH",
        help="saved tokenizer (tokenizer.json, or a GPT-2 folder with "
        "vocab.json + merges.txt); default: train a byte-level BPE on the training text and cache it",
    )
    g.add_argument(
        "--vocab-size",
        type=_VOCAB,
        default=None,
        metavar="V",
        help="BPE vocabulary size when training the tokenizer (default 4096 for compare and train --preset "
        "tiny, 16384 otherwise)",
    )
    g.add_argument(
        "--cache-dir",
        type=_path,
        metavar="DIR",
        help="tokenizer/token cache (default $TENSORNET_CACHE or ~/.cache/tensornet)",
    )


def _add_model_args(
    p: argparse.ArgumentParser, *, preset: str | None, n_layer=None, n_embd=None, n_head=None
):
    g = p.add_argument_group("model")
    if preset is not None:
        g.add_argument(
            "--preset",
            choices=sorted(PRESETS),
            default=preset,
            help="size: "
            + ", ".join(f"{k} = {v[0]} layers x {v[1]} wide, {v[2]} heads" for k, v in PRESETS.items())
            + f" (default {preset})",
        )
    where = "(overrides the preset)" if preset is not None else "(default %(default)s)"
    g.add_argument(
        "--n-layer", type=_LAYERS, default=n_layer, help=f"number of blocks, 1 to {MAX_LAYERS} {where}"
    )
    g.add_argument("--n-embd", type=_WIDTH, default=n_embd, help=f"model width, 1 to {MAX_WIDTH} {where}")
    g.add_argument("--n-head", type=_HEADS, default=n_head, help=f"attention heads, 1 to {MAX_HEADS} {where}")
    g.add_argument(
        "--dropout",
        type=_BETA,
        default=0.0,
        help="dropout on embeddings, attention and residuals, in [0, 1) (default 0)",
    )


def _add_ttm_args(
    p: argparse.ArgumentParser, *, rank: int | None, shapes: str, help_rank: str, ncores: int = 3
) -> None:
    g = p.add_argument_group("tensorization")
    g.add_argument("--rank", type=_RANK0 if rank == 0 else _RANK, default=rank, help=help_rank)
    g.add_argument(
        "--shapes",
        type=_shapes,
        default=shapes,
        help="core shapes: 'paper' (the paper's shapes for GPT-2 small/"
        "medium MLPs), 'balanced' (--ncores near-equal factors), or a JSON object such as "
        '\'{"mlp.c_fc": [[8,8],[8,8],[16,4]], "mlp.c_proj": [[8,8],[8,8],[4,16]]}\' of (out_k, in_k) '
        f"pairs, as nn.Linear.weight is (out, in) (default {shapes})",
    )
    g.add_argument(
        "--ncores",
        type=_NCORES,
        default=ncores,
        help=f"number of TT cores for --shapes balanced, 1 to {MAX_NCORES} (default {ncores})",
    )
    g.add_argument(
        "--layers",
        type=_layers,
        default="mlp",
        help=f"comma-separated layer groups to tensorize, from "
        f"{sorted(LAYER_GROUPS)} (default mlp, as in the paper)",
    )
    g.add_argument(
        "--no-bias",
        action="store_true",
        help="drop the biases of tensorized layers (the paper's r=16/32/64 runs)",
    )
    _add_embedding_args(g)


def _add_embedding_args(g) -> None:
    g.add_argument(
        "--embeddings",
        action="store_true",
        help="also make the token embedding a TT embedding (the LM head stays tied to it)",
    )
    g.add_argument(
        "--embedding-rank",
        type=_RANK,
        default=None,
        help=f"TT rank of the embedding, 1 to {MAX_RANK} (default: --rank)",
    )


def _add_train_args(
    p: argparse.ArgumentParser, d: TrainConfig, *, recipe_note: str, helps: dict[str, str] | None = None
) -> None:
    """The optimisation flags with ``d``'s defaults; ``helps`` replaces a flag's default note (by dest)."""
    helps = helps or {}
    g = p.add_argument_group("optimisation (" + recipe_note + ")")
    g.add_argument(
        "--steps", type=_STEPS, default=d.steps, help=f"optimizer steps, 1 to 10**9 (default {d.steps})"
    )
    g.add_argument(
        "--batch-size",
        type=_BATCH,
        default=d.batch_size,
        help=f"sequences per step over all processes, 1 to {MAX_BATCH} (default {d.batch_size})",
    )
    g.add_argument(
        "--block-size",
        type=_BLOCK,
        default=d.block_size,
        help=f"sequence length, 1 to {MAX_BLOCK} (default {d.block_size})",
    )
    g.add_argument(
        "--lr",
        type=_LR,
        default=d.lr,
        help="peak AdamW learning rate " + helps.get("lr", f"(default {d.lr:g})"),
    )
    g.add_argument(
        "--min-lr-ratio",
        type=_UNIT,
        default=d.min_lr_ratio,
        help=f"cosine decays to lr x this (default {d.min_lr_ratio:g})",
    )
    g.add_argument(
        "--warmup",
        type=_NONNEG_STEPS,
        default=d.warmup,
        help="linear warmup steps, up to 10**9 " + helps.get("warmup", f"(default {d.warmup})"),
    )
    g.add_argument(
        "--weight-decay",
        type=_NONNEG_F,
        default=d.weight_decay,
        help=f"AdamW weight decay on matrices and TT cores (default {d.weight_decay:g})",
    )
    g.add_argument("--beta1", type=_BETA, default=d.beta1, help=f"AdamW beta1 (default {d.beta1:g})")
    g.add_argument(
        "--beta2",
        type=_BETA,
        default=d.beta2,
        help=f"AdamW beta2 (default {d.beta2:g}; the paper's medium run used 0.95)",
    )
    g.add_argument(
        "--clip", type=_NONNEG_F, default=d.clip, help=f"gradient-norm clip, 0 = off (default {d.clip:g})"
    )
    g.add_argument(
        "--tt-lr-scale",
        type=_POS_F,
        default=d.tt_lr_scale,
        metavar="X",
        help="learning-rate multiplier for the TT cores, which move W less per Adam step than a dense "
        "matrix does; a per-model hyperparameter (benchmarks/results/gpt2_compare_cpu.md) "
        + helps.get("tt_lr_scale", f"(default {d.tt_lr_scale:g})"),
    )
    g.add_argument(
        "--seed", type=_SEED, default=d.seed, help="seed for initialisation and data order (default 0)"
    )
    g.add_argument(
        "--eval-every",
        type=_NONNEG_STEPS,
        default=d.eval_every,
        help="evaluate every N steps, N <= 10**9 (0: only at the end; default %(default)s)",
    )
    g.add_argument(
        "--eval-tokens",
        type=_TOKENS,
        default=d.eval_tokens,
        help="validation tokens per evaluation: 0 = all, else from --block-size to 2**40 (default "
        "%(default)s)",
    )
    g.add_argument(
        "--device", type=_device, default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)"
    )


def _train_config(args, **extra) -> TrainConfig:
    return TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        block_size=args.block_size,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        beta1=args.beta1,
        beta2=args.beta2,
        clip=args.clip,
        tt_lr_scale=args.tt_lr_scale,
        seed=args.seed,
        eval_every=args.eval_every,
        eval_tokens=args.eval_tokens,
        **extra,
    )


def _tokenizer(args, corpus, *, vocab_size: int):
    if args.tokenizer:
        return _data.load_tokenizer(args.tokenizer)
    return _data.cached_tokenizer(corpus, vocab_size, args.cache_dir)


# ------------------------------------------------------------------------------------- checks before work
# Each command's check runs right after parsing, before any corpus is read, tokenizer trained or folder
# created; whatever it raises is reported as a usage error (`error: ...`, exit status 2).
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


def _dims(args) -> tuple[int, int, int]:
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


def _cli_spelling(message: str) -> str:
    """A library message in the command line's words (``--shapes balanced``, not ``shapes='balanced'``)."""
    return message.replace("shapes='balanced'", "--shapes balanced").replace(
        "shapes='paper'", "--shapes paper"
    )


def _dry_run(args, width: int, heads: int, *, rank: int, lowrank_rank: int | None = None) -> int | None:
    """Tensorize one block of a meta-device model (nothing is allocated), so a --rank, --shapes or --ncores
    that cannot work is reported now rather than after the tokenizer is trained. With ``lowrank_rank=-1`` the
    low-rank baseline is sized like compare does (its rank is returned)."""
    from ._tensorize import lowrank_rank_for

    if not rank and not lowrank_rank:
        return None
    config = gpt2_config(
        vocab_size=257, block_size=args.block_size, preset=None, n_layer=1, n_embd=width, n_head=heads
    )
    bias = not args.no_bias if hasattr(args, "no_bias") else True
    sized = lowrank_rank == -1
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            if rank:
                _, report = tensorize(
                    build_model(config),
                    rank=rank,
                    shapes=args.shapes,
                    layers=args.layers,
                    bias=bias,
                    ncores=args.ncores,
                )
                if sized:
                    lowrank_rank = lowrank_rank_for(
                        report.layers[0].params_after, width, 4 * width, bias=bias
                    )
        except (ValueError, TypeError) as err:
            raise UsageError(_cli_spelling(str(err))) from None
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
    return lowrank_rank


def _check_memory(
    args,
    *,
    layers: int,
    width: int,
    vocab: int,
    block: int,
    training: bool,
    model: str | None = None,
    positions: int | None = None,
) -> None:
    """Refuse what cannot fit this machine's (or the device's) memory: the dense model as built (before any
    tensorization) with, when ``training``, its gradients and AdamW state, plus a lower bound of the
    activations of one batch (the logits and a few tensors per layer). Only sure failures are refused.
    ``model``: the config.json the sizes come from (eval/compress: ``positions`` is its n_positions), else
    they come from the flags."""
    from ._model import dense_params, memory_bytes

    device = torch.device(args.device) if args.device else default_device()
    have = memory_bytes(device)
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
        lower = (
            "--batch-size or --block-size"
            if model
            else "--n-layer, --n-embd, --vocab-size, --batch-size or --block-size"
        )
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


def check_compare(args) -> None:
    _check_data_args(args)
    layers, width, heads = _dims(args)
    Distributed()  # a malformed torchrun environment
    _check_eval_tokens(args, args.block_size)
    # a given tokenizer's size is not known yet: the smallest one possible (the tokens are checked again)
    vocab = (args.vocab_size or 4096) if not args.tokenizer else 257
    _check_memory(args, layers=layers, width=width, vocab=vocab, block=args.block_size, training=True)
    if args.embedding_rank is not None and not args.embeddings:
        raise UsageError("--embedding-rank sets the TT embedding's rank; it needs --embeddings")
    _files.check_run_folder(Path(args.out), kind="compare", overwrite=args.overwrite)
    _dry_run(args, width, heads, rank=args.rank, lowrank_rank=None if args.no_lowrank else -1)


def _resolve_train_defaults(args) -> None:
    tiny = args.preset == "tiny"
    defaults = {"lr": 1e-3, "warmup": 100} if tiny else {"lr": 6.25e-5, "warmup": 4000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_train(args) -> None:
    _resolve_train_defaults(args)
    _check_data_args(args)
    layers, width, heads = _dims(args)
    _check_eval_tokens(args, args.block_size)
    # a given tokenizer's size is not known yet: the smallest one possible (checked again once it is read)
    vocab = (args.vocab_size or (4096 if args.preset == "tiny" else 16384)) if not args.tokenizer else 257
    _check_memory(args, layers=layers, width=width, vocab=vocab, block=args.block_size, training=True)
    if args.rank and args.lowrank:
        raise UsageError(
            "--rank (a TTM model) and --lowrank (the low-rank baseline) choose different models; give one"
        )
    if (args.embeddings or args.embedding_rank is not None) and not args.rank:
        raise UsageError("--embeddings/--embedding-rank make a TT embedding, which needs --rank")
    if args.embedding_rank is not None and not args.embeddings:
        raise UsageError("--embedding-rank sets the TT embedding's rank; it needs --embeddings")
    dist = Distributed()
    if args.batch_size % dist.world:
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by the {dist.world} processes")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it; give one")
    if dist.main:
        _files.check_run_folder(Path(args.out), kind="train", resume=args.resume, overwrite=args.overwrite)
    if args.resume:
        cfg = _train_config(args, checkpoint_every=args.checkpoint_every, compile=args.compile)
        check_resume(args.out, cfg, args.stop_at)
    _dry_run(args, width, heads, rank=args.rank, lowrank_rank=args.lowrank or None)


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
    # the core shapes of every converted layer, from the model's sizes (nothing is loaded)
    width = sizes["n_embd"]
    inner = sizes["n_inner"] or 4 * width
    weights = {  # (out, in)
        "mlp.c_fc": (inner, width),
        "mlp.c_proj": (width, inner),
        "attn.c_attn": (3 * width, width),
        "attn.c_proj": (width, width),
    }
    for group in args.layers:
        for key in LAYER_GROUPS[group]:
            try:
                layer_shapes(key, weights[key], rank=args.rank or 64, shapes=args.shapes, ncores=args.ncores)
            except (ValueError, TypeError) as err:
                raise UsageError(_cli_spelling(str(err))) from None


def check_eval(args) -> dict:
    """The model folder's config.json (checked; nothing is loaded) against --block-size, --eval-tokens,
    --batch-size and this machine's memory; returns the model's sizes."""
    from ._model import read_config

    if not Path(args.model).exists():
        raise UsageError(f"model folder {args.model!r} does not exist")
    _check_exists("the model folder", args.model, folder=True)
    _check_exists("--text", args.text)
    _check_exists("--tokenizer", args.tokenizer)
    _, sizes = read_config(args.model)
    block = min(args.block_size or sizes["n_positions"], sizes["n_positions"])
    _check_eval_tokens(args, block)
    _check_memory(
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


# --------------------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    from ._compare import compare, table

    out = Path(args.out)
    with _files.RunFolder.open(out, kind="compare", overwrite=args.overwrite):
        corpus = _data.load_corpus(args.data, max_chars=args.max_chars)
        print(f"corpus: {corpus.description}")
        tokenizer = _tokenizer(args, corpus, vocab_size=args.vocab_size or 4096)
        _check_memory(
            args,
            layers=args.n_layer,
            width=args.n_embd,
            vocab=tokenizer.get_vocab_size(),
            block=args.block_size,
            training=True,
        )
        train_ids, val_ids = _data.cached_tokens(corpus, tokenizer, args.cache_dir)
        check_tokens(train_ids, val_ids, _train_config(args))
        print(
            f"tokens: {train_ids.numel():,} train / {val_ids.numel():,} validation, vocabulary "
            f"{tokenizer.get_vocab_size():,}"
        )
        token_file = out / "tokens.safetensors"
        device = args.device or str(default_device())
        eot = tokenizer.token_to_id(_data.EOT)
        spec = {
            "config": {
                "vocab_size": tokenizer.get_vocab_size(),
                "block_size": args.block_size,
                "preset": None,
                "n_layer": args.n_layer,
                "n_embd": args.n_embd,
                "n_head": args.n_head,
                "dropout": args.dropout,
                "eos_token_id": eot,
            },
            "seed": args.seed,
            "rank": args.rank,
            "shapes": args.shapes,
            "ncores": args.ncores,
            "embeddings": args.embeddings,
            "embedding_rank": args.embedding_rank,
            "layers": args.layers,
            "bias": not args.no_bias,
            "device": device,
            "tokens": str(token_file),
            "train": asdict(_train_config(args)),
            "corpus": corpus.description,
            "threads": args.threads,
        }
        variants = ("dense", "ttm") + (() if args.no_lowrank else ("lowrank",))
        tokens = args.steps * args.batch_size * args.block_size
        print(
            f"training {', '.join(variants)}: {args.steps} steps x {args.batch_size} x {args.block_size} = "
            f"{tokens:,} tokens each, seed {args.seed}, on {device}; lr {args.lr:g} (TT cores x{args.tt_lr_scale:g})"
        )
        _checkpoint.save_tensors(token_file, {"train": train_ids.int(), "val": val_ids.int()})
        try:
            summary = compare(spec, out=out, variants=variants)
        finally:
            token_file.unlink(missing_ok=True)  # scratch for the worker processes
    print(f"\n{summary['machine']}; {tokens:,} training tokens per model\n")
    print(table(summary))
    print(f"\nwrote {out / 'results.json'} and {out / 'loss_curves.png'}")
    return 0


# ----------------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    dist = Distributed()
    out = Path(args.out)
    folder = None
    if dist.main:  # held for the whole run: the checkpoint, the log and the model folder
        folder = _files.RunFolder.open(out, kind="train", resume=args.resume, overwrite=args.overwrite)
    try:
        return _train(args, dist, out)
    finally:
        if folder is not None:
            folder.close()
        if torch.distributed.is_initialized():  # started by train() under torchrun
            torch.distributed.destroy_process_group()


def _train(args, dist: Distributed, out: Path) -> int:
    tiny = args.preset == "tiny"
    corpus = _data.load_corpus(args.data, max_chars=args.max_chars)
    tokenizer = _tokenizer(args, corpus, vocab_size=args.vocab_size or (4096 if tiny else 16384))
    layers, width, _ = _dims(args)
    _check_memory(
        args,
        layers=layers,
        width=width,
        vocab=tokenizer.get_vocab_size(),
        block=args.block_size,
        training=True,
    )
    config = gpt2_config(
        vocab_size=tokenizer.get_vocab_size(),
        block_size=args.block_size,
        preset=args.preset,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        dropout=args.dropout,
        eos_token_id=tokenizer.token_to_id(_data.EOT),
    )
    model = build_model(config, seed=args.seed)
    report = None
    if args.rank:
        model, report = tensorize(
            model,
            rank=args.rank,
            shapes=args.shapes,
            layers=args.layers,
            bias=not args.no_bias,
            ncores=args.ncores,
            embeddings=args.embeddings,
            embedding_rank=args.embedding_rank,
        )
    elif args.lowrank:
        model, report = lowrank(model, rank=args.lowrank, layers=args.layers, bias=not args.no_bias)
    cfg = _train_config(args, checkpoint_every=args.checkpoint_every, compile=args.compile)
    model_settings = json.loads(model.config.to_json_string(use_diff=False))
    model_settings.pop("transformers_version", None)  # a library upgrade does not change the model
    signature = {
        "model": model_settings,
        "corpus": corpus.fingerprint(),
        "tokenizer": _data.tokenizer_id(tokenizer),
    }
    if args.resume:  # the checkpoint's shapes and settings against this model, before the tokens are read
        check_checkpoint_fits(out, model, cfg, signature)
    train_ids, val_ids = _data.cached_tokens(corpus, tokenizer, args.cache_dir)
    check_tokens(train_ids, val_ids, cfg)
    if dist.main:
        print(f"corpus: {corpus.description}")
        print(
            f"model: {config.n_layer} layers x {config.n_embd}, vocabulary {config.vocab_size:,}, "
            f"{nparams(model):,} parameters" + ("" if report is None else f"\n{report}")
        )
        print(
            f"optimisation: {cfg.steps} steps x {cfg.batch_size} x {cfg.block_size}, lr {cfg.lr:g}, warmup "
            f"{cfg.warmup}" + (f", TT cores at lr x{cfg.tt_lr_scale:g}" if args.rank else "")
        )

    def on_eval(step: int, loss: float) -> None:
        if not args.no_progress:
            print(
                f"step {step}: validation loss {loss:.4f}, perplexity {math.exp(loss):.2f}", file=sys.stderr
            )

    history = train(
        model,
        train_ids,
        val_ids,
        cfg,
        out=out,
        resume=args.resume,
        overwrite=args.overwrite,
        stop_at=args.stop_at,
        device=args.device,
        progress=not args.no_progress,
        signature=signature,
        on_eval=on_eval,
    )
    if dist.main:
        finished = len(history.loss) >= cfg.steps
        if finished:  # the run folder is this run's own: its model/ is replaced
            save_run_model(model, out / "model", tokenizer=tokenizer)
        last = f", validation perplexity {history.val_ppl:.2f}" if history.val else ""
        state = "finished" if finished else "stopped"
        if history.steps_run == 0:  # resumed at the step it was asked to reach: nothing was trained
            print(
                f"nothing to train: the run in {str(out)!r} had already {state} at step {len(history.loss)}/"
                f"{cfg.steps}: train loss {history.loss[-1]:.4f}{last}"
            )
        else:
            print(
                f"{state} at step {len(history.loss)}/{cfg.steps}: train loss {history.loss[-1]:.4f}{last}, "
                f"{history.tokens_per_s:,.0f} tokens/s, peak memory {history.peak_memory_mib:,.0f} MiB"
            )
        print(
            f"checkpoint: {out / CHECKPOINT}"
            + (f"; model: {out / 'model'}" if finished else "; continue with --resume")
        )
    return 0


# -------------------------------------------------------------------------------------------- compress/eval
def _eval_tokens(args, model_dir: Path, model):
    if args.tokenizer:
        tokenizer = _data.load_tokenizer(args.tokenizer)
    else:
        tokenizer = _data.load_tokenizer(model_dir, flag="the model folder's tokenizer (or give --tokenizer)")
    if args.text:
        corpus = _data.load_corpus(args.text, flag="--text", split=False)
        texts = corpus.train + corpus.val  # evaluate all of it
    else:
        texts = _data.stdlib_corpus(max_chars=args.max_chars).val
    ids = _data.encode(tokenizer, texts)
    block = min(args.block_size or model.config.n_positions, model.config.n_positions)
    if ids.numel() < block + 1:
        source = (
            f"--text {args.text!r}" if args.text else "the embedded corpus's validation text (--max-chars)"
        )
        raise ValueError(
            f"{source} has {ids.numel():,} tokens, fewer than one evaluation window of {block + 1:,} "
            "(--block-size + 1); give more text or a smaller --block-size"
        )
    return tokenizer, ids


def _perplexity(model, ids, args) -> float:
    device = torch.device(args.device or default_device())
    model.to(device)
    block = min(args.block_size or model.config.n_positions, model.config.n_positions)
    loss = evaluate(
        model,
        ids,
        block_size=block,
        batch_size=args.batch_size,
        device=device,
        max_tokens=args.eval_tokens or None,
    )
    return math.exp(loss) if loss < 700 else math.inf


def _check_vocab(model, tokenizer, where: Path) -> None:
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.get_vocab_size():,} tokens but the model in {str(where)!r} "
            f"only {model.config.vocab_size:,}; pass the model's own --tokenizer"
        )


def cmd_compress(args) -> int:
    src = Path(args.model)
    model = load_model(src)
    tokenizer, ids = _eval_tokens(args, src, model)
    _check_vocab(model, tokenizer, src)
    before = _perplexity(model, ids, args)
    model.cpu()
    model, report = tensorize(
        model,
        rank=args.rank,
        eps=args.eps,
        shapes=args.shapes,
        layers=args.layers,
        bias=not args.no_bias,
        from_weights=True,
        ncores=args.ncores,
        embeddings=args.embeddings,
        embedding_rank=args.embedding_rank,
    )
    after = _perplexity(model, ids, args)
    save_model(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite)
    print(report)
    print(
        f"\nperplexity on {ids.numel():,} tokens: {before:.3f} dense -> {after:.3f} TTM "
        f"({100 * (after / before - 1):+.1f}%); max layer relative error {report.max_error:.4f}"
    )
    print(f"saved {args.out}")
    return 0


def cmd_eval(args) -> int:
    src = Path(args.model)
    model = load_model(src)
    tokenizer, ids = _eval_tokens(args, src, model)
    _check_vocab(model, tokenizer, src)
    ppl = _perplexity(model, ids, args)
    print(f"{src}: {nparams(model):,} parameters, perplexity {ppl:.3f} on {ids.numel():,} tokens")
    return 0


# -------------------------------------------------------------------------------------------------- parser
def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="python -m tensornet.gpt2",
        description="Pre-train, compress and evaluate GPT-2 with tensor-train-matrix (TTM) layers.",
        epilog=_EPILOG,
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="{compare,train,compress,eval}")

    p = sub.add_parser(
        "compare",
        help="train dense, TTM and low-rank GPT-2 side by side (CPU: < 10 min)",
        description="Train a dense GPT-2, the same model with TTM MLPs and a low-rank (SVD-style) "
        "baseline of similar size, each with the same seed, token budget and data order; print a "
        "paper-style table and write results.json and loss_curves.png to --out.",
        epilog=_EPILOG,
    )
    p.add_argument("--out", type=_path, default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier compare in --out (only the files compare wrote)",
    )
    _add_data_args(p, max_chars=1_500_000)
    _add_model_args(p, preset=None, n_layer=4, n_embd=256, n_head=4)
    _add_ttm_args(
        p,
        rank=32,
        shapes="balanced",
        ncores=4,
        help_rank=f"TT rank of the TTM model, 1 to {MAX_RANK} (default 32)",
    )
    p.add_argument("--no-lowrank", action="store_true", help="skip the low-rank baseline")
    p.add_argument(
        "--threads",
        type=_THREADS,
        default=None,
        help=f"torch CPU threads per training process, 1 to {MAX_THREADS} (default: torch's default, the "
        "number of cores)",
    )
    _add_train_args(
        p,
        TrainConfig(
            # 300 steps x 16 x 128 = 614,400 tokens per model: the whole command (tokenizer, three trainings,
            # evaluations) measured 6-7 minutes on an idle 2-core machine
            steps=300,
            batch_size=16,
            block_size=128,
            lr=2e-3,
            warmup=30,
            weight_decay=0.01,
            beta2=0.99,
            eval_tokens=0,
            # TT cores at 5x the dense lr: inside the flat optimum 3x-64x measured for this model in
            # benchmarks/results/gpt2_compare_cpu.md (1x: +56%, 2x: -2%, 3x-64x: -5% to -9% vs dense; dense
            # MLP weights at 3x and the low-rank factors at 2x-9x did not gain; notebook 04's smaller 3-core
            # model is best at 1x, so this is a per-model setting)
            tt_lr_scale=TT_LR_SCALE,
        ),
        recipe_note="short-run defaults sized for 2 CPU cores",
        helps={
            "tt_lr_scale": f"(default {TT_LR_SCALE:g}, measured best for this model: 1x left it +56%% "
            "behind dense; the low-rank baseline keeps 1x)"
        },
    )
    p.set_defaults(func=cmd_compare, check=check_compare, _parser=p)

    p = sub.add_parser(
        "train",
        help="pre-train one GPT-2 (dense, TTM or low-rank), with checkpoints and DDP",
        description="Pre-train GPT-2 from scratch. Under torchrun it uses DDP (nccl on GPU, gloo "
        "on CPU). bf16 autocast on GPU. Writes checkpoint.safetensors, log.jsonl (one line per step "
        "and evaluation; after --resume the same as an uninterrupted run's) and, when done, a model/ folder "
        "loadable with tensornet.gpt2.load_model.",
        epilog=_EPILOG,
    )
    p.add_argument(
        "--out",
        type=_path,
        default="runs/train",
        help="output folder for the checkpoint, log and model: new, empty, or this command's own (default "
        "runs/train); locked while the run is alive",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out that holds a previous run (replaces only the files train wrote there)",
    )
    _add_data_args(p, max_chars=None)
    _add_model_args(p, preset="tiny")
    _add_ttm_args(
        p,
        rank=0,
        shapes="paper",
        help_rank=f"TT rank for TTM layers, up to {MAX_RANK}; 0 trains the dense model (default 0)",
    )
    p.add_argument(
        "--lowrank",
        type=_RANK0,
        default=0,
        metavar="R",
        help=f"train the low-rank baseline with inner size R <= {MAX_RANK} instead (default 0: off)",
    )
    _add_train_args(
        p,
        TrainConfig(),
        recipe_note="the paper's recipe: AdamW, warmup, cosine, clip 1.0; "
        "--lr and --warmup default to 1e-3/100 for tiny and to the paper's 6.25e-5/4000 otherwise",
        helps={
            "lr": "(default 1e-3 for --preset tiny, the paper's 6.25e-5 otherwise)",
            "warmup": "(default 100 for --preset tiny, the paper's 4000 otherwise)",
            "tt_lr_scale": "(default 1, the paper's recipe; compare uses 5 for its model)",
        },
    )
    p.set_defaults(lr=None, warmup=None)
    p.add_argument(
        "--checkpoint-every",
        type=_NONNEG_STEPS,
        default=0,
        help="checkpoint every N steps, N <= 10**9 (always at the end)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from --out/checkpoint.safetensors (same settings required)",
    )
    p.add_argument(
        "--stop-at",
        type=_STEPS,
        default=None,
        metavar="STEP",
        help="stop (with a checkpoint) after STEP steps, STEP <= 10**9; continue later with --resume",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train, check=check_train, _parser=p)

    for name, func, text in (
        ("compress", cmd_compress, "convert a local GPT-2 folder to TTM with ttm_svd"),
        ("eval", cmd_eval, "perplexity of a saved (dense or TTM) model"),
    ):
        p = sub.add_parser(
            name,
            help=text,
            description=text + ". Evaluation text: --text, else the embedded corpus's validation split.",
        )
        p.add_argument("model", type=_path, help="model folder (save_pretrained / tensornet.gpt2.save_model)")
        p.add_argument("--text", type=_path, metavar="PATH", help="UTF-8 text file or folder to evaluate on")
        p.add_argument(
            "--max-chars",
            type=_CHARS,
            default=None,
            help="limit the embedded corpus to N characters, N <= 2**40",
        )
        p.add_argument(
            "--tokenizer",
            type=_path,
            metavar="PATH",
            help="tokenizer (default: the one in the model folder)",
        )
        p.add_argument(
            "--block-size",
            type=_BLOCK,
            default=None,
            help=f"evaluation window, 1 to {MAX_BLOCK} (default n_positions)",
        )
        p.add_argument(
            "--batch-size",
            type=_BATCH,
            default=8,
            help=f"windows per forward pass, 1 to {MAX_BATCH} (default 8)",
        )
        p.add_argument(
            "--eval-tokens",
            type=_TOKENS,
            default=0,
            help="evaluate at most N tokens: 0 = all, else from the block size to 2**40",
        )
        p.add_argument(
            "--device", type=_device, default=None, help="cpu, cuda, ... (default: cuda if available)"
        )
        if name == "compress":
            p.add_argument(
                "--out",
                type=_path,
                required=True,
                help="folder for the compressed model (new, or empty; not the source folder)",
            )
            p.add_argument(
                "--overwrite",
                action="store_true",
                help="replace --out if it is a model folder written by tensornet's save_model (marked by "
                "tensornet-model.json, holding only its files)",
            )
            g = p.add_mutually_exclusive_group()
            g.add_argument("--rank", type=_RANK, help=f"TT rank of every converted layer, 1 to {MAX_RANK}")
            g.add_argument(
                "--eps",
                type=_EPS,
                help="relative-error target per layer, in (0, 1) (ranks chosen by ttm_svd)",
            )
            p.add_argument(
                "--shapes",
                type=_shapes,
                default="paper",
                help="'paper', 'balanced' or a JSON object (see train)",
            )
            p.add_argument(
                "--ncores",
                type=_NCORES,
                default=3,
                help=f"cores for --shapes balanced, 1 to {MAX_NCORES} (default 3)",
            )
            p.add_argument(
                "--layers",
                type=_layers,
                default="mlp",
                help="layer groups to convert: mlp, attn or mlp,attn",
            )
            p.add_argument("--no-bias", action="store_true", help="drop the converted layers' biases")
            _add_embedding_args(p)
        p.set_defaults(func=func, check=check_compress if name == "compress" else check_eval, _parser=p)
    return root


def main(argv: list[str] | None = None) -> int:
    """Run the command line; usage errors exit with status 2 (``SystemExit``), errors found while working
    (a damaged file, a diverged run) print ``error: ...`` and return 2."""
    args = parser().parse_args(argv)
    try:
        args.check(args)  # every input, before any data is read or any folder created
    except (ValueError, OSError) as err:
        args._parser.error(str(err))
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI prints its own progress
    try:
        return args.func(args)
    except (ValueError, OSError, NotImplementedError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "train" and (Path(args.out) / CHECKPOINT).is_file():
            note = "; the last checkpoint is intact (continue with --resume)"
        elif args.command == "train":
            note = " before the first checkpoint; nothing to resume"
        else:
            note = f"; {args.command} has no resume: run it again"
        print(f"interrupted{note}", file=sys.stderr)
        return 130
