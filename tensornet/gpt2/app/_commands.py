"""What each command of ``python -m tensornet.gpt2`` does once ``_precheck`` passed its flags."""

import contextlib
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import load_model, nparams, save_model, save_run_model, tensorize
from . import _compare, _data, _runfolder
from ._args import log_spaced
from ._distributed import Distributed, default_device
from ._precheck import check_memory, dims, model_spec, train_config, vocab_size, warn
from ._resume import CHECKPOINT, check_checkpoint_fits, runtime
from ._train import evaluate, make_optimizer, perplexity, train


def _bar(total: int, initial: int = 0, *, enabled: bool) -> tqdm:
    return tqdm(
        total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, disable=not enabled
    )


def _data_for(args, say: bool):
    corpus = _data.load_corpus(args.data, max_chars=args.max_chars)
    if say:
        print(f"corpus: {corpus.description}")
        _shapes_note(args)
    if args.tokenizer:
        tokenizer = _data.load_tokenizer(args.tokenizer)
    else:
        tokenizer = _data.cached_tokenizer(corpus, vocab_size(args), args.cache_dir)
    layers, width, heads = dims(args)
    vocab = tokenizer.get_vocab_size()
    check_memory(args, layers=layers, width=width, vocab=vocab, block=args.block_size, training=True)
    config = dict(vocab_size=vocab, block_size=args.block_size, preset=None, n_layer=layers, n_embd=width)
    config |= dict(n_head=heads, dropout=args.dropout, eos_token_id=tokenizer.token_to_id(_data.EOT))
    return corpus, tokenizer, config


def _shapes_note(args) -> None:
    """How ``--shapes auto`` resolved (``_precheck``), where TT layers are made."""
    if getattr(args, "shapes_note", None) and (args.rank or args.command == "compress"):
        print(f"core shapes: {args.shapes_note}")


def _optimisation(args, cfg, val_ids: torch.Tensor) -> str:
    """Say compare's and train's optimisation settings and evaluations; return what an evaluation reads."""
    counted = _data.eval_token_count(val_ids.numel(), cfg.block_size, cfg.eval_tokens or None)
    when = f"every {cfg.eval_every} steps" if cfg.eval_every else "at the end"
    when = f"after steps {', '.join(map(str, cfg.eval_at))}" if cfg.eval_at else when
    print(
        f"optimisation: {cfg.steps} steps x {cfg.batch_size} x {cfg.block_size}, lr {cfg.lr:g}, warmup {cfg.warmup}"
        + (f", TT cores at lr x{cfg.tt_lr_scale:g}" if args.rank else "")
        + (f", low-rank factors at lr x{cfg.lowrank_lr_scale:g}" if getattr(args, "lowrank", 0) else "")
        + (f", compiled ({cfg.compile})" if cfg.compile else "")
        + f"; evaluation {when}, on {counted:,} validation tokens"
    )
    return f"{counted:,} validation tokens"


def _device(args) -> str:
    return args.device or str(default_device())


def cmd_compare(args) -> int:
    out, variants = Path(args.out), ("dense", "ttm") + (() if args.no_lowrank else ("lowrank",))
    tokens = args.steps * args.batch_size * args.block_size
    with _runfolder.RunFolder.open(out, kind="compare", overwrite=args.overwrite):
        corpus, tokenizer, config = _data_for(args, say=True)
        train_ids, val_ids = _data.cached_tokens(corpus, tokenizer, args.cache_dir)
        # without --eval-every, a few log-spaced evaluations: the validation curves of loss_curves.png
        cfg = train_config(args, eval_at=() if args.eval_every else log_spaced(args.steps))
        _data.check_windows(train_ids, val_ids, cfg.block_size, cfg.eval_tokens)
        _optimisation(args, cfg, val_ids)
        print(
            f"training {', '.join(variants)}: {tokens:,} tokens each of {train_ids.numel():,} "
            f"(vocabulary {config['vocab_size']:,}), seed {args.seed}, on {_device(args)}"
        )
        spec = model_spec(args, config) | {"device": _device(args), "train": asdict(cfg)}
        spec |= {"corpus": corpus.description, "corpus_name": corpus.name, "threads": args.threads}
        spec["ids"] = (train_ids, val_ids)

        def on_step(variant: str, step: int, loss: float) -> None:
            bar.set_description(f"{variant} ({variants.index(variant) + 1}/{len(variants)})", refresh=False)
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update(variants.index(variant) * args.steps + step - bar.n)

        def on_result(r: dict) -> None:
            line = f"{r['variant']}: validation perplexity {r['val_ppl']:.2f} on {r['val_tokens']:,} tokens, "
            bar.write(f"{line}{r['params']:,} parameters, {r['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)

        with _bar(args.steps * len(variants), enabled=not args.no_progress) as bar:
            summary = _compare.compare(spec, out=out, variants=variants, on_step=on_step, on_result=on_result)
    each = (
        f"{tokens:,} training tokens per model, validation on {summary['results'][0]['val_tokens']:,} tokens"
    )
    print(
        f"\n{summary['machine']}; {each}\n\n{_compare.table(summary)}\n\nwrote results.json, loss_curves.png and loss_curves.svg in {out}"
    )
    return 0


def cmd_train(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    dist, out = Distributed(), Path(args.out)
    kind = dict(kind="train", resume=args.resume, overwrite=args.overwrite)
    try:  # the first process holds the run folder for the whole run: the checkpoint, the log and the model
        with _runfolder.RunFolder.open(out, **kind) if dist.main else contextlib.nullcontext() as folder:
            _train_in(args, dist, out, folder)
        return 0
    finally:
        if torch.distributed.is_initialized():  # started by train() under torchrun
            torch.distributed.destroy_process_group()


def _train_in(args, dist: Distributed, out: Path, folder) -> None:
    corpus, tokenizer, config = _data_for(args, say=dist.main)
    model, report = _compare.build_variant(model_spec(args, config))
    cfg, config = train_config(args), model.config
    settings = json.loads(config.to_json_string(use_diff=False))
    settings.pop("transformers_version", None)  # a library upgrade does not change the model
    signature = {"model": settings, "corpus": corpus.fingerprint()}
    signature["tokenizer"] = _data.tokenizer_id(tokenizer)
    start = 0
    if args.resume:  # the checkpoint's shapes and settings against this model, before the tokens are read
        where = runtime(torch.device(args.device) if args.device else default_device(dist), dist.world)
        start = check_checkpoint_fits(out, model, make_optimizer(model, cfg), cfg, signature, where)
    train_ids, val_ids = _data.cached_tokens(corpus, tokenizer, args.cache_dir)
    evaluated = ""
    if dist.main:
        print(
            f"model: {config.n_layer} layers x {config.n_embd}, vocabulary {config.vocab_size:,}, "
            f"{nparams(model):,} parameters" + ("" if report is None else f"\n{report}")
        )
        layers = report.layers if report is not None and args.rank else []
        clipped = [x for x in layers if x.name != "transformer.wte" and min(x.ranks[1:-1]) < args.rank]
        if clipped:  # tensorize's RankClipWarning is quiet in build_variant
            warn(
                f"--rank {args.rank} is clipped to the useful maximum of some TT bonds in {len(clipped)} layers"
            )
        evaluated = _optimisation(args, cfg, val_ids)
        if args.resume:
            print(f"resumed from step {start}/{cfg.steps} ({out / CHECKPOINT})")

    def on_step(step: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        bar.update(step - bar.n)

    def on_eval(step: int, loss: float) -> None:
        line = f"step {step}: validation loss {loss:.4f}, perplexity {perplexity(loss):.2f} on {evaluated}"
        bar.write(line, file=sys.stderr)

    with _bar(cfg.steps, start, enabled=not args.no_progress and dist.main) as bar:
        # out: the run folder this process holds (its path in the others)
        history = train(
            model, train_ids, val_ids, cfg, out=folder or out, signature=signature, on_step=on_step,
            on_eval=on_eval, resume=args.resume, stop_at=args.stop_at, device=args.device,
        )  # fmt: skip
    if dist.main:
        _report_train(args, model, tokenizer, cfg, history, evaluated, len(history.loss) - start)


def _report_train(args, model, tokenizer, cfg, history, evaluated: str, steps_run: int) -> None:
    out, finished = Path(args.out), len(history.loss) >= cfg.steps
    if finished:  # the run folder is this run's own: its model/ is replaced
        save_run_model(model, out / "model", tokenizer=tokenizer)
    state = "finished" if finished else "stopped"
    at = f"at step {len(history.loss)}/{cfg.steps}: train loss {history.loss[-1]:.4f}"
    if history.val:
        at += f", validation perplexity {history.val_ppl:.2f} on {evaluated} (step {history.val[-1][0]})"
    memory = "allocated CUDA memory" if _device(args).startswith("cuda") else "RSS of the process"
    speed = f"{history.tokens_per_s:,.0f} tokens/s, peak {memory} {history.peak_memory_mib:,.0f} MiB"
    if steps_run == 0:  # resumed at the step it was asked to reach: nothing was trained
        print(f"nothing to train: the run in {str(out)!r} had already {state} {at}")
    else:
        print(f"{state} {at}; {speed}")
    then = f"model: {out / 'model'}" if finished else "continue with --resume"
    print(f"checkpoint: {out / CHECKPOINT}; {then}")


def _measured(args):
    if getattr(args, "model_note", None):  # MODEL was a train run folder (_precheck.check_eval)
        print(f"model: {args.model} ({args.model_note})")
    model = load_model(args.model)
    flag = "--tokenizer" if args.tokenizer else "the model folder's tokenizer (or give --tokenizer)"
    tokenizer = _data.load_tokenizer(args.tokenizer or args.model, flag=flag)
    have, want = tokenizer.get_vocab_size(), model.config.vocab_size
    sizes = f"the tokenizer has {have:,} tokens and the model {want:,}"
    if have > want:
        raise ValueError(f"{sizes}: give the model's own --tokenizer")
    if have < want:
        warn(f"{sizes} (some unused): is it the model's own?")
    if args.text:  # evaluate all of it
        corpus = _data.load_corpus(args.text, flag="--text", split=False)
        texts, source = corpus.train + corpus.val, f"--text {args.text}"
    else:
        texts = _data.stdlib_corpus(max_chars=args.max_chars).val
        chars = f" (--max-chars {args.max_chars})" if args.max_chars else ""
        source = f"the embedded corpus's validation split{chars}"
    ids = _data.encode(tokenizer, texts)
    block = min(args.block_size or model.config.n_positions, model.config.n_positions)
    if ids.numel() < block + 1:  # (evaluate's own error would name --data, not what was given)
        raise ValueError(
            f"{source} has {ids.numel():,} tokens, fewer than one window of {block} + 1: give more text or a "
            "smaller --block-size"
        )
    counted = _data.eval_token_count(ids.numel(), block, args.eval_tokens or None)
    return model, tokenizer, ids, f"{counted:,} tokens of {source}", block


def _perplexity(model, ids, block: int, args) -> float:
    device = torch.device(_device(args))
    batches = dict(block_size=block, batch_size=args.batch_size, max_tokens=args.eval_tokens or None)
    return perplexity(evaluate(model.to(device), ids, device=device, **batches))


def cmd_compress(args) -> int:
    model, tokenizer, ids, source, block = _measured(args)
    before = _perplexity(model, ids, block, args)
    options = dict(shapes=args.shapes, layers=args.layers, bias=not args.no_bias, ncores=args.ncores)
    options |= dict(embeddings=args.embeddings, embedding_rank=args.embedding_rank)
    model, report = tensorize(model.cpu(), rank=args.rank, eps=args.eps, from_weights=True, **options)
    _shapes_note(args)
    after = _perplexity(model, ids, block, args)
    save_model(model, args.out, tokenizer=tokenizer, overwrite=args.overwrite)
    print(report)
    change = f"{before:.3f} dense -> {after:.3f} TTM ({100 * (after / before - 1):+.1f}%)"
    print(f"\nperplexity on {source}: {change}; max layer relative error {report.max_error:.4f}")
    return 0


def cmd_eval(args) -> int:
    model, _, ids, source, block = _measured(args)
    ppl = _perplexity(model, ids, block, args)
    name = f"{Path(args.model)}: {nparams(model):,} parameters"
    print(f"{name}, perplexity {ppl:.3f} on {source} (windows of {block})")
    return 0


COMMANDS = {"compare": cmd_compare, "train": cmd_train, "compress": cmd_compress, "eval": cmd_eval}
