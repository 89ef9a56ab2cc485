"""The command line's flags: the optimisation flags generated from :class:`TrainConfig`, the others here.

Each flag's range is checked while parsing (``Range.parser``). No torch or transformers at import (``--help``
reads only this module and ``_config``); ``--device`` imports torch when it is given.
"""

from __future__ import annotations

import argparse
import json
from argparse import ArgumentTypeError as Bad
from dataclasses import fields

from .. import LAYER_GROUPS, PRESETS
from ._config import COMPILE_MODES, MAX_SIZE, MAX_TOKENS, Range, TrainConfig

EPILOG = """The embedded corpus (used when --data is not given) is the Python standard library's source code:
deterministic file order, a fixed ~5% validation split by file name, no network. The tokenizer is a
byte-level BPE trained on the training text with Hugging Face tokenizers and cached under --cache-dir.
Output folders: a new or empty folder, or one this command wrote (marked by tensornet-run.json); --overwrite
replaces only the files it wrote there."""

MODEL_FOLDER = (
    "a model folder (save_model, or a local Hugging Face GPT-2 save_pretrained): config.json, model.safetensors "
    "(pickle weights such as pytorch_model.bin are refused) and, unless --tokenizer is given, its tokenizer: "
    "tokenizer.json, or GPT-2's vocab.json + merges.txt"
)

# learning-rate multipliers of the TT cores and of the low-rank baseline's factors in `compare`: each the best
# measured for its model in benchmarks/results/gpt2_compare_cpu.md (per-model settings, not universal ones)
TT_LR_SCALE = 5.0
LOWRANK_LR_SCALE = 9.0
# compare's evaluations without --eval-every: this many log-spaced steps, the last the end (loss_curves.png)
EVAL_POINTS = 6


def log_spaced(steps: int, points: int = EVAL_POINTS) -> tuple[int, ...]:
    """About ``points`` steps spaced evenly on a log scale from the first to the last."""
    return tuple(sorted({max(1, round(steps ** (k / points))) for k in range(1, points + 1)}))


# compare's defaults: short runs sized for 2 CPU cores (benchmarks/results/gpt2_compare_cpu.md)
COMPARE_RECIPE = TrainConfig(
    steps=300,
    batch_size=16,
    block_size=128,
    lr=2e-3,
    warmup=30,
    weight_decay=0.01,
    beta2=0.99,
    eval_tokens=0,
    tt_lr_scale=TT_LR_SCALE,
    lowrank_lr_scale=LOWRANK_LR_SCALE,
)

# upper bounds of the other size flags: far above what fits a machine today (the memory check refuses sooner),
# low enough that no flag overflows an integer or builds a model for hours before failing
MAX_LAYERS, MAX_WIDTH, MAX_HEADS, MAX_RANK, MAX_NCORES, MAX_THREADS = 1024, 65536, 4096, 65536, 64, 1024
SHAPE_KEYS = (*(key for keys in LAYER_GROUPS.values() for key in keys), "wte")  # `--shapes` keys


def _int(lo: int, hi: int):
    return Range(lo, hi, integer=True).parser()


def _shapes(value: str):
    """``--shapes``: 'auto', 'paper', 'balanced' or a JSON object of (out_k, in_k) pairs per layer name."""
    if value in ("auto", "paper", "balanced"):
        return value
    try:
        shapes = json.loads(value)
    except json.JSONDecodeError:
        raise Bad(
            f"must be 'auto', 'paper', 'balanced' or a JSON object, got {value!r} (not valid JSON)"
        ) from None
    if not isinstance(shapes, dict) or not shapes:
        raise Bad(f"JSON must be a non-empty object of layer names to [out_k, in_k] pairs, got {value!r}")
    for key, pairs in shapes.items():
        if key not in SHAPE_KEYS:
            raise Bad(f"unknown layer {key!r}; the keys are among {list(SHAPE_KEYS)}")
        if not isinstance(pairs, list) or not pairs or not all(_is_pair(p) for p in pairs):
            raise Bad(
                f"{key!r} must be a non-empty list of [out_k, in_k] pairs of positive integers, got {pairs!r}"
            )
    return shapes


def _is_pair(pair: object) -> bool:
    return isinstance(pair, list) and len(pair) == 2 and all(type(n) is int and n >= 1 for n in pair)


def _layers(value: str) -> tuple[str, ...]:
    layers = tuple(s.strip() for s in value.split(",") if s.strip())
    if not layers or any(s not in LAYER_GROUPS for s in layers):
        raise Bad(f"must be a comma-separated subset of {sorted(LAYER_GROUPS)}, got {value!r}")
    return layers


def _device(value: str) -> str:
    """``--device``: a torch device string this machine has."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise Bad(f"not a device: {value!r}; use cpu, cuda or cuda:N") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and count == 0:
        raise Bad(f"{value!r} asks for CUDA, but torch sees no CUDA device here")
    if device.type == "cuda" and device.index is not None and device.index >= count:
        raise Bad(f"{value!r}: this machine has {count} CUDA device(s), 0 to {count - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise Bad(f"{value!r}: the MPS backend is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise Bad(f"unsupported device {value!r}; use cpu, cuda or cuda:N")
    return value


def path(text: str) -> str:
    """A path flag: not empty (``""`` would silently mean the current folder)."""
    if not text:
        raise Bad("the path is empty; give a file or folder")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line ``error: ...`` (exit status 2) instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help states it or there is none to state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unstated = any(action.default is v for v in (None, False, argparse.SUPPRESS))  # 0 is stated
        return (
            text
            if not action.option_strings or "default" in text or unstated
            else f"{text} (default %(default)s)"
        )


def _add_out(p: argparse.ArgumentParser, default: str | None, what: str, overwrite: str) -> None:
    p.add_argument("--out", type=path, default=default, required=default is None, help=what)
    p.add_argument("--overwrite", action="store_true", help=overwrite)


def _add_data_args(p: argparse.ArgumentParser, *, max_chars: int | None) -> None:
    g = p.add_argument_group("data")
    data = "UTF-8 text file or folder of them (default: the embedded Python standard library corpus)"
    g.add_argument("--data", type=path, metavar="PATH", help=data)
    limit = "use only the first N characters of training text (and N/10 of validation text), N <= 2**40"
    limit += "" if max_chars else "; default: all"
    g.add_argument("--max-chars", type=_int(1, MAX_TOKENS), default=max_chars, metavar="N", help=limit)
    g.add_argument(
        "--tokenizer",
        type=path,
        metavar="PATH",
        help="saved tokenizer (tokenizer.json, or a GPT-2 folder with vocab.json + merges.txt); default: train "
        "a byte-level BPE on the training text and cache it",
    )
    vocab = (
        "BPE vocabulary size when training the tokenizer (default 4096 for compare and train --preset tiny"
    )
    g.add_argument("--vocab-size", type=_int(257, 2**31 - 1), metavar="V", help=f"{vocab}, 16384 otherwise)")
    cache = "tokenizer/token cache (default $TENSORNET_CACHE or ~/.cache/tensornet)"
    g.add_argument("--cache-dir", type=path, metavar="DIR", help=cache)


def _add_model_args(p: argparse.ArgumentParser, *, preset: str | None, dims=(None, None, None)) -> None:
    g = p.add_argument_group("model")
    if preset is not None:
        sizes = ", ".join(f"{k} = {v[0]} layers x {v[1]} wide, {v[2]} heads" for k, v in PRESETS.items())
        g.add_argument("--preset", choices=sorted(PRESETS), default=preset, help=f"size: {sizes}")
    where = " (overrides the preset)" if preset is not None else ""
    flags = ("--n-layer", "--n-embd", "--n-head")
    whats = ("number of blocks", "model width", "attention heads")
    for flag, what, hi, default in zip(flags, whats, (MAX_LAYERS, MAX_WIDTH, MAX_HEADS), dims):
        g.add_argument(flag, type=_int(1, hi), default=default, help=f"{what}, 1 to {hi}{where}")
    drop = "dropout on embeddings, attention and residuals, in [0, 1)"
    g.add_argument("--dropout", type=Range(0, 1, hi_open=True).parser(), default=0.0, help=drop)


def _add_shape_args(g, *, shapes: str, ncores: int) -> None:
    g.add_argument(
        "--shapes",
        type=_shapes,
        default=shapes,
        help="core shapes: 'paper' (the paper's shapes for GPT-2 small/medium MLPs), 'balanced' (--ncores "
        "near-equal factors), 'auto' (the paper's where the model is GPT-2 small or medium, balanced "
        "otherwise; the command says which it used), or a JSON object such as "
        '\'{"mlp.c_fc": [[8,8],[8,8],[16,4]], "mlp.c_proj": '
        "[[8,8],[8,8],[4,16]]}' of (out_k, in_k) pairs, as nn.Linear.weight is (out, in)",
    )
    ncores_help = f"TT cores for --shapes balanced, 1 to {MAX_NCORES}"
    g.add_argument("--ncores", type=_int(1, MAX_NCORES), default=ncores, help=ncores_help)
    groups = f"comma-separated layer groups to tensorize, from {sorted(LAYER_GROUPS)} (mlp: as in the paper)"
    g.add_argument("--layers", type=_layers, default="mlp", help=groups)
    bias = "drop the biases of tensorized layers (the paper's r=16/32/64 runs)"
    g.add_argument("--no-bias", action="store_true", help=bias)
    embeddings = "also make the token embedding a TT embedding (the LM head stays tied to it)"
    g.add_argument("--embeddings", action="store_true", help=embeddings)
    rank = f"TT rank of the embedding, 1 to {MAX_RANK} (default: --rank)"
    g.add_argument("--embedding-rank", type=_int(1, MAX_RANK), help=rank)


def _add_train_args(
    p, d: TrainConfig, *, recipe: str, helps: dict[str, str], eval_zero: str = "only at the end"
):
    """The optimisation flags, from TrainConfig's fields, with ``d``'s defaults and the notes in ``helps``.

    ``eval_zero``: what ``--eval-every 0`` does.
    """
    g = p.add_argument_group(f"optimisation ({recipe})")
    for f in fields(TrainConfig):
        if f.metadata.get("help"):  # the settings with a flag: type, range and help from TrainConfig
            text = f.metadata["help"].format(eval_zero=eval_zero) + helps.get(f.name, "")
            kw = dict(type=f.metadata["range"].parser(), default=getattr(d, f.name), help=text)
            g.add_argument("--" + f.name.replace("_", "-"), **kw, **f.metadata["flag"])
    g.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=COMPILE_MODES,
        metavar="MODE",
        help="torch.compile the training step; MODE (default when the flag is given bare): 'default' (inductor "
        "kernels; on CPU it needs a C++ compiler), 'reduce-overhead' (also CUDA graphs, which cut the launch "
        "cost of small kernels on GPU), 'max-autotune' (also searches kernel configurations: slow to start). "
        "Off unless given",
    )
    g.add_argument("--device", type=_device, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    threads = (
        f"torch CPU threads per training process, 1 to {MAX_THREADS} (default: torch's default, the number"
    )
    p.add_argument("--threads", type=_int(1, MAX_THREADS), help=f"{threads} of cores)")


def _command(sub, name: str, text: str, description: str, *, epilog: str | None = EPILOG):
    """The subparser of command ``name``: one-line ``text`` in the overview, ``description`` in its --help."""
    p = sub.add_parser(
        name,
        allow_abbrev=False,
        help=text,
        description=description,
        epilog=epilog,
        formatter_class=_Formatter,
    )
    p.set_defaults(command=name, _parser=p)
    return p


def _compare_parser(sub) -> None:
    p = _command(
        sub,
        "compare",
        "train dense, TTM and low-rank GPT-2 side by side (CPU: < 10 min)",
        "Train a dense GPT-2, the same model with TTM MLPs and a low-rank (SVD-style) baseline of "
        "similar size, each with the same seed, token budget and data order; print a paper-style table and "
        "write results.json and loss_curves.png to --out.",
    )
    overwrite = "replace the results of an earlier compare in --out (only the files compare wrote)"
    _add_out(p, "runs/compare", "output folder", overwrite)
    _add_data_args(p, max_chars=1_500_000)
    _add_model_args(p, preset=None, dims=(4, 256, 4))
    g = p.add_argument_group("tensorization")
    g.add_argument(
        "--rank", type=_int(1, MAX_RANK), default=32, help=f"TT rank of the TTM model, 1 to {MAX_RANK}"
    )
    _add_shape_args(g, shapes="balanced", ncores=4)
    g.add_argument("--no-lowrank", action="store_true", help="skip the low-rank baseline")
    _add_train_args(
        p,
        COMPARE_RECIPE,
        recipe="short-run defaults sized for 2 CPU cores",
        helps={
            "tt_lr_scale": "; compare's default is the best measured for its model",
            "lowrank_lr_scale": "; compare's default is the best measured for its low-rank baseline",
        },
        eval_zero=f"after {EVAL_POINTS} log-spaced steps, the last of them the end: the validation curves of "
        "loss_curves.png",
    )


def _train_parser(sub) -> None:
    p = _command(
        sub,
        "train",
        "pre-train one GPT-2 (dense, TTM or low-rank), with checkpoints and DDP",
        "Pre-train GPT-2 from scratch. Under torchrun it uses DDP (nccl on GPU, gloo on CPU). bf16 "
        "autocast on GPU. Writes checkpoint.pt, log.jsonl (one line per step and evaluation; after "
        "--resume the same as an uninterrupted run's) and, when done, a model/ folder loadable with "
        "tensornet.gpt2.load_model.",
    )
    out = "output folder for the checkpoint, log and model: new, empty, or this command's own; locked while "
    overwrite = "start over in an --out that holds a previous run (replaces only the files train wrote there)"
    _add_out(p, "runs/train", out + "the run is alive", overwrite)
    _add_data_args(p, max_chars=None)
    _add_model_args(p, preset="tiny")
    g = p.add_argument_group("tensorization")
    rank = f"TT rank for TTM layers, up to {MAX_RANK}; 0 trains the dense model"
    g.add_argument("--rank", type=_int(0, MAX_RANK), default=0, help=rank)
    _add_shape_args(g, shapes="auto", ncores=3)
    lowrank = f"train the low-rank baseline with inner size R <= {MAX_RANK} instead (0: off)"
    g.add_argument("--lowrank", type=_int(0, MAX_RANK), default=0, metavar="R", help=lowrank)
    _add_train_args(
        p,
        TrainConfig(),
        recipe="the paper's recipe: AdamW, warmup, cosine, clip 1.0",
        helps={
            "lr": " (default 1e-3 for --preset tiny, the paper's 6.25e-5 otherwise)",
            "warmup": " (default 100 for --preset tiny, the paper's 4000 otherwise)",
            "beta2": "; the paper's medium run used 0.95",
            "tt_lr_scale": f"; 1 is the paper's recipe, compare uses {TT_LR_SCALE:g} for its model",
            "lowrank_lr_scale": f"; compare uses {LOWRANK_LR_SCALE:g} for its model",
        },
    )
    p.set_defaults(lr=None, warmup=None)  # the preset's (_precheck.check_train)
    g = p.add_argument_group("checkpoints")
    every = "checkpoint every N steps, N <= 10**9 (0: only at the end; there is always one at the end)"
    g.add_argument(
        "--checkpoint-every", type=TrainConfig.bounds("checkpoint_every").parser(), default=0, help=every
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue exactly from --out/checkpoint.pt: every setting the log depends on must be the "
        "run's (flags, device, processes, --threads), so that the log equals an uninterrupted run's",
    )
    stop = "stop (with a checkpoint) after STEP steps, STEP <= 10**9; continue later with --resume"
    g.add_argument("--stop-at", type=TrainConfig.bounds("steps").parser(), metavar="STEP", help=stop)


def _model_file_parser(sub, name: str, text: str) -> argparse.ArgumentParser:
    """``compress`` and ``eval``: a model folder and the text to measure its perplexity on."""
    what = f"{text}. MODEL is {MODEL_FOLDER}. Evaluation text: --text, else the embedded corpus's validation split."
    p = _command(sub, name, text, what, epilog=None)
    model = "model folder (save_pretrained or tensornet.gpt2.save_model)"
    p.add_argument("model", type=path, metavar="MODEL", help=model)
    p.add_argument("--text", type=path, metavar="PATH", help="UTF-8 text file or folder to evaluate on")
    chars = "limit the embedded corpus to N characters, N <= 2**40"
    p.add_argument("--max-chars", type=_int(1, MAX_TOKENS), help=chars)
    p.add_argument("--tokenizer", type=path, metavar="PATH", help="tokenizer (default: the model folder's)")
    block = f"evaluation window, 1 to {MAX_SIZE} (default: the model's n_positions)"
    p.add_argument("--block-size", type=_int(1, MAX_SIZE), help=block)
    batch = f"windows per forward pass, 1 to {MAX_SIZE}"
    p.add_argument("--batch-size", type=_int(1, MAX_SIZE), default=8, help=batch)
    tokens = "evaluate at most N tokens: 0 = all, else from the block size to 2**40"
    p.add_argument("--eval-tokens", type=_int(0, MAX_TOKENS), default=0, help=tokens)
    p.add_argument("--device", type=_device, help="cpu, cuda, ... (default: cuda if available)")
    return p


def _compress_parser(sub) -> None:
    p = _model_file_parser(sub, "compress", "convert a local GPT-2 folder to TTM with ttm_svd")
    _add_out(
        p,
        None,
        "folder for the compressed model (new, or empty; not the source folder)",
        "replace --out if it is a model folder written by tensornet's save_model (marked by "
        "tensornet-model.json, holding only its files)",
    )
    g = p.add_argument_group("tensorization (give --rank or --eps)").add_mutually_exclusive_group()
    g.add_argument(
        "--rank", type=_int(1, MAX_RANK), help=f"TT rank of every converted layer, 1 to {MAX_RANK}"
    )
    eps = "relative-error target per layer, in (0, 1) (ranks chosen by ttm_svd)"
    g.add_argument("--eps", type=Range(0, 1, lo_open=True, hi_open=True).parser(), help=eps)
    _add_shape_args(p.add_argument_group("core shapes"), shapes="auto", ncores=3)


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="python -m tensornet.gpt2",
        allow_abbrev=False,  # "--step 5" is not "--steps 5": a typo is an error, never another flag
        description="Pre-train, compress and evaluate GPT-2 with tensor-train-matrix (TTM) layers.",
        epilog=EPILOG,
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="{compare,train,compress,eval}")
    _compare_parser(sub)
    _train_parser(sub)
    _compress_parser(sub)
    _model_file_parser(sub, "eval", "perplexity of a saved (dense or TTM) model")
    return root
