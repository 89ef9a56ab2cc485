"""``python -m tensornet.gpt2 {compare,train,compress,eval}``: the command line (the only place that prints)."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from . import _data
from ._model import PRESETS, build_model, gpt2_config, load_model, save_model
from ._tensorize import LAYER_GROUPS, count_params, lowrank, tensorize
from ._train import CHECKPOINT, Distributed, TrainConfig, default_device, evaluate, train

_EPILOG = """The embedded corpus (used when --data is not given) is the Python standard library's source code:
deterministic file order, a fixed ~5% validation split by file name, no network. The tokenizer is a
byte-level BPE trained on the training text with Hugging Face tokenizers and cached under --cache-dir."""


# learning-rate multiplier of the TT cores in `compare` (measured for its model; not a universal setting)
TT_LR_SCALE = 5.0


def _add_data_args(p: argparse.ArgumentParser, *, max_chars: int | None) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        metavar="PATH",
        help="UTF-8 text file or folder of them (default: the embedded Python standard library corpus)",
    )
    g.add_argument(
        "--max-chars",
        type=int,
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
        type=int,
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
    g.add_argument("--n-layer", type=int, default=n_layer, help=f"number of blocks {where}")
    g.add_argument("--n-embd", type=int, default=n_embd, help=f"model width {where}")
    g.add_argument("--n-head", type=int, default=n_head, help=f"attention heads {where}")
    g.add_argument(
        "--dropout", type=float, default=0.0, help="dropout on embeddings, attention and residuals"
    )


def _add_ttm_args(
    p: argparse.ArgumentParser, *, rank: int | None, shapes: str, help_rank: str, ncores: int = 3
) -> None:
    g = p.add_argument_group("tensorization")
    g.add_argument("--rank", type=int, default=rank, help=help_rank)
    g.add_argument(
        "--shapes",
        default=shapes,
        help="core shapes: 'paper' (the paper's shapes for GPT-2 small/"
        "medium MLPs), 'balanced' (--ncores near-equal factors), or a JSON object such as "
        '\'{"mlp.c_fc": [[8,8],[8,8],[4,16]], "mlp.c_proj": [[8,8],[8,8],[16,4]]}\' of (in_k, out_k) '
        f"pairs (default {shapes})",
    )
    g.add_argument(
        "--ncores",
        type=int,
        default=ncores,
        help=f"number of TT cores for --shapes balanced (default {ncores})",
    )
    g.add_argument(
        "--layers",
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
        "--embedding-rank", type=int, default=None, help="TT rank of the embedding (default: --rank)"
    )


def _add_train_args(
    p: argparse.ArgumentParser, d: TrainConfig, *, recipe_note: str, helps: dict[str, str] | None = None
) -> None:
    """The optimisation flags with ``d``'s defaults; ``helps`` replaces a flag's default note (by dest)."""
    helps = helps or {}
    g = p.add_argument_group("optimisation (" + recipe_note + ")")
    g.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    g.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"sequences per step over all processes (default {d.batch_size})",
    )
    g.add_argument(
        "--block-size", type=int, default=d.block_size, help=f"sequence length (default {d.block_size})"
    )
    g.add_argument(
        "--lr",
        type=float,
        default=d.lr,
        help="peak AdamW learning rate " + helps.get("lr", f"(default {d.lr:g})"),
    )
    g.add_argument(
        "--min-lr-ratio",
        type=float,
        default=d.min_lr_ratio,
        help=f"cosine decays to lr x this (default {d.min_lr_ratio:g})",
    )
    g.add_argument(
        "--warmup",
        type=int,
        default=d.warmup,
        help="linear warmup steps " + helps.get("warmup", f"(default {d.warmup})"),
    )
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help=f"AdamW weight decay on matrices and TT cores (default {d.weight_decay:g})",
    )
    g.add_argument("--beta1", type=float, default=d.beta1, help=f"AdamW beta1 (default {d.beta1:g})")
    g.add_argument(
        "--beta2",
        type=float,
        default=d.beta2,
        help=f"AdamW beta2 (default {d.beta2:g}; the paper's medium run used 0.95)",
    )
    g.add_argument(
        "--clip", type=float, default=d.clip, help=f"gradient-norm clip, 0 = off (default {d.clip:g})"
    )
    g.add_argument(
        "--tt-lr-scale",
        type=float,
        default=d.tt_lr_scale,
        metavar="X",
        help="learning-rate multiplier for the TT cores, which move W less per Adam step than a dense "
        "matrix does; a per-model hyperparameter (benchmarks/results/gpt2_compare_cpu.md) "
        + helps.get("tt_lr_scale", f"(default {d.tt_lr_scale:g})"),
    )
    g.add_argument(
        "--seed", type=int, default=d.seed, help="seed for initialisation and data order (default 0)"
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help="evaluate every N steps (0: only at the end; default %(default)s)",
    )
    g.add_argument(
        "--eval-tokens",
        type=int,
        default=d.eval_tokens,
        help="validation tokens per evaluation, 0 = all (default %(default)s)",
    )
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")


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


def _shapes(value: str):
    if value in ("paper", "balanced"):
        return value
    import json

    try:
        shapes = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"--shapes must be 'paper', 'balanced' or a JSON object, got {value!r}") from None
    if not isinstance(shapes, dict):
        raise ValueError(f"--shapes JSON must be an object mapping layer names to pairs, got {value!r}")
    return shapes


def _layers(value: str) -> tuple[str, ...]:
    layers = tuple(s.strip() for s in value.split(",") if s.strip())
    bad = [s for s in layers if s not in LAYER_GROUPS]
    if bad or not layers:
        raise ValueError(
            f"--layers must be a comma-separated subset of {sorted(LAYER_GROUPS)}, got {value!r}"
        )
    return layers


def _tokens(args, corpus, *, vocab_size: int):
    if args.tokenizer:
        tokenizer = _data.load_tokenizer(args.tokenizer)
    else:
        tokenizer = _data.cached_tokenizer(corpus, vocab_size, args.cache_dir)
    train_ids, val_ids = _data.cached_tokens(corpus, tokenizer, args.cache_dir)
    return tokenizer, train_ids, val_ids


# --------------------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    from ._compare import compare, table

    out = Path(args.out)
    corpus = _data.load_corpus(args.data, max_chars=args.max_chars)
    print(f"corpus: {corpus.description}")
    tokenizer, train_ids, val_ids = _tokens(args, corpus, vocab_size=args.vocab_size or 4096)
    print(
        f"tokens: {train_ids.numel():,} train / {val_ids.numel():,} validation, vocabulary "
        f"{tokenizer.get_vocab_size():,}"
    )
    out.mkdir(parents=True, exist_ok=True)
    token_file = out / "tokens.pt"
    torch.save({"train": train_ids.int(), "val": val_ids.int()}, token_file)
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
        "shapes": _shapes(args.shapes),
        "ncores": args.ncores,
        "embeddings": args.embeddings,
        "embedding_rank": args.embedding_rank,
        "layers": _layers(args.layers),
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
    summary = compare(spec, out=out, variants=variants)
    token_file.unlink()
    print(f"\n{summary['machine']}; {tokens:,} training tokens per model\n")
    print(table(summary))
    print(f"\nwrote {out / 'results.json'} and {out / 'loss_curves.png'}")
    return 0


# ----------------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    dist = Distributed()
    tiny = args.preset == "tiny"
    defaults = {"lr": 1e-3, "warmup": 100} if tiny else {"lr": 6.25e-5, "warmup": 4000}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
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
            shapes=_shapes(args.shapes),
            layers=_layers(args.layers),
            bias=not args.no_bias,
            ncores=args.ncores,
            embeddings=args.embeddings,
            embedding_rank=args.embedding_rank,
        )
    elif args.lowrank:
        model, report = lowrank(model, rank=args.lowrank, layers=_layers(args.layers), bias=not args.no_bias)
    cfg = _train_config(args, checkpoint_every=args.checkpoint_every, compile=args.compile)
    out = Path(args.out)
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
    signature = {
        "model": model.config.to_json_string(use_diff=False),
        "corpus": corpus.fingerprint(),
        "tokenizer": _data.tokenizer_id(tokenizer),
    }
    log = out / "log.jsonl"

    def on_eval(step: int, loss: float) -> None:
        import json

        with log.open("a") as f:
            f.write(json.dumps({"step": step, "val_loss": loss, "val_ppl": math.exp(loss)}) + "\n")
        if not args.no_progress:
            print(
                f"step {step}: validation loss {loss:.4f}, perplexity {math.exp(loss):.2f}", file=sys.stderr
            )

    out.mkdir(parents=True, exist_ok=True)
    history = train(
        model,
        train_ids,
        val_ids,
        cfg,
        out=out,
        resume=args.resume,
        stop_at=args.stop_at,
        device=args.device,
        progress=not args.no_progress,
        signature=signature,
        on_eval=on_eval,
    )
    if dist.main:
        finished = len(history.loss) >= cfg.steps
        if finished:
            save_model(model, out / "model", tokenizer=tokenizer)
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
    if torch.distributed.is_initialized():  # started by train() under torchrun
        torch.distributed.destroy_process_group()
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
    return math.exp(loss)


def _check_vocab(model, tokenizer, where: Path) -> None:
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.get_vocab_size():,} tokens but the model in {str(where)!r} "
            f"only {model.config.vocab_size:,}; pass the model's own --tokenizer"
        )


def cmd_compress(args) -> int:
    if (args.rank is None) == (args.eps is None):
        raise ValueError("compress: give exactly one of --rank and --eps")
    if args.eps is not None and not 0 < args.eps < 1:
        raise ValueError(f"compress: --eps must be in (0, 1), got {args.eps}")
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
        shapes=_shapes(args.shapes),
        layers=_layers(args.layers),
        bias=not args.no_bias,
        from_weights=True,
        ncores=args.ncores,
        embeddings=args.embeddings,
        embedding_rank=args.embedding_rank,
    )
    after = _perplexity(model, ids, args)
    save_model(model, args.out, tokenizer=tokenizer)
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
    root = argparse.ArgumentParser(
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
    _add_data_args(p, max_chars=1_500_000)
    _add_model_args(p, preset=None, n_layer=4, n_embd=256, n_head=4)
    _add_ttm_args(p, rank=32, shapes="balanced", ncores=4, help_rank="TT rank of the TTM model (default 32)")
    p.add_argument("--no-lowrank", action="store_true", help="skip the low-rank baseline")
    p.add_argument(
        "--threads",
        type=int,
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
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "train",
        help="pre-train one GPT-2 (dense, TTM or low-rank), with checkpoints and DDP",
        description="Pre-train GPT-2 from scratch. Under torchrun it uses DDP (nccl on GPU, gloo "
        "on CPU). bf16 autocast on GPU. Writes checkpoint.pt, log.jsonl and, when done, a model/ "
        "folder loadable with tensornet.gpt2.load_model.",
        epilog=_EPILOG,
    )
    p.add_argument("--out", default="runs/train", help="output folder for checkpoints and the model")
    _add_data_args(p, max_chars=None)
    _add_model_args(p, preset="tiny")
    _add_ttm_args(
        p, rank=0, shapes="paper", help_rank="TT rank for TTM layers; 0 trains the dense model (default 0)"
    )
    p.add_argument(
        "--lowrank",
        type=int,
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
        "--checkpoint-every", type=int, default=0, help="checkpoint every N steps (always at the end)"
    )
    p.add_argument("--resume", action="store_true", help="continue exactly from --out/checkpoint.pt")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        metavar="STEP",
        help="stop (with a checkpoint) after STEP steps; continue later with --resume",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

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
            "--max-chars", type=int, default=None, help="limit the embedded corpus to N characters"
        )
        p.add_argument("--tokenizer", metavar="PATH", help="tokenizer (default: the one in the model folder)")
        p.add_argument("--block-size", type=int, default=None, help="evaluation window (default n_positions)")
        p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
        p.add_argument("--eval-tokens", type=int, default=0, help="evaluate at most N tokens (0: all)")
        p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
        if name == "compress":
            p.add_argument("--out", required=True, help="folder for the compressed model")
            g = p.add_mutually_exclusive_group()
            g.add_argument("--rank", type=int, help="TT rank of every converted layer")
            g.add_argument(
                "--eps", type=float, help="relative-error target per layer (ranks chosen by ttm_svd)"
            )
            p.add_argument(
                "--shapes", default="paper", help="'paper', 'balanced' or a JSON object (see train)"
            )
            p.add_argument("--ncores", type=int, default=3, help="cores for --shapes balanced")
            p.add_argument("--layers", default="mlp", help="layer groups to convert: mlp, attn or mlp,attn")
            p.add_argument("--no-bias", action="store_true", help="drop the converted layers' biases")
            _add_embedding_args(p)
        p.set_defaults(func=func)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI prints its own progress
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, NotImplementedError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the last checkpoint is intact (continue with --resume)", file=sys.stderr)
        return 130
