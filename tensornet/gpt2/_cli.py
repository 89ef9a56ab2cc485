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

from . import _data, _files
from ._model import PRESETS, build_model, check_model_target, gpt2_config, load_model, save_model
from ._tensorize import LAYER_GROUPS, count_params, lowrank, tensorize
from ._train import (
    CHECKPOINT,
    Distributed,
    TrainConfig,
    check_resume,
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


_SHAPE_KEYS = (*(k for keys in LAYER_GROUPS.values() for k in keys), "wte")


def _shapes(value: str):
    """``--shapes``: 'paper', 'balanced' or a JSON object of (in_k, out_k) pairs per layer name."""
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
            f"JSON must be a non-empty object mapping layer names to lists of [in_k, out_k] pairs, got {value!r}"
        )
    for key, pairs in shapes.items():
        if key not in _SHAPE_KEYS:
            raise argparse.ArgumentTypeError(f"unknown layer {key!r}; the keys are among {list(_SHAPE_KEYS)}")
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
                f"{key!r} must be a non-empty list of [in_k, out_k] pairs of positive integers, got {pairs!r}"
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


_STEPS, _POS, _NONNEG = _int(1), _int(1), _int(0)
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
        metavar="PATH",
        help="UTF-8 text file or folder of them (default: the embedded Python standard library corpus)",
    )
    g.add_argument(
        "--max-chars",
        type=_POS,
        default=max_chars,
        metavar="N",
        help="use only the first N characters of training text (and N/10 of validation text)"
        + (f"; default {max_chars:,}" if max_chars else "; default: all"),
    )
    g.add_argument(
        "--tokenizer",
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
    g.add_argument("--n-layer", type=_POS, default=n_layer, help=f"number of blocks {where}")
    g.add_argument("--n-embd", type=_POS, default=n_embd, help=f"model width {where}")
    g.add_argument("--n-head", type=_POS, default=n_head, help=f"attention heads {where}")
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
    g.add_argument("--rank", type=_NONNEG if rank == 0 else _POS, default=rank, help=help_rank)
    g.add_argument(
        "--shapes",
        type=_shapes,
        default=shapes,
        help="core shapes: 'paper' (the paper's shapes for GPT-2 small/"
        "medium MLPs), 'balanced' (--ncores near-equal factors), or a JSON object such as "
        '\'{"mlp.c_fc": [[8,8],[8,8],[4,16]], "mlp.c_proj": [[8,8],[8,8],[16,4]]}\' of (in_k, out_k) '
        f"pairs (default {shapes})",
    )
    g.add_argument(
        "--ncores",
        type=_POS,
        default=ncores,
        help=f"number of TT cores for --shapes balanced (default {ncores})",
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
        "--embedding-rank", type=_POS, default=None, help="TT rank of the embedding (default: --rank)"
    )


def _add_train_args(
    p: argparse.ArgumentParser, d: TrainConfig, *, recipe_note: str, helps: dict[str, str] | None = None
) -> None:
    """The optimisation flags with ``d``'s defaults; ``helps`` replaces a flag's default note (by dest)."""
    helps = helps or {}
    g = p.add_argument_group("optimisation (" + recipe_note + ")")
    g.add_argument("--steps", type=_STEPS, default=d.steps, help=f"optimizer steps (default {d.steps})")
    g.add_argument(
        "--batch-size",
        type=_POS,
        default=d.batch_size,
        help=f"sequences per step over all processes (default {d.batch_size})",
    )
    g.add_argument(
        "--block-size", type=_POS, default=d.block_size, help=f"sequence length (default {d.block_size})"
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
        type=_NONNEG,
        default=d.warmup,
        help="linear warmup steps " + helps.get("warmup", f"(default {d.warmup})"),
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
        type=_NONNEG,
        default=d.eval_every,
        help="evaluate every N steps (0: only at the end; default %(default)s)",
    )
    g.add_argument(
        "--eval-tokens",
        type=_NONNEG,
        default=d.eval_tokens,
        help="validation tokens per evaluation, 0 = all (default %(default)s)",
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


def _tokens(args, corpus, *, vocab_size: int):
    if args.tokenizer:
        tokenizer = _data.load_tokenizer(args.tokenizer)
    else:
        tokenizer = _data.cached_tokenizer(corpus, vocab_size, args.cache_dir)
    train_ids, val_ids = _data.cached_tokens(corpus, tokenizer, args.cache_dir)
    return tokenizer, train_ids, val_ids


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
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            if rank:
                _, report = tensorize(
                    build_model(config),
                    rank=rank,
                    shapes=args.shapes,
                    layers=args.layers,
                    bias=bias,
                    ncores=args.ncores,
                )
                if lowrank_rank == -1:
                    lowrank_rank = lowrank_rank_for(
                        report.layers[0].params_after, width, 4 * width, bias=bias
                    )
            if lowrank_rank:
                lowrank(build_model(config), rank=lowrank_rank, layers=args.layers, bias=bias)
    except (ValueError, TypeError) as err:
        raise UsageError(str(err)) from None
    return lowrank_rank


def _check_data_args(args) -> None:
    _check_exists("--data", args.data)
    _check_exists("--tokenizer", args.tokenizer)
    if args.tokenizer and args.vocab_size is not None:
        raise UsageError("--vocab-size sizes a tokenizer trained here; it does not apply with --tokenizer")
    _check_cache_dir(args)


def check_compare(args) -> None:
    _check_data_args(args)
    _, width, heads = _dims(args)
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
    _, width, heads = _dims(args)
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
    check_eval(args)
    if args.embedding_rank is not None and not args.embeddings:
        raise UsageError("--embedding-rank sets the TT embedding's rank; it needs --embeddings")
    check_model_target(Path(args.out), overwrite=args.overwrite, where="--out")


def check_eval(args) -> None:
    if not Path(args.model).exists():
        raise UsageError(f"model folder {args.model!r} does not exist")
    _check_exists("the model folder", args.model, folder=True)
    _check_exists("--text", args.text)
    _check_exists("--tokenizer", args.tokenizer)


# --------------------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    from ._compare import compare, table

    out = Path(args.out)
    with _files.RunFolder.open(out, kind="compare", overwrite=args.overwrite):
        corpus = _data.load_corpus(args.data, max_chars=args.max_chars)
        print(f"corpus: {corpus.description}")
        tokenizer, train_ids, val_ids = _tokens(args, corpus, vocab_size=args.vocab_size or 4096)
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
        _files.save_tensors(token_file, {"train": train_ids.int(), "val": val_ids.int()})
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
    tokenizer, train_ids, val_ids = _tokens(
        args, corpus, vocab_size=args.vocab_size or (4096 if tiny else 16384)
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
    if dist.main:
        print(f"corpus: {corpus.description}")
        print(
            f"model: {config.n_layer} layers x {config.n_embd}, vocabulary {config.vocab_size:,}, "
            f"{count_params(model):,} parameters" + ("" if report is None else f"\n{report}")
        )
        print(
            f"optimisation: {cfg.steps} steps x {cfg.batch_size} x {cfg.block_size}, lr {cfg.lr:g}, warmup "
            f"{cfg.warmup}" + (f", TT cores at lr x{cfg.tt_lr_scale:g}" if args.rank else "")
        )
    model_settings = json.loads(model.config.to_json_string(use_diff=False))
    model_settings.pop("transformers_version", None)  # a library upgrade does not change the model
    signature = {
        "model": model_settings,
        "corpus": corpus.fingerprint(),
        "tokenizer": _data.tokenizer_id(tokenizer),
    }

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
            save_model(model, out / "model", tokenizer=tokenizer, overwrite=True)
        last = f", validation perplexity {history.val_ppl:.2f}" if history.val else ""
        print(
            f"{'finished' if finished else 'stopped'} at step {len(history.loss)}/{cfg.steps}: train loss "
            f"{history.loss[-1]:.4f}{last}, {history.tokens_per_s:,.0f} tokens/s, peak memory "
            f"{history.peak_memory_mib:,.0f} MiB"
        )
        print(
            f"checkpoint: {out / CHECKPOINT}"
            + (f"; model: {out / 'model'}" if finished else "; continue with --resume")
        )
    return 0


# -------------------------------------------------------------------------------------------- compress/eval
def _eval_tokens(args, model_dir: Path):
    tokenizer = _data.load_tokenizer(args.tokenizer or model_dir)
    if args.text:
        corpus = _data.load_corpus(args.text)
        texts = corpus.train + corpus.val  # evaluate all of it
    else:
        texts = _data.stdlib_corpus(max_chars=args.max_chars).val
    return tokenizer, _data.encode(tokenizer, texts)


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
    tokenizer, ids = _eval_tokens(args, src)
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
    tokenizer, ids = _eval_tokens(args, src)
    _check_vocab(model, tokenizer, src)
    ppl = _perplexity(model, ids, args)
    print(f"{src}: {count_params(model):,} parameters, perplexity {ppl:.3f} on {ids.numel():,} tokens")
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
    p.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier compare in --out (only the files compare wrote)",
    )
    _add_data_args(p, max_chars=1_500_000)
    _add_model_args(p, preset=None, n_layer=4, n_embd=256, n_head=4)
    _add_ttm_args(p, rank=32, shapes="balanced", ncores=4, help_rank="TT rank of the TTM model (default 32)")
    p.add_argument("--no-lowrank", action="store_true", help="skip the low-rank baseline")
    p.add_argument(
        "--threads",
        type=_POS,
        default=None,
        help="torch CPU threads per training process (default: torch's default, the number of cores)",
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
        p, rank=0, shapes="paper", help_rank="TT rank for TTM layers; 0 trains the dense model (default 0)"
    )
    p.add_argument(
        "--lowrank",
        type=_NONNEG,
        default=0,
        metavar="R",
        help="train the low-rank baseline with inner size R instead (default 0: off)",
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
        type=_NONNEG,
        default=0,
        help="checkpoint every N steps (always at the end)",
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
        help="stop (with a checkpoint) after STEP steps; continue later with --resume",
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
        p.add_argument("model", help="model folder (save_pretrained / tensornet.gpt2.save_model)")
        p.add_argument("--text", metavar="PATH", help="UTF-8 text file or folder to evaluate on")
        p.add_argument(
            "--max-chars", type=_POS, default=None, help="limit the embedded corpus to N characters"
        )
        p.add_argument("--tokenizer", metavar="PATH", help="tokenizer (default: the one in the model folder)")
        p.add_argument(
            "--block-size", type=_POS, default=None, help="evaluation window (default n_positions)"
        )
        p.add_argument("--batch-size", type=_POS, default=8, help="windows per forward pass (default 8)")
        p.add_argument("--eval-tokens", type=_NONNEG, default=0, help="evaluate at most N tokens (0: all)")
        p.add_argument(
            "--device", type=_device, default=None, help="cpu, cuda, ... (default: cuda if available)"
        )
        if name == "compress":
            p.add_argument("--out", required=True, help="folder for the compressed model (new, or empty)")
            p.add_argument(
                "--overwrite",
                action="store_true",
                help="replace --out if it is a model folder written by tensornet (holding only its files)",
            )
            g = p.add_mutually_exclusive_group()
            g.add_argument("--rank", type=_POS, help="TT rank of every converted layer")
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
            p.add_argument("--ncores", type=_POS, default=3, help="cores for --shapes balanced")
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
