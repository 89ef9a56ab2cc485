"""The parameter-budget allocator against uniform ranks at equal parameters, on a trained GPT-2. Not a test.

    python benchmarks/bench_budget.py                      # compare's model, 150 pre-training steps
    python benchmarks/bench_budget.py --pretrain 100 --steps 30 --seeds 0 --train-ranks 16  # a quick look
    python benchmarks/bench_budget.py --cache DIR --ranks 16 --models budget --seeds 1  # one piece of a run

A dense GPT-2 of ``python -m tensornet.gpt2 compare``'s size (4 layers x 256, 4 heads, a 4,096-token BPE of the
embedded standard-library corpus, context 128) is pre-trained for ``--pretrain`` steps with compare's recipe.
Its MLP layers (``c_fc`` 256 -> 1024, ``c_proj`` 1024 -> 256, 8 layers) are then converted from the trained
weights two ways, with the same core shapes (4 balanced cores):

* **uniform**: every bond at rank ``r`` (``Rule(..., rank=r)``), today's default;
* **budget**: ``tensorize(model, [Rule(c_fc), Rule(c_proj)], budget=b, calibration=batches)`` with ``b`` the
  uniform model's TT-core parameters over the dense weights, so the allocator gets at most as many
  parameters, and ``batches`` ``--calibration`` training batches of 16 x 128 tokens (drawn with seed 1234,
  none of the validation split): the allocation minimises the layers' output error on them;
* **budget, weights only**: the same without calibration (the weights' error; conversion only).

Columns: TT-core parameters, the replaced weights' relative conversion error taken together
(``TensorizeReport.total_error``), validation perplexity right after conversion, and after ``--steps`` steps of
the same training (one seed per run, the seeds of ``--seeds``; each seed draws other batches) for the
uniform and budget models at the ranks of ``--train-ranks`` (a budget model with the uniform model's ranks
is the same model: trained once). ``--cache DIR`` keeps the token ids and the pre-trained model there
(safetensors; read when present), so a run can be split over processes by ``--ranks``, ``--models`` and
``--seeds``. Public names of ``tensornet.gpt2`` and ``tensornet.nn`` only. Results:
``benchmarks/results/budget.md``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: no spin-waiting OpenMP threads

import _harness as H
import safetensors.torch
import torch

from tensornet import gpt2
from tensornet.nn import Rule, tensorize

MODELS = ("uniform", "budget", "weights")
LAYERS = ("transformer.h.*.mlp.c_fc", "transformer.h.*.mlp.c_proj")


def encode(tokenizer, texts) -> torch.Tensor:
    eot = tokenizer.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(list(texts)):
        ids += [*encoding.ids, eot]
    return torch.tensor(ids, dtype=torch.int64)


def recipe(steps: int, seed: int, lr: float, warmup: int) -> gpt2.TrainConfig:
    """compare's recipe (batch 16 x 128, AdamW, cosine) at ``steps`` steps; TT cores at the dense rate."""
    return gpt2.TrainConfig(
        steps=steps,
        batch_size=16,
        block_size=128,
        lr=lr,
        warmup=warmup,
        weight_decay=0.01,
        beta2=0.99,
        eval_tokens=0,
        seed=seed,
    )


def convert(dense, rank: int | None, budget: float | None, ncores: int, calibration=None):
    model = copy.deepcopy(dense)
    rules = [Rule(pattern, rank=rank, ncores=ncores) for pattern in LAYERS]
    return tensorize(model, rules, budget=budget, calibration=calibration)


def calibration_batches(train_ids: torch.Tensor, count: int) -> list[torch.Tensor]:
    """``count`` batches of 16 x 128 training tokens at offsets drawn with a fixed seed (1234)."""
    gen = torch.Generator().manual_seed(1234)
    starts = torch.randint(0, len(train_ids) - 129, (count, 16), generator=gen)
    return [torch.stack([train_ids[i : i + 128] for i in row.tolist()]) for row in starts]


def ranks_of(report) -> list[tuple[int, ...]]:
    return [layer.ranks for layer in report.layers]


def core_params(report) -> int:
    return sum(layer.params_after - layer.bias_params for layer in report.layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", type=int, default=150, help="dense pre-training steps")
    parser.add_argument("--steps", type=int, default=40, help="training steps after conversion")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32], help="uniform ranks to match")
    parser.add_argument(
        "--train-ranks", type=int, nargs="*", default=None, help="the ranks whose models are trained (all)"
    )
    parser.add_argument(
        "--cache",
        default=None,
        help="a folder: read the token ids and pre-trained model (safetensors) there if present, else write them",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="the conversions to show (the uniform and budget ones are trained); one per process splits a run",
    )
    parser.add_argument("--calibration", type=int, default=4, help="calibration batches of 16 x 128")
    parser.add_argument("--ncores", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print("\n".join(H.machine()))

    # the cache holds data only (safetensors: tensors, no pickle), written by this script's own steps
    ids_path, dense_path = (
        (None, None)
        if not args.cache
        else (f"{args.cache}/ids.safetensors", f"{args.cache}/dense.safetensors")
    )
    if ids_path and os.path.exists(ids_path):
        ids = safetensors.torch.load_file(ids_path)
        train_ids, val_ids = ids["train"], ids["val"]
    else:
        corpus = gpt2.stdlib_corpus(max_chars=1_500_000)
        tokenizer = gpt2.train_tokenizer(corpus.train, vocab_size=4096)
        train_ids, val_ids = encode(tokenizer, corpus.train), encode(tokenizer, corpus.val)
        if ids_path:
            os.makedirs(args.cache, exist_ok=True)
            safetensors.torch.save_file({"train": train_ids, "val": val_ids}, ids_path)
    config = gpt2.gpt2_config(vocab_size=4096, block_size=128, preset=None, n_layer=4, n_embd=256, n_head=4)
    dense = gpt2.build_model(config, seed=0)
    if dense_path and os.path.exists(dense_path):
        safetensors.torch.load_model(dense, dense_path)
        print(f"pre-trained model ({args.pretrain} steps) read from {dense_path}")
    else:
        gpt2.train(dense, train_ids, val_ids, recipe(args.pretrain, 0, 2e-3, 30))
        if dense_path:
            safetensors.torch.save_model(dense, dense_path)

    def ppl(model) -> float:
        return math.exp(gpt2.evaluate(model, val_ids, block_size=128, batch_size=16))

    print(
        f"dense pre-trained {args.pretrain} steps: val perplexity {ppl(dense):.2f} "
        f"({time.perf_counter() - started:.0f} s so far)\n"
    )
    batches = calibration_batches(train_ids, args.calibration)
    print(
        "| uniform rank | model | TT-core params | % of dense MLP weights | conversion error | ppl after conversion |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    trained = {}
    for rank in args.ranks:
        uniform, uniform_report = convert(dense, rank, None, args.ncores)
        budget = uniform_report.weight_ratio
        made = {"uniform": (uniform, uniform_report)}
        if "budget" in args.models:
            made["budget"] = convert(dense, None, budget, args.ncores, batches)
        if "weights" in args.models:
            made["budget, weights only"] = convert(dense, None, budget, args.ncores)
        for name, (model, report) in made.items():
            if name.split(",")[0] not in args.models and name != "budget, weights only":
                continue
            print(
                f"| {rank} | {name} | {core_params(report):,} | {100 * report.weight_ratio:.2f} | "
                f"{report.total_error:.4f} | {ppl(model):.2f} |"
            )
        if "budget" in made:
            allocated, budget_report = made["budget"]
            print(f"\nbudget allocation at rank {rank}'s size:\n{budget_report}\n")
        if args.train_ranks is None or rank in args.train_ranks:
            pair = {"uniform": uniform} if "uniform" in args.models else {}
            if "budget" in made:
                same = ranks_of(budget_report) == ranks_of(uniform_report)
                pair["budget"] = None if same and "uniform" in pair else allocated
            trained[rank] = pair
    for rank, pair in trained.items():
        print(
            f"\nrank {rank}'s size, {args.steps} training steps (lr 5e-4, warmup 10, cosine), val ppl per seed:\n"
        )
        print("| model | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
        print("|---|" + "---:|" * (len(args.seeds) + 1))
        rows = {}
        for name, converted in pair.items():
            if converted is None:  # the allocation chose the uniform ranks: the same model, trained once
                rows[name] = rows["uniform"]
                continue
            values = []
            for seed in args.seeds:
                model = copy.deepcopy(converted)
                gpt2.train(model, train_ids, val_ids, recipe(args.steps, seed, 5e-4, 10))
                values.append(ppl(model))
            rows[name] = values
        for name, values in rows.items():
            cells = " | ".join(f"{v:.2f}" for v in values)
            same = " (the uniform model)" if pair[name] is None else ""
            print(f"| {name}{same} | {cells} | {statistics.mean(values):.2f} |", flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
