"""Fine-tuning with TT adapters vs LoRA vs full fine-tuning, and truncation of a trained TTM model in training.

Mode ``finetune`` (default): pre-train the small GPT-2 of ``python -m tensornet.gpt2 compare`` (preset
"tiny": 4 layers x 256, 4 heads, a 4,096-token BPE) on the embedded corpus (Python standard library
source), then fine-tune it on English prose (the standard library's ``pydoc_data.topics``: the Python
reference manual's topics) with (a) full fine-tuning, (b) PEFT's LoRA r=8 and (c) ``tensornet.nn.adapt``,
on the same modules (c_attn, c_proj, c_fc), from the same seed, on the same tokens in the same order;
three seeds. Reports validation perplexity on the prose, trainable parameters, median step time and the
peak RSS growth during fine-tuning (sampled every 5 ms; CPU).

Mode ``truncate``: train the same GPT-2 with TTM MLPs (``tensornet.gpt2.tensorize``, rank 32), truncate
it to a fraction of its TT parameters with ``tensornet.nn.truncate(..., optimizer=...)`` part-way, and count
the steps until the validation loss is back at its pre-truncation value; a control restarts AdamW.

    python benchmarks/bench_finetune.py [--mode finetune|truncate] [--quick] [--write]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import threading
import time
from pathlib import Path

import _harness
import torch

import tensornet as tn
import tensornet.gpt2 as g

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ["c_attn", "c_proj", "c_fc"]


def rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Peak resident set size growth over the block, sampled every 5 ms by a thread."""

    def __enter__(self):
        self.start = rss()
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.005)

    def __exit__(self, *args):
        self.running = False
        self.thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 2**20


def encode(tokenizer, texts) -> torch.Tensor:
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(list(texts)):
        ids.extend(encoding.ids)
        ids.append(0)  # <|endoftext|> between documents
    return torch.tensor(ids, dtype=torch.long)


def prose():
    """The second corpus: the reference manual's topics (English prose with some code), 1 in 8 for validation."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    val = [topics[k] for i, k in enumerate(keys) if i % 8 == 3]
    train = [topics[k] for i, k in enumerate(keys) if i % 8 != 3]
    return train, val


def batches(ids: torch.Tensor, steps: int, batch: int, block: int, seed: int) -> torch.Tensor:
    """``(steps, batch, block + 1)`` windows at random offsets, from the seed alone (same for every method)."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - block - 1, (steps, batch), generator=generator)
    return torch.stack([torch.stack([ids[s : s + block + 1] for s in row]) for row in starts])


def val_windows(ids: torch.Tensor, block: int, max_tokens: int | None) -> torch.Tensor:
    n = (len(ids) - 1) // block
    if max_tokens:
        n = min(n, max(max_tokens // block, 1))
    return torch.stack([ids[i * block : i * block + block + 1] for i in range(n)])


@torch.no_grad()
def val_loss(model, windows: torch.Tensor, batch: int = 16) -> float:
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        logits = model(chunk[:, :-1]).logits
        total += float(
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum")
        )
    model.train(was)
    return total / (len(windows) * (windows.shape[1] - 1))


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def run_steps(
    model, optimizer, data, *, lr: float, warmup: int, start: int = 0, total: int | None = None, on_step=None
) -> list[float]:
    """AdamW steps on ``data`` (``(steps, batch, block + 1)``); the step times."""
    total = total or len(data)
    times = []
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for k, window in enumerate(data):
        step = start + k
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, lr, warmup) * group.get("scale", 1.0)
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        logits = model(window[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        times.append(time.perf_counter() - began)
        if on_step is not None:
            on_step(step + 1)
    return times


def pretrained(args, tokenizer, vocab: int):
    corpus = g.stdlib_corpus(max_chars=args.pretrain_chars)
    ids = encode(tokenizer, corpus.train)
    config = g.gpt2_config(vocab_size=vocab, block_size=args.block, preset="tiny")
    model = g.build_model(config, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.99), weight_decay=0.01)
    data = batches(ids, args.pretrain_steps, args.batch, args.block, seed=12345)
    began = time.perf_counter()
    run_steps(model, optimizer, data, lr=2e-3, warmup=max(args.pretrain_steps // 10, 1))
    code_val = val_windows(encode(tokenizer, corpus.val), args.block, args.val_tokens)
    return model, time.perf_counter() - began, math.exp(val_loss(model, code_val))


def method_model(method: str, base_state, config, args):
    model = g.build_model(config, seed=0)
    model.load_state_dict(base_state)
    if method == "full":
        return model, args.lr_full
    if method.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0, fan_in_fan_out=True, bias="none"
        )
        return get_peft_model(model, lora), float(method.split("@")[1])
    tn.nn.adapt(model, TARGETS, rank=args.tt_rank, ncores=args.tt_cores, alpha=args.tt_alpha)
    return model, float(method.split("@")[1])


def finetune(args) -> str:
    import warnings

    warnings.filterwarnings("ignore", category=tn.nn.RankClipWarning)
    train_text, val_text = prose()
    code = g.stdlib_corpus(max_chars=args.pretrain_chars)
    tokenizer = g.train_tokenizer(code.train, args.vocab)
    vocab = tokenizer.get_vocab_size()
    base, pre_seconds, code_ppl = pretrained(args, tokenizer, vocab)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    prose_ids, prose_val = encode(tokenizer, train_text), encode(tokenizer, val_text)
    windows = val_windows(prose_val, args.block, args.val_tokens)
    base_ppl = math.exp(val_loss(base, windows))
    methods = ["full", *(f"lora@{lr:g}" for lr in args.lr_lora), *(f"tt@{lr:g}" for lr in args.lr_tt)]
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for seed in args.seeds:
        data = batches(prose_ids, args.steps, args.batch, args.block, seed=seed)
        for method in methods:
            torch.manual_seed(seed)  # the adapters' initialisation
            model, lr = method_model(method, base_state, base.config, args)
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
            with PeakRSS() as memory:
                times = run_steps(model, optimizer, data, lr=lr, warmup=max(args.steps // 10, 1))
            rows[method].append(
                {
                    "ppl": math.exp(val_loss(model, windows)),
                    "params": sum(p.numel() for p in trainable),
                    "step": statistics.median(times[2:] if len(times) > 4 else times),
                    "rss": memory.growth_mib,
                }
            )
            print(method, seed, rows[method][-1], flush=True)
    return report_finetune(args, rows, base_ppl, code_ppl, pre_seconds)


def report_finetune(args, rows, base_ppl, code_ppl, pre_seconds) -> str:
    names = {m: f"LoRA r=8 (PEFT), lr {m.split('@')[1]}" for m in rows if m.startswith("lora")}
    names["full"] = f"full fine-tuning, lr {args.lr_full:g}"
    for m in rows:
        if m.startswith("tt"):
            names[m] = f"TT adapter r={args.tt_rank}, {args.tt_cores} cores, lr {m.split('@')[1]}"

    def best_of(kind):
        return min(
            (m for m in rows if m.startswith(kind)), key=lambda m: statistics.mean(r["ppl"] for r in rows[m])
        )

    best, best_tt = best_of("lora"), best_of("tt")
    lora = rows[best]
    lora_ppl = statistics.mean(r["ppl"] for r in lora)
    lora_step = statistics.mean(r["step"] for r in lora)
    lines = [
        "| method | trainable params | vs LoRA | val ppl per seed | mean val ppl | vs LoRA | median step (s) | vs LoRA | peak RSS growth (MiB) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for method, entries in rows.items():
        ppl = statistics.mean(r["ppl"] for r in entries)
        step = statistics.mean(r["step"] for r in entries)
        params = entries[0]["params"]
        lines.append(
            f"| {names[method]} | {params:,} | {params / lora[0]['params']:.3f}x | "
            f"{', '.join(format(r['ppl'], '.2f') for r in entries)} | {ppl:.2f} | {100 * (ppl / lora_ppl - 1):+.1f}% | "
            f"{step:.3f} | {step / lora_step:.2f}x | {max(r['rss'] for r in entries):.0f} |"
        )
    tt = rows[best_tt]
    tt_ppl = statistics.mean(r["ppl"] for r in tt)
    tt_step = statistics.mean(r["step"] for r in tt)
    verdict = [
        f"- TT trainable parameters <= 10% of LoRA's: {tt[0]['params'] / lora[0]['params']:.1%} -> "
        f"{'met' if tt[0]['params'] <= 0.1 * lora[0]['params'] else 'missed'}",
        f"- TT mean validation perplexity within 1% of LoRA's: {100 * (tt_ppl / lora_ppl - 1):+.2f}% -> "
        f"{'met' if tt_ppl <= 1.01 * lora_ppl else 'missed'}",
        f"- TT step time <= 1.15x LoRA's: {tt_step / lora_step:.2f}x -> {'met' if tt_step <= 1.15 * lora_step else 'missed'}",
    ]
    header = (
        f"Pre-trained {args.pretrain_steps} steps x {args.batch} x {args.block} tokens on the embedded corpus "
        f"({pre_seconds:.0f} s; its code validation perplexity {code_ppl:.1f}); the base model's perplexity on "
        f"the prose validation split before fine-tuning: {base_ppl:.1f}. Fine-tuning: {args.steps} steps x "
        f"{args.batch} x {args.block} = {args.steps * args.batch * args.block:,} tokens per run, seeds "
        f"{args.seeds}, AdamW betas (0.9, 0.99), no weight decay, clip 1.0, warmup 10%, cosine to 10%; "
        f"LoRA alpha 16 (scale 2), dropout 0; TT alpha "
        f"{args.tt_alpha} (scale {args.tt_alpha / args.tt_rank:g}). Validation: the first "
        f"{args.val_tokens or 'all'} tokens of the prose validation split. 'vs LoRA' compares with the "
        f"best LoRA ({names[best]}); the targets compare the best TT ({names[best_tt]}) with it. Each "
        "method's learning rate is chosen on this validation split (there is no separate test split)."
    )
    return "\n".join([header, "", *lines, "", *verdict])


def memory(args) -> str:
    """Training memory per method, counted: what one step's graph saves for backward, plus gradients and
    AdamW's two moments of the trainable parameters (float32). Independent of the weights' values."""
    import warnings

    warnings.filterwarnings("ignore", category=tn.nn.RankClipWarning)
    config = g.gpt2_config(vocab_size=args.vocab, block_size=args.block, preset="tiny")
    base_state = g.build_model(config, seed=0).state_dict()
    window = torch.randint(
        0, args.vocab, (args.batch, args.block + 1), generator=torch.Generator().manual_seed(0)
    )
    lines = [
        "| method | saved for backward (MiB) | grads + AdamW moments (MiB) | total (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for method in ["full", f"lora@{args.lr_lora[0]:g}", f"tt@{args.lr_tt[0]:g}"]:
        model, _ = method_model(method, base_state, config, args)
        model.train()
        params = list(model.parameters())
        saved = _harness.saved_bytes(lambda m=model: m(window[:, :-1]).logits, exclude=params)
        state = 3 * 4 * sum(p.numel() for p in params if p.requires_grad)
        name = method.split("@")[0]
        lines.append(
            f"| {name} | {saved / 2**20:.1f} | {state / 2**20:.2f} | {(saved + state) / 2**20:.1f} |"
        )
    return "\n".join(lines)


def steptime(args) -> str:
    """Training-step time per method in interleaved rounds (load from other jobs hits every method alike)."""
    import warnings

    warnings.filterwarnings("ignore", category=tn.nn.RankClipWarning)
    config = g.gpt2_config(vocab_size=args.vocab, block_size=args.block, preset="tiny")
    base_state = g.build_model(config, seed=0).state_dict()
    window = torch.randint(
        0, args.vocab, (args.batch, args.block + 1), generator=torch.Generator().manual_seed(0)
    )
    steps = {}
    for method in ["full", f"lora@{args.lr_lora[0]:g}", f"tt@{args.lr_tt[0]:g}"]:
        model, _ = method_model(method, base_state, config, args)
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step(m=model, o=optimizer):
            o.zero_grad(set_to_none=True)
            logits = m(window[:, :-1]).logits
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten()).backward()
            o.step()

        steps[method.split("@")[0]] = step
    measured = _harness.time_interleaved(steps, rounds=args.rounds, warmup=2)
    medians = measured.median()
    cpu = measured.median("cpu")
    lines = [
        f"{args.rounds} interleaved rounds of one AdamW step each ({args.batch} x {args.block} tokens); medians.",
        "",
        "| method | wall (s) | vs LoRA | CPU time (s) | vs LoRA |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in medians:
        lines.append(
            f"| {name} | {medians[name]:.3f} | {medians[name] / medians['lora']:.2f}x | {cpu[name]:.3f} | "
            f"{cpu[name] / cpu['lora']:.2f}x |"
        )
    ratio = medians["tt"] / medians["lora"]
    lines += ["", f"- TT step time <= 1.15x LoRA's: {ratio:.2f}x -> {'met' if ratio <= 1.15 else 'missed'}"]
    return "\n".join(lines)


def truncation(args) -> str:
    code = g.stdlib_corpus(max_chars=args.pretrain_chars)
    tokenizer = g.train_tokenizer(code.train, args.vocab)
    ids = encode(tokenizer, code.train)
    windows = val_windows(encode(tokenizer, code.val), args.block, args.val_tokens)
    config = g.gpt2_config(vocab_size=tokenizer.get_vocab_size(), block_size=args.block, preset="tiny")
    steps, cut = args.tt_steps, args.tt_cut
    data = batches(ids, steps, args.batch, args.block, seed=7)
    lr, warmup = 2e-3, max(steps // 10, 1)
    outcomes = {}
    for mode in ("carried", "restarted"):
        model = g.build_model(config, seed=0)
        g.tensorize(model, rank=32, shapes="balanced")
        tt = {id(p) for p in tn.nn.tt_parameters(model)}
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in tt], "scale": 1.0},
            {"params": tn.nn.tt_parameters(model), "scale": 5.0},  # compare's TT learning-rate factor
        ]
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
        run_steps(model, optimizer, data[:cut], lr=lr, warmup=warmup, total=steps)
        before = val_loss(model, windows)
        params = sum(p.numel() for p in model.parameters())
        report = tn.nn.truncate(model, budget=args.budget, optimizer=optimizer if mode == "carried" else None)
        if mode == "restarted":
            groups = [
                {
                    "params": [
                        p
                        for p in model.parameters()
                        if id(p) not in {id(q) for q in tn.nn.tt_parameters(model)}
                    ],
                    "scale": 1.0,
                },
                {"params": tn.nn.tt_parameters(model), "scale": 5.0},
            ]
            optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
        after = val_loss(model, windows)
        curve = [(cut, after)]
        run_steps(
            model,
            optimizer,
            data[cut : cut + args.watch],
            lr=lr,
            warmup=warmup,
            start=cut,
            total=steps,
            on_step=lambda s, m=model, c=curve: c.append((s, val_loss(m, windows))),
        )
        recovered = next((s - cut for s, v in curve if v <= before), None)
        outcomes[mode] = (before, after, curve, recovered, report, params)
        print(mode, before, after, recovered, flush=True)
    return report_truncation(args, outcomes, steps, cut)


def report_truncation(args, outcomes, steps, cut) -> str:
    remaining = steps - cut
    allowed = 0.05 * remaining
    lines = [
        f"TTM GPT-2 (preset tiny, MLPs TTM rank 32 by `tensornet.gpt2.tensorize`), AdamW lr 2e-3 (TT cores 5x), "
        f"{steps}-step schedule x {args.batch} x {args.block}; truncated after step {cut} to "
        f"`budget={args.budget}` of the TT layers' parameters; {remaining} steps remain, so the target is a "
        f"recovery within {allowed:g} steps. Validation: the first {args.val_tokens} tokens of the code split, "
        "after every step following the truncation.",
        "",
        "| optimizer state | TT params before -> after | model params after | val loss before | right after | "
        "steps to recover | losses after 1..n steps |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for mode, (before, after, curve, recovered, report, params) in outcomes.items():
        losses = ", ".join(f"{v:.3f}" for _, v in curve[1:])
        lines.append(
            f"| {mode} | {report.params_before:,} -> {report.params_after:,} ({report.ratio:.1%}) | "
            f"{params - report.params_before + report.params_after:,} | {before:.4f} | {after:.4f} | "
            f"{recovered if recovered is not None else f'> {args.watch}'} | {losses} |"
        )
    carried = outcomes["carried"][3]
    lines += [
        "",
        f"- recovery within 5% of the remaining steps ({allowed:g}) with the carried state: "
        f"{carried} -> {'met' if carried is not None and carried <= allowed else 'missed'}",
    ]
    errors = ", ".join(f"{e.name} {e.error:.3f}" for e in outcomes["carried"][4].layers[:4])
    lines.append(
        f"- per-layer relative weight errors of the truncation (first four): {errors}; eps {outcomes['carried'][4].eps:.3f}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("finetune", "truncate", "memory", "steptime"), default="finetune")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few steps of everything")
    parser.add_argument(
        "--write", action="store_true", help="append the result to benchmarks/results/finetune.md"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--pretrain-chars", type=int, default=1_500_000)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--val-tokens", type=int, default=4096)
    parser.add_argument("--lr-full", type=float, default=3e-4)
    parser.add_argument("--lr-lora", type=float, nargs="+", default=[3e-3, 1e-2, 2e-2])
    parser.add_argument("--lr-tt", type=float, nargs="+", default=[3e-3, 1e-2, 2e-2])
    parser.add_argument("--tt-rank", type=int, default=4)
    parser.add_argument("--tt-cores", type=int, default=5)
    parser.add_argument("--tt-alpha", type=float, default=64.0)
    parser.add_argument("--tt-steps", type=int, default=120)
    parser.add_argument("--tt-cut", type=int, default=60)
    parser.add_argument("--watch", type=int, default=6)
    parser.add_argument("--budget", type=float, default=0.8)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.pretrain_steps, args.pretrain_chars = [0], 4, 4, 200_000
        args.val_tokens, args.tt_steps, args.tt_cut, args.watch, args.vocab = 512, 8, 4, 2, 512
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    began = time.perf_counter()
    body = {"finetune": finetune, "truncate": truncation, "memory": memory, "steptime": steptime}[args.mode](
        args
    )
    took = time.perf_counter() - began
    text = "\n".join(
        [
            f"## `{args.mode}`" + (" (quick)" if args.quick else ""),
            "",
            f"`python benchmarks/bench_finetune.py --mode {args.mode}"
            + (" --quick" if args.quick else "")
            + "` "
            f"took {took:.0f} s.",
            "",
            body,
            "",
            *_harness.machine(peers=["peft", "transformers"]),
            "",
        ]
    )
    print(text)
    if args.write:
        with open(RESULTS / "finetune.md", "a") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
