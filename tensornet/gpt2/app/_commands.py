"""What each command of ``python -m tensornet.gpt2`` does once its flags were checked.

The flags are checked by ``_precheck``, whose warnings are the only code that prints.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import build_model, gpt2_config, load_model, lowrank, nparams, save_model, save_run_model, tensorize
from . import _checkpoint, _data, _runfolder
from ._args import log_spaced
from ._distributed import Distributed, default_device
from ._precheck import check_memory, dims, train_config, warn
from ._resume import CHECKPOINT, check_checkpoint_fits, runtime
from ._train import (
    History,
    check_tokens,
    evaluate,
    load_note,
    make_optimizer,
    perplexity,
    train,
)


def _tokenizer(args, corpus, *, vocab_size: int):
    if args.tokenizer:
        return _data.load_tokenizer(args.tokenizer)
    return _data.cached_tokenizer(corpus, vocab_size, args.cache_dir)


def _bar(total: int, initial: int = 0, *, enabled: bool, unit: str = "step"):
    """A tqdm bar on stderr (None when disabled); lines printed meanwhile go through ``_say``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, file=sys.stderr)


def _say(bar, line: str) -> None:
    """A line above the progress bar (on stderr, as the bar), or plainly when there is none."""
    if bar is None:
        print(line, file=sys.stderr)
    else:
        bar.write(line, file=sys.stderr)


def _memory_note(device: str | torch.device) -> str:
    return "peak allocated CUDA memory" if torch.device(device).type == "cuda" else "peak RSS of the process"


# --------------------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    from ._compare import compare, table

    out = Path(args.out)
    with _runfolder.RunFolder.open(out, kind="compare", overwrite=args.overwrite):
        spec, variants = _compare_spec(args, out)
        token_file = Path(spec["tokens"])
        tokens = args.steps * args.batch_size * args.block_size
        print(
            f"training {', '.join(variants)}: {args.steps} steps x {args.batch_size} x {args.block_size} = "
            f"{tokens:,} tokens each, seed {args.seed}, on {spec['device']}; lr {args.lr:g} (TT cores "
            f"x{args.tt_lr_scale:g}"
            + ("" if args.no_lowrank else f", low-rank factors x{args.lowrank_lr_scale:g}")
            + ")"
        )
        bar = _bar(args.steps * len(variants), enabled=not args.no_progress)
        done = 0

        def on_step(variant: str, step: int, loss: float) -> None:
            if bar is not None:
                bar.set_description(
                    f"{variant} ({variants.index(variant) + 1}/{len(variants)})", refresh=False
                )
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                bar.update(done + step - bar.n)

        def on_result(result: dict) -> None:
            nonlocal done
            done += args.steps
            note = load_note(result["load_average"]) if spec["device"] == "cpu" else ""
            _say(
                bar,
                f"{result['variant']}: validation perplexity {result['val_ppl']:.2f} on {result['val_tokens']:,} "
                f"tokens, {result['params']:,} parameters, {result['tokens_per_s']:,.0f} tokens/s"
                + (f" ({note})" if note else ""),
            )

        try:
            _checkpoint.save_tensors(token_file, {"train": spec.pop("train_ids"), "val": spec.pop("val_ids")})
            summary = compare(spec, out=out, variants=variants, on_step=on_step, on_result=on_result)
        finally:
            token_file.unlink(missing_ok=True)  # scratch for the worker processes
            if bar is not None:
                bar.close()
    val_tokens = summary["results"][0]["val_tokens"]
    print(
        f"\n{summary['machine']}; {tokens:,} training tokens per model, validation on {val_tokens:,} tokens\n"
    )
    print(table(summary))
    print(f"\nwrote {out / 'results.json'}, {out / 'loss_curves.png'} and {out / 'loss_curves.svg'}")
    return 0


def _compare_spec(args, out: Path) -> tuple[dict, tuple[str, ...]]:
    """The corpus, tokenizer and tokens (checked), and the description of the models compare trains."""
    corpus = _data.load_corpus(args.data, max_chars=args.max_chars)
    print(f"corpus: {corpus.description}")
    if getattr(args, "shapes_note", None):
        print(f"core shapes of the TTM model: {args.shapes_note}")
    tokenizer = _tokenizer(args, corpus, vocab_size=args.vocab_size or 4096)
    vocab = tokenizer.get_vocab_size()
    check_memory(
        args, layers=args.n_layer, width=args.n_embd, vocab=vocab, block=args.block_size, training=True
    )
    train_ids, val_ids = _data.cached_tokens(corpus, tokenizer, args.cache_dir)
    # without --eval-every, a few log-spaced evaluations: the validation curves of loss_curves.png
    cfg = train_config(args, eval_at=() if args.eval_every else log_spaced(args.steps))
    check_tokens(train_ids, val_ids, cfg)
    print(f"tokens: {train_ids.numel():,} train / {val_ids.numel():,} validation, vocabulary {vocab:,}")
    at = (
        f"every {cfg.eval_every} steps"
        if cfg.eval_every
        else "after steps " + ", ".join(map(str, cfg.eval_at))
    )
    print(f"evaluation: {at}, on {_eval_note(cfg, val_ids)}")
    config = dict(vocab_size=vocab, block_size=args.block_size, preset=None, n_layer=args.n_layer)
    config |= dict(n_embd=args.n_embd, n_head=args.n_head, dropout=args.dropout)
    spec = {
        "config": config | {"eos_token_id": tokenizer.token_to_id(_data.EOT)},
        "seed": args.seed,
        "rank": args.rank,
        "shapes": args.shapes,
        "ncores": args.ncores,
        "embeddings": args.embeddings,
        "embedding_rank": args.embedding_rank,
        "layers": args.layers,
        "bias": not args.no_bias,
        "device": args.device or str(default_device()),
        "tokens": str(out / "tokens.safetensors"),
        "train": asdict(cfg),
        "corpus": corpus.description,
        "corpus_name": corpus.name,
        "threads": args.threads,
        "train_ids": train_ids.int(),
        "val_ids": val_ids.int(),
    }
    return spec, ("dense", "ttm") + (() if args.no_lowrank else ("lowrank",))


# ----------------------------------------------------------------------------------------------------- train
@dataclass
class _TrainJob:
    """What ``train`` builds before its first step: the data, the model and the settings."""

    corpus: Any
    tokenizer: Any
    model: Any  # a GPT2LMHeadModel
    report: Any
    cfg: Any
    signature: dict
    start: int = 0


def cmd_train(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    dist = Distributed()
    out = Path(args.out)
    folder = None
    if dist.main:  # held for the whole run: the checkpoint, the log and the model folder
        folder = _runfolder.RunFolder.open(out, kind="train", resume=args.resume, overwrite=args.overwrite)
    try:
        job = _build_train_job(args, out)
        train_ids, val_ids = _data.cached_tokens(job.corpus, job.tokenizer, args.cache_dir)
        check_tokens(train_ids, val_ids, job.cfg)
        if dist.main:
            _describe_train(args, job, val_ids)
        history = _run_train(args, job, train_ids, val_ids, folder or out, dist)
        if dist.main:
            _report_train(args, job, history, out, val_ids)
        return 0
    finally:
        if folder is not None:
            folder.close()
        if torch.distributed.is_initialized():  # started by train() under torchrun
            torch.distributed.destroy_process_group()


def _build_model(args, config):
    model = build_model(config, seed=args.seed)
    bias = not args.no_bias
    if args.rank:
        options = dict(shapes=args.shapes, layers=args.layers, bias=bias, ncores=args.ncores)
        return tensorize(
            model, rank=args.rank, embeddings=args.embeddings, embedding_rank=args.embedding_rank, **options
        )
    if args.lowrank:
        return lowrank(model, rank=args.lowrank, layers=args.layers, bias=bias)
    return model, None


def _build_train_job(args, out: Path) -> _TrainJob:
    """Corpus, tokenizer and model; on --resume the checkpoint's header checked against them (no tokens yet)."""
    tiny = args.preset == "tiny"
    corpus = _data.load_corpus(args.data, max_chars=args.max_chars)
    tokenizer = _tokenizer(args, corpus, vocab_size=args.vocab_size or (4096 if tiny else 16384))
    layers, width, heads = dims(args)
    vocab = tokenizer.get_vocab_size()
    check_memory(args, layers=layers, width=width, vocab=vocab, block=args.block_size, training=True)
    sizes = dict(preset=None, n_layer=layers, n_embd=width, n_head=heads, dropout=args.dropout)
    config = gpt2_config(
        vocab_size=vocab, block_size=args.block_size, eos_token_id=tokenizer.token_to_id(_data.EOT), **sizes
    )
    model, report = _build_model(args, config)
    cfg = train_config(args, checkpoint_every=args.checkpoint_every)
    model_settings = json.loads(model.config.to_json_string(use_diff=False))
    model_settings.pop("transformers_version", None)  # a library upgrade does not change the model
    signature = {
        "model": model_settings,
        "corpus": corpus.fingerprint(),
        "tokenizer": _data.tokenizer_id(tokenizer),
    }
    job = _TrainJob(corpus, tokenizer, model, report, cfg, signature)
    if args.resume:  # the checkpoint's shapes and settings against this model, before the tokens are read
        dist = Distributed()
        device = torch.device(args.device) if args.device else default_device(dist)
        where = runtime(device, dist.world)
        job.start = check_checkpoint_fits(out, model, make_optimizer(model, cfg), cfg, signature, where)
    return job


def _eval_note(cfg, val_ids: torch.Tensor) -> str:
    counted = _data.eval_token_count(val_ids.numel(), cfg.block_size, cfg.eval_tokens or None)
    return f"{counted:,} validation tokens"


def _describe_train(args, job: _TrainJob, val_ids: torch.Tensor) -> None:
    cfg, config = job.cfg, job.model.config
    print(f"corpus: {job.corpus.description}")
    print(
        f"model: {config.n_layer} layers x {config.n_embd}, vocabulary {config.vocab_size:,}, "
        f"{nparams(job.model):,} parameters" + ("" if job.report is None else f"\n{job.report}")
    )
    if args.rank and getattr(args, "shapes_note", None):
        print(f"core shapes: {args.shapes_note}")
    print(
        f"optimisation: {cfg.steps} steps x {cfg.batch_size} x {cfg.block_size}, lr {cfg.lr:g}, warmup {cfg.warmup}"
        + (f", TT cores at lr x{cfg.tt_lr_scale:g}" if args.rank else "")
        + (f", low-rank factors at lr x{cfg.lowrank_lr_scale:g}" if args.lowrank else "")
        + (f", compiled ({cfg.compile})" if cfg.compile else "")
        + f"; each evaluation on {_eval_note(cfg, val_ids)}"
    )
    if args.resume:
        print(f"resumed from step {job.start}/{cfg.steps} ({Path(args.out) / CHECKPOINT})")


def _run_train(args, job: _TrainJob, train_ids, val_ids, out, dist: Distributed) -> History:
    """``train`` with a progress bar; ``out``: the run folder the caller holds (its path in other processes)."""
    bar = _bar(job.cfg.steps, job.start, enabled=not args.no_progress and dist.main)

    def on_step(step: int, loss: float) -> None:
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(step - bar.n)

    def on_eval(step: int, loss: float) -> None:
        note = _eval_note(job.cfg, val_ids)
        _say(bar, f"step {step}: validation loss {loss:.4f}, perplexity {perplexity(loss):.2f} on {note}")

    try:
        return train(
            job.model,
            train_ids,
            val_ids,
            job.cfg,
            out=out,
            resume=args.resume,
            overwrite=args.overwrite,
            stop_at=args.stop_at,
            device=args.device,
            signature=job.signature,
            on_step=on_step,
            on_eval=on_eval,
        )
    finally:
        if bar is not None:
            bar.close()


def _report_train(args, job: _TrainJob, history: History, out: Path, val_ids: torch.Tensor) -> None:
    cfg = job.cfg
    finished = len(history.loss) >= cfg.steps
    if finished:  # the run folder is this run's own: its model/ is replaced
        save_run_model(job.model, out / "model", tokenizer=job.tokenizer)
    state = "finished" if finished else "stopped"
    last = ""
    if history.val:
        last = f", validation perplexity {history.val_ppl:.2f} on {_eval_note(cfg, val_ids)} (step {history.val[-1][0]})"
    if history.steps_run == 0:  # resumed at the step it was asked to reach: nothing was trained
        print(
            f"nothing to train: the run in {str(out)!r} had already {state} at step {len(history.loss)}/"
            f"{cfg.steps}: train loss {history.loss[-1]:.4f}{last}"
        )
        if finished:
            print(
                "a finished run cannot be lengthened (--steps fixes the learning-rate schedule): start a longer "
                "run in another --out"
            )
    else:
        device = args.device or str(default_device())
        note = load_note(history.load_average) if torch.device(device).type == "cpu" else ""
        print(
            f"{state} at step {len(history.loss)}/{cfg.steps}: train loss {history.loss[-1]:.4f}{last}; "
            f"{history.tokens_per_s:,.0f} tokens/s"
            + (f" ({note})" if note else "")
            + f", {_memory_note(device)} {history.peak_memory_mib:,.0f} MiB"
        )
    print(
        f"checkpoint: {out / CHECKPOINT}"
        + (f"; model: {out / 'model'}" if finished else "; continue with --resume")
    )
    if finished and history.val:
        print(_same_evaluation(args, cfg, out / "model"))


def _same_evaluation(args, cfg, model: Path) -> str:
    """How ``eval`` measures the saved model as train did (on the embedded corpus), or why it cannot."""
    if args.data:
        return (
            f"eval --text reads all of a file, not the validation split train held out of --data {args.data}: "
            "on that file eval measures other tokens than these"
        )
    flags = f"--block-size {cfg.block_size} --eval-tokens {cfg.eval_tokens}"
    if args.max_chars:
        flags = f"--max-chars {args.max_chars} {flags}"
    return f"the same evaluation of the saved model: python -m tensornet.gpt2 eval {model} {flags}"


# -------------------------------------------------------------------------------------------- compress/eval
def _eval_tokens(args, model_dir: Path, model) -> tuple[Any, torch.Tensor, str]:
    """The tokenizer (checked against the model's vocabulary), the evaluation tokens and what they are."""
    if args.tokenizer:
        tokenizer = _data.load_tokenizer(args.tokenizer)
    else:
        tokenizer = _data.load_tokenizer(model_dir, flag="the model folder's tokenizer (or give --tokenizer)")
    _check_vocab(model, tokenizer, model_dir)
    if args.text:
        corpus = _data.load_corpus(args.text, flag="--text", split=False)
        texts, source = corpus.train + corpus.val, f"--text {args.text}"  # evaluate all of it
    else:
        texts = _data.stdlib_corpus(max_chars=args.max_chars).val
        source = "the embedded corpus's validation split" + (
            f" (--max-chars {args.max_chars})" if args.max_chars else ""
        )
    ids = _data.encode(tokenizer, texts)
    block = _block(args, model)
    if ids.numel() < block + 1:
        raise ValueError(
            f"{source} has {ids.numel():,} tokens, fewer than one evaluation window of {block + 1:,} "
            "(--block-size + 1); give more text or a smaller --block-size"
        )
    return tokenizer, ids, source


def _block(args, model) -> int:
    return min(args.block_size or model.config.n_positions, model.config.n_positions)


def _check_vocab(model, tokenizer, where: Path) -> None:
    have, want = tokenizer.get_vocab_size(), model.config.vocab_size
    if have > want:
        raise ValueError(
            f"the tokenizer has {have:,} tokens but the model in {str(where)!r} only {want:,}; pass the model's "
            "own --tokenizer"
        )
    if have < want:
        warn(
            f"the tokenizer has {have:,} tokens and the model in {str(where)!r} {want:,}: the model's other "
            f"{want - have:,} tokens are never used; is --tokenizer the model's own?"
        )


def _perplexity(model, ids, args) -> tuple[float, int]:
    """The perplexity of ``model`` on ``ids`` (at most --eval-tokens of them) and the tokens it was measured on."""
    device = torch.device(args.device or default_device())
    model.to(device)
    block, limit = _block(args, model), args.eval_tokens or None
    loss = evaluate(model, ids, block_size=block, batch_size=args.batch_size, device=device, max_tokens=limit)
    return perplexity(loss), _data.eval_token_count(ids.numel(), block, limit)


def _say_model(args) -> None:
    """Which folder MODEL stood for, when it was a run folder (``_precheck._model_folder``)."""
    note = getattr(args, "model_note", None)
    if note:
        print(f"model: {args.model} ({note})")


def _measured(args) -> tuple[Path, Any, Any, torch.Tensor, str, float, int]:
    """MODEL loaded, its evaluation tokens, and its perplexity on them (``eval`` and ``compress``)."""
    src = Path(args.model)
    _say_model(args)
    model = load_model(src)
    tokenizer, ids, source = _eval_tokens(args, src, model)
    ppl, counted = _perplexity(model, ids, args)
    return src, model, tokenizer, ids, source, ppl, counted


def cmd_compress(args) -> int:
    _, model, tokenizer, ids, source, before, counted = _measured(args)
    model.cpu()
    options = dict(shapes=args.shapes, layers=args.layers, bias=not args.no_bias, ncores=args.ncores)
    options |= dict(embeddings=args.embeddings, embedding_rank=args.embedding_rank)
    model, report = tensorize(model, rank=args.rank, eps=args.eps, from_weights=True, **options)
    if getattr(args, "shapes_note", None):
        print(f"core shapes: {args.shapes_note}")
    after, _ = _perplexity(model, ids, args)
    save_model(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite)
    print(report)
    print(
        f"\nperplexity on {counted:,} tokens of {source}: {before:.3f} dense -> {after:.3f} TTM "
        f"({100 * (after / before - 1):+.1f}%); max layer relative error {report.max_error:.4f}"
    )
    print(f"saved {args.out}")
    return 0


def cmd_eval(args) -> int:
    src, model, _, _, source, ppl, counted = _measured(args)
    print(
        f"{src}: {nparams(model):,} parameters, perplexity {ppl:.3f} on {counted:,} tokens of {source} "
        f"(windows of {_block(args, model)})"
    )
    return 0


COMMANDS = {"compare": cmd_compare, "train": cmd_train, "compress": cmd_compress, "eval": cmd_eval}
