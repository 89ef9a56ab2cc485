"""The command line's flags, one table (the optimisation flags from TrainConfig); imports no torch (--help)."""

import argparse
import json
from argparse import ArgumentTypeError as Bad
from dataclasses import asdict, fields
from typing import Any

from .. import LAYER_GROUPS, PRESETS
from ._config import COMPILE_MODES, MAX_SIZE, MAX_TOKENS, Range, TrainConfig, ints

EPILOG = """Without --data: the Python standard library's source (fixed file order, ~5% held out by file name,
no network), tokenized by a byte-level BPE trained on it and cached under --cache-dir. --out: a new or empty
folder, or one this command wrote (tensornet-run.json); --overwrite replaces only the files it wrote there."""
MODEL_FOLDER = (
    "MODEL: a save_model or Hugging Face save_pretrained folder: config.json, model.safetensors (pickle weights "
    "such as pytorch_model.bin are refused) and, unless --tokenizer, tokenizer.json or vocab.json + merges.txt"
)
# compare's lr multipliers of the TT cores and low-rank factors: per model (benchmarks/results/gpt2_compare_cpu.md)
TT_LR_SCALE, LOWRANK_LR_SCALE = 5.0, 9.0
EVAL_POINTS = 6  # compare's evaluations without --eval-every: log-spaced, the last the end (loss_curves.png)


def log_spaced(steps: int, points: int = EVAL_POINTS) -> tuple[int, ...]:
    """About ``points`` steps spaced evenly on a log scale from the first to the last."""
    return tuple(sorted({max(1, round(steps ** (k / points))) for k in range(1, points + 1)}))


# compare's defaults: short runs sized for 2 CPU cores (benchmarks/results/gpt2_compare_cpu.md)
_RECIPE: Any = dict(steps=300, block_size=128, warmup=30, weight_decay=0.01, beta2=0.99, eval_tokens=0)
COMPARE_RECIPE = TrainConfig(**_RECIPE, lr=2e-3, tt_lr_scale=TT_LR_SCALE, lowrank_lr_scale=LOWRANK_LR_SCALE)


def _shapes(value: str):  # (a JSON object's pairs: checked by _precheck)
    try:
        shapes = value if value in ("auto", "paper", "balanced") else json.loads(value)
    except ValueError:
        shapes = None
    if not isinstance(shapes, dict) and shapes not in ("auto", "paper", "balanced"):
        raise Bad(f"must be 'auto', 'paper', 'balanced' or a JSON object of pairs per layer, got {value!r}")
    return shapes


def _layers(value: str) -> tuple[str, ...]:
    layers = tuple(s.strip() for s in value.split(",") if s.strip())
    if not layers or any(s not in LAYER_GROUPS for s in layers):
        raise Bad(f"must be a comma-separated subset of {sorted(LAYER_GROUPS)}, got {value!r}")
    return layers


def _device(value: str) -> str:
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        device = torch.device("meta")  # (no device of this machine)
    cuda = torch.cuda.device_count()  # (0 without CUDA)
    have = {"cpu": 1, "cuda": cuda - (device.index or 0), "mps": torch.backends.mps.is_available()}
    if have.get(device.type, 0) <= 0:
        raise Bad(f"{value!r} is not a device here ({cuda} CUDA device(s)): use cpu, cuda or cuda:N")
    return value


def path(text: str) -> str:
    if not text:  # ("" would silently mean the current folder)
        raise Bad("the path is empty; give a file or folder")
    return text


C, T, S, E = "compare", "train", "compress", "eval"
CT, SE, CTS, ALL = (C, T), (S, E), (C, T, S), (C, T, S, E)
SHAPES = (
    "core shapes: 'paper' (the paper's, for GPT-2 small/medium MLPs), 'balanced' (--ncores near-equal factors), "
    "'auto' (paper where it has them, else balanced) or JSON (out_k, in_k) pairs per layer: '{\"mlp.c_fc\": "
    '[[8,8],[8,8],[16,4]], "mlp.c_proj": [[8,8],[8,8],[4,16]]}\''
)
COMPILE = (
    "torch.compile the training step (off unless given): 'default' (bare; on CPU it needs a C++ compiler), "
    "'reduce-overhead' (also CUDA graphs) or 'max-autotune' (also tunes kernels: slow to start)"
)
PRESET = "sizes: " + ", ".join(f"{k} = {v[0]} layers x {v[1]} wide, {v[2]} heads" for k, v in PRESETS.items())
SWITCH = {"action": "store_true"}
_RANGE = {f.name: f.metadata.get("range") for f in fields(TrainConfig)}  # (each written once, in TrainConfig)
# a group's title, then its flags: (commands, flag, type or add_argument's keywords, help); the upper bounds are
# far above what fits a machine today (the memory check refuses sooner), low enough to fail at once
_FLAGS: list[Any] = [
    "output",
    (CT, "--out", path, "output folder: new, empty, or this command's own (locked while a run is alive)"),
    (S, "--out", {"type": path, "required": True}, "folder for the compressed model: new, or empty"),
    (CTS, "--overwrite", SWITCH, "replace --out's files if this command (or save_model) wrote them"),
    "data",
    (CT, "--data", path, "UTF-8 text file or folder of them (default: the embedded corpus)"),
    (SE, "--text", path, "UTF-8 text file or folder to evaluate on (default: the embedded corpus)"),
    (ALL, "--max-chars", ints(1, MAX_TOKENS), "characters of training text to read (validation: a tenth)"),
    (ALL, "--tokenizer", path, "tokenizer.json or vocab.json + merges.txt (default: model's, or a new BPE)"),
    (CT, "--vocab-size", ints(257, 2**31 - 1), "BPE vocabulary (default 16384; compare, tiny: 4096)"),
    (CT, "--cache-dir", path, "tokenizer/token cache (default: $TENSORNET_CACHE or ~/.cache/tensornet)"),
    "model",
    (T, "--preset", {"choices": sorted(PRESETS)}, PRESET),
    (SE, "model", {"type": path, "metavar": "MODEL"}, "model folder (save_model or save_pretrained)"),
    (ALL, "--device", _device, "cpu, cuda, cuda:1, ... (default: cuda if available)"),
    (CT, "--n-layer", ints(1, 1024), "number of blocks (train: overrides --preset)"),
    (CT, "--n-embd", ints(1, 65536), "model width (train: overrides --preset)"),
    (CT, "--n-head", ints(1, 4096), "attention heads (train: overrides --preset)"),
    (CT, "--dropout", {"type": Range(0, 1, hi_open=True), "default": 0.0}, "dropout everywhere"),
    "tensorization",
    (C, "--rank", ints(1, 65536), "TT rank of the TTM model"),
    (T, "--rank", ints(0, 65536), "TT rank of a TTM model (0: the dense model)"),
    (T, "--lowrank", ints(0, 65536), "train the low-rank baseline of this inner size instead (0: off)"),
    (C, "--no-lowrank", SWITCH, "skip the low-rank baseline"),
    (S, "--rank", ints(1, 65536), "TT rank of every converted layer (or --eps)"),
    (S, "--eps", Range(0, 1, True, True), "relative-error target per layer (or --rank)"),
    (CTS, "--shapes", {"type": _shapes, "default": "auto"}, SHAPES),
    (CTS, "--ncores", {"type": ints(1, 64), "default": 3}, "TT cores for --shapes balanced"),
    (CTS, "--layers", {"type": _layers, "default": "mlp"}, "comma-separated: mlp (the paper's), attn"),
    (CTS, "--no-bias", SWITCH, "drop the biases of tensorized layers (the paper's r=16-64)"),
    (CTS, "--embeddings", SWITCH, "also make the token embedding (tied LM head) a TT one"),
    (CTS, "--embedding-rank", ints(1, 65536), "TT rank of the embedding (default: --rank)"),
    "optimisation",
    *(  # the settings with a flag: their range and help from TrainConfig
        (CT, "--" + f.name.replace("_", "-"), f.metadata["range"], f.metadata["help"])
        for f in fields(TrainConfig)
        if f.metadata.get("help")
    ),
    (CT, "--compile", dict(nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE"), COMPILE),
    (CT, "--no-progress", SWITCH, "no progress bar"),
    (CT, "--threads", ints(1, 1024), "torch CPU threads per process (default: one per core)"),
    "evaluation",
    (SE, "--block-size", ints(1, MAX_SIZE), "evaluation window (default: the model's n_positions)"),
    (SE, "--batch-size", {"type": ints(1, MAX_SIZE), "default": 8}, "windows per forward pass"),
    (SE, "--eval-tokens", {"type": ints(0, MAX_TOKENS), "default": 0}, "tokens to evaluate at most (0: all)"),
    "checkpoints",
    (T, "--checkpoint-every", _RANGE["checkpoint_every"], "steps per checkpoint (0: at the end)"),
    (T, "--resume", SWITCH, "continue exactly from --out/checkpoint.pt, with the run's settings"),
    (T, "--stop-at", _RANGE["steps"], "stop (with a checkpoint) after this many steps"),
]
_DEFAULTS = {  # what differs between the commands; train's lr and warmup: the preset's (_precheck)
    C: asdict(COMPARE_RECIPE) | dict(out="runs/compare", max_chars=1_500_000, rank=32, ncores=4),
    T: asdict(TrainConfig()) | dict(out="runs/train", preset="tiny", rank=0, lowrank=0, lr=None, warmup=None),
}
_DEFAULTS[C] |= dict(n_layer=4, n_embd=256, n_head=4, shapes="balanced")
_NOTES = {
    (T, "--lr"): " (default 1e-3 for --preset tiny, the paper's 6.25e-5 otherwise)",
    (T, "--warmup"): " (default 100 for --preset tiny, the paper's 4000 otherwise)",
    (T, "--eval-every"): " (0: only at the end)",
    (C, "--eval-every"): f" (0: after {EVAL_POINTS} log-spaced steps, the last the end, for the plot)",
}
_ABOUT = {
    C: "train dense, TTM and low-rank GPT-2 side by side (CPU: < 10 min). Same seed, tokens and data order; "
    "prints a paper-style table and writes results.json and loss_curves.png to --out",
    T: "pre-train one GPT-2 (dense, TTM or low-rank), with checkpoints and DDP. DDP under torchrun, bf16 on GPU; "
    "writes checkpoint.pt, log.jsonl (resumed: an uninterrupted run's) and, when done, model/ (load_model)",
    S: f"convert a local GPT-2 folder to TTM with ttm_svd. {MODEL_FOLDER}",
    E: f"perplexity of a saved (dense or TTM) model. {MODEL_FOLDER}",
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line ``error: ...`` (exit status 2) instead of the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.HelpFormatter):
    """Every option's help ends with its range and default (0 is stated; None and False are not)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        rule = action.type.rule() if isinstance(action.type, Range) else ""
        stated = not any(action.default is v for v in (None, False, argparse.SUPPRESS))
        said = "; ".join(filter(None, [rule, "default %(default)s" if stated else ""]))
        return f"{action.help} ({said})" if said else action.help or ""


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="python -m tensornet.gpt2",
        allow_abbrev=False,  # "--step 5" is not "--steps 5": a typo is an error, never another flag
        description="Pre-train, compress and evaluate GPT-2 with tensor-train-matrix (TTM) layers.",
        epilog=EPILOG,
    )
    sub = root.add_subparsers(dest="command", required=True, metavar="{compare,train,compress,eval}")
    for name, about in _ABOUT.items():
        p = sub.add_parser(name, allow_abbrev=False, help=about.split(". ")[0], description=about)
        p.formatter_class, p.epilog = _Formatter, EPILOG if name in CT else None
        for row in _FLAGS:
            if isinstance(row, str):
                group = p.add_argument_group(row)  # (a group without flags is not shown)
            elif name in row[0]:
                opts = row[2] if isinstance(row[2], dict) else {"type": row[2]}
                group.add_argument(row[1], help=row[3] + _NOTES.get((name, row[1]), ""), **opts)
        p.set_defaults(command=name, _parser=p, **_DEFAULTS.get(name, {}))
    return root
