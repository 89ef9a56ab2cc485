"""The training loop: AdamW, linear warmup + cosine decay, gradient clipping, evaluation, atomic checkpoints,
exact resume and DDP (started by ``torchrun``)."""

from __future__ import annotations

import math
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._data import train_batch, val_batches

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults are the paper's GPT-2 small recipe except the step count and batch."""

    steps: int = 1000
    batch_size: int = 16  # sequences per optimizer step, over all processes
    block_size: int = 512
    lr: float = 6.25e-5
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 4000
    weight_decay: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    clip: float = 1.0  # max gradient norm; 0 disables
    # learning-rate multiplier for the TT cores (TTMLinear, TTEmbedding): a product of cores moves W less
    # per Adam step than a dense matrix (see make_optimizer)
    tt_lr_scale: float = 1.0
    seed: int = 0
    eval_every: int = 0  # 0: only at the end
    eval_tokens: int = 65536  # validation tokens per evaluation (None-like when <= 0: all)
    checkpoint_every: int = 0  # 0: only at the end (when out is set)
    compile: bool = False

    def check(self) -> None:
        for name in ("steps", "batch_size", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_every", "checkpoint_every", "weight_decay", "clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.tt_lr_scale > 0:
            raise ValueError(f"tt_lr_scale must be > 0, got {self.tt_lr_scale}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr}, {self.min_lr_ratio}")

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        decay_steps = max(self.steps - self.warmup, 1)
        progress = min((step - self.warmup) / decay_steps, 1.0)
        return self.lr * (
            self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        )


@dataclass
class History:
    """Per-step training loss, evaluations as (step, loss), throughput and peak memory."""

    loss: list[float] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = float("nan")
    peak_memory_mib: float = float("nan")
    train_seconds: float = 0.0

    @property
    def val_ppl(self) -> float:
        return math.exp(self.val[-1][1]) if self.val else float("nan")


class Distributed:
    """Process rank/world from torchrun's environment; ``init()`` starts the process group when world > 1."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.started = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)
            self.started = True

    def close(self) -> None:
        if self.started:
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def default_device(dist: Distributed | None = None) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank if dist is not None else 0)
    return torch.device("cpu")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and TT cores (dim >= 2), none on biases and LayerNorm.

    The TT cores (:func:`tensornet.nn.tt_parameters`) form their own group whose learning rate is
    ``cfg.tt_lr_scale`` times the schedule's: Adam moves every entry by about ``lr`` per step, and a
    change of one core moves the product ``W`` by that change times the other cores, so at the dense
    model's ``lr`` a TT weight learns several times slower (measured in
    benchmarks/results/gpt2_compare_cpu.md; the low-rank baseline's two factors were measured too, and
    are better at the base rate, so they stay in the dense group). AdamW's decoupled decay is
    ``lr * weight_decay``, so the cores' decay is scaled by the same factor (as in the measured runs).
    """
    from tensornet.nn import tt_parameters

    cores = [p for p in tt_parameters(model) if p.requires_grad]
    ids = {id(p) for p in cores}
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2 and id(p) not in ids]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    if cores:
        groups.append({"params": cores, "weight_decay": cfg.weight_decay, "lr_scale": cfg.tt_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def set_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, step: int) -> None:
    """Each group's learning rate for optimizer step ``step``: the schedule times the group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr_at(step) * group.get("lr_scale", 1.0)


def _loss(model: Callable[..., Any], x: torch.Tensor, y: torch.Tensor, autocast: bool) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=x, use_cache=False).logits  # (B, T, V)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    val_ids: torch.Tensor,
    *,
    block_size: int,
    batch_size: int,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
    dist: Distributed | None = None,
) -> float:
    """Mean next-token loss (nats) over non-overlapping validation windows; ``exp`` of it is the perplexity.
    Under DDP each process takes every ``world``-th window and the sums are all-reduced."""
    dist = dist or Distributed()
    device = torch.device(device)
    windows = val_batches(val_ids, block_size=block_size, max_tokens=max_tokens)[dist.rank :: dist.world]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for i in range(0, windows.shape[0], batch_size):
        chunk = windows[i : i + batch_size].to(device)
        loss = _loss(model, chunk[:, :-1], chunk[:, 1:], device.type == "cuda")
        total += float(loss) * chunk[:, 1:].numel()
        count += chunk[:, 1:].numel()
    model.train(was_training)
    total, count = dist.sum([total, float(count)], device)
    return total / count


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {str(path)!r}; run without --resume to start")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: say which file and why
        raise ValueError(
            f"--resume: {str(path)!r} is not a readable checkpoint ({type(err).__name__}: {err})"
        ) from None


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated CUDA memory, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    stop_at: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    signature: dict | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> History:
    """Train ``model`` in place for ``cfg.steps`` optimizer steps and return its ``History``.

    Batch ``s`` is a pure function of ``(cfg.seed, s)`` (``train_batch``), and checkpoints hold the model,
    optimizer, step, history and RNG states, so ``resume=True`` continues from ``out/checkpoint.pt`` with exactly
    the losses of an uninterrupted run. ``stop_at`` ends (with a checkpoint) after that many steps, as an
    interruption would. ``signature`` (model and data description) must match the checkpoint's on resume.
    Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DDP and each process takes its slice of the
    same global batch; rank 0 writes checkpoints.
    """
    cfg.check()
    dist = Distributed()
    device = torch.device(device) if device is not None else default_device(dist)
    dist.init(device)
    autocast = device.type == "cuda"
    out_dir = Path(out) if out is not None else None
    ckpt_path = out_dir / CHECKPOINT if out_dir is not None else None
    signature = {"train": asdict(cfg), **(signature or {})}
    (
        signature["train"].pop("eval_every"),
        signature["train"].pop("checkpoint_every"),
        signature["train"].pop("compile"),
    )

    model.to(device)
    model.train()
    optimizer = make_optimizer(model, cfg)
    history, start = History(), 0
    if resume:
        if ckpt_path is None:
            raise ValueError("--resume needs --out, the folder holding checkpoint.pt")
        ckpt = load_checkpoint(ckpt_path)
        diff = sorted(
            k for k in set(ckpt["signature"]) | set(signature) if ckpt["signature"].get(k) != signature.get(k)
        )
        if diff:
            raise ValueError(
                f"--resume: {str(ckpt_path)!r} was written by a run with different settings ({', '.join(diff)}): "
                f"checkpoint {[ckpt['signature'].get(k) for k in diff]} vs now {[signature.get(k) for k in diff]}"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        history.loss, history.val = list(ckpt["history"]["loss"]), [tuple(v) for v in ckpt["history"]["val"]]
        _set_rng_state(ckpt["rng"])

    def checkpoint(step: int) -> None:
        if ckpt_path is not None and dist.main:
            save_checkpoint(
                ckpt_path,
                {
                    "model": raw.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "history": {"loss": history.loss, "val": history.val},
                    "rng": _rng_state(),
                    "signature": signature,
                },
            )
        dist.barrier()

    raw = model
    if dist.world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    step_model = torch.compile(model) if cfg.compile else model

    end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
    bar = None
    if progress and dist.main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timed_tokens, timed_seconds = 0, 0.0
    all_tokens, all_seconds = 0, 0.0  # fallback for runs too short to skip the first steps
    tokens_per_step = cfg.batch_size * cfg.block_size
    for step in range(start, end):
        t0 = time.perf_counter()
        set_lr(optimizer, cfg, step)
        x, y = train_batch(
            train_ids,
            step=step,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            block_size=cfg.block_size,
            rank=dist.rank,
            world=dist.world,
        )
        loss = _loss(step_model, x.to(device), y.to(device), autocast)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        optimizer.step()
        (loss_value,) = dist.sum([float(loss.detach())], device)
        loss_value /= dist.world
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training loss became {loss_value} at step {step + 1}; lower --lr")
        history.loss.append(loss_value)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        all_seconds += time.perf_counter() - t0
        all_tokens += tokens_per_step
        if step >= start + 2:  # the first steps warm up allocators and compilation
            timed_seconds += time.perf_counter() - t0
            timed_tokens += tokens_per_step
        done = step + 1
        if bar is not None:
            bar.update(1)
            postfix = {"loss": f"{loss_value:.3f}"}
            if timed_seconds > 0:
                postfix["tok/s"] = f"{timed_tokens / timed_seconds:,.0f}"
            bar.set_postfix(postfix)
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.steps:
            val = evaluate(
                raw,
                val_ids,
                block_size=cfg.block_size,
                batch_size=max(cfg.batch_size // dist.world, 1),
                max_tokens=cfg.eval_tokens if cfg.eval_tokens > 0 else None,
                device=device,
                dist=dist,
            )
            history.val.append((done, val))
            if on_eval is not None and dist.main:
                on_eval(done, val)
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < end:
            checkpoint(done)
    if bar is not None:
        bar.close()
    if end > start:
        checkpoint(end)
    if timed_seconds > 0:
        history.tokens_per_s = timed_tokens / timed_seconds
    elif all_seconds > 0:
        history.tokens_per_s = all_tokens / all_seconds
    history.train_seconds = timed_seconds
    history.peak_memory_mib = peak_memory_mib(device)
    return history
