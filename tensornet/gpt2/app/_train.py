"""The training loop.

AdamW, linear warmup + cosine decay, gradient clipping, evaluation, atomic checkpoints, exact resume
(checkpoint and log) and DDP (started by ``torchrun``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .. import files as _files
from . import _checkpoint, _resume, _runfolder
from ._config import TrainConfig
from ._data import train_batch, val_batches
from ._distributed import Distributed, default_device

# torch.compile warns when it traces through a functools.lru_cache; tensornet's caches map core shapes to plans
# (pure functions of their arguments), so tracing through them gives the same graph: silenced while compiling
DYNAMO_CACHE_WARNING = "Dynamo detected a call to a `functools.lru_cache`"


@dataclass
class History:
    """Per-step training loss, evaluations as (step, loss), throughput and peak memory."""

    loss: list[float] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = float("nan")
    peak_memory_mib: float = float("nan")
    train_seconds: float = 0.0
    steps_run: int = 0  # optimizer steps this call ran (0: a resumed run that had already finished)
    # the machine's 1-minute load average while it trained (mean over the steps): is tokens_per_s an idle speed?
    load_average: float = float("nan")

    @property
    def val_ppl(self) -> float:
        """The last validation perplexity (NaN before the first evaluation)."""
        return perplexity(self.val[-1][1]) if self.val else float("nan")


def perplexity(loss: float) -> float:
    """Perplexity ``exp(loss)``, infinite rather than an OverflowError for a diverged model."""
    return math.exp(loss) if loss < 700 else float("inf")


def busy(load: float | None, cores: int | None = None) -> bool:
    """Whether a 1-minute load average ``load`` means a busy machine: more runnable threads than cores.

    Then a run's threads waited for other processes' and a speed measured meanwhile is below the idle one.
    ``cores``: the machine's (``os.cpu_count()``), as the load average counts the whole machine.
    """
    cores = cores or os.cpu_count() or 1
    return load is not None and math.isfinite(load) and load > cores + 0.5


def load_note(load: float | None, cores: int | None = None) -> str:
    """``measured while the machine was busy (...)`` for a speed measured under ``load``; "" when idle."""
    cores = cores or os.cpu_count() or 1
    if load is None or not busy(load, cores):
        return ""
    return f"measured while the machine was busy (load average {load:.1f} on {cores} cores)"


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and TT cores (dim >= 2), none on biases and LayerNorm.

    The TT cores (:func:`tensornet.nn.tt_parameters`) form their own group whose learning rate is
    ``cfg.tt_lr_scale`` times the schedule's: Adam moves every entry by about ``lr`` per step, and a
    change of one core moves the product ``W`` by that change times the other cores, so at the dense
    model's ``lr`` a TT weight learns several times slower. The low-rank baseline's two factors
    (:class:`LowRankLinear`) are such a product too: with ``cfg.lowrank_lr_scale`` other than 1 they form
    a group of their own at that multiple (at 1 they stay in the dense group, as in runs from before the
    setting, whose checkpoints keep resuming). Both multipliers are per-model hyperparameters: for
    ``compare``'s model the cores were best at 3x-5x (perplexity 56% above dense at 1x, 9% below at 5x) and
    the factors at 4x-9x (about 8% lower perplexity than at 1x, averaged over seeds; their runs are erratic),
    see benchmarks/results/gpt2_compare_cpu.md, while notebook 04's smaller TTM model is best at 1x. AdamW's
    decoupled decay is ``lr * weight_decay``, so a group's decay is scaled by its multiplier too (as in the
    measured runs).
    """
    from tensornet.nn import tt_parameters

    from .. import LowRankLinear

    cores = [p for p in tt_parameters(model) if p.requires_grad]
    factors: list[nn.Parameter] = []
    if cfg.lowrank_lr_scale != 1.0:
        lowrank = (m for m in model.modules() if isinstance(m, LowRankLinear))
        factors = [p for m in lowrank for p in (m.a, m.b) if p.requires_grad]
    ids = {id(p) for p in cores + factors}
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2 and id(p) not in ids]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2 and id(p) not in ids]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": rest, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    if cores:
        groups.append({"params": cores, "weight_decay": cfg.weight_decay, "lr_scale": cfg.tt_lr_scale})
    if factors:
        groups.append({"params": factors, "weight_decay": cfg.weight_decay, "lr_scale": cfg.lowrank_lr_scale})
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

    Under DDP each process takes every ``world``-th window and the sums are all-reduced.
    """
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


class RunLog:
    """``log.jsonl``: one line per optimizer step and per evaluation, numbers only (no timings).

    A step's line holds ``step``, ``loss``, ``lr``; an evaluation's ``step``, ``val_loss``, ``val_ppl``.
    With no timings, a run resumed from a checkpoint has exactly the log of an uninterrupted one: opening it
    rewrites it, atomically, from the checkpoint's history.
    """

    def __init__(self, path: Path, cfg: TrainConfig, history: History) -> None:
        self.path, self.cfg = path, cfg
        lines = []
        evals = dict(history.val)
        for i, loss in enumerate(history.loss):
            lines.append(self._step(i, loss))
            if i + 1 in evals:
                lines.append(self._eval(i + 1, evals[i + 1]))
        text = "".join(lines).encode("utf-8")
        _files.atomic_write(path, lambda f: f.write(text))
        try:  # the file just written (a link put there since is not followed)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            raise _files.write_error(path, err) from None
        self._file: IO[str] | None = os.fdopen(fd, "a", encoding="utf-8")

    def _step(self, step: int, loss: float) -> str:
        return json.dumps({"step": step + 1, "loss": loss, "lr": self.cfg.lr_at(step)}) + "\n"

    @staticmethod
    def _eval(step: int, loss: float) -> str:
        return json.dumps({"step": step, "val_loss": loss, "val_ppl": perplexity(loss)}) + "\n"

    def step(self, step: int, loss: float) -> None:
        """Log optimizer step ``step`` (0-based, written 1-based like the evaluations)."""
        self._write(self._step(step, loss))

    def eval(self, step: int, loss: float) -> None:
        self._write(self._eval(step, loss))

    def _write(self, line: str) -> None:
        if self._file is not None:
            try:
                self._file.write(line)
                self._file.flush()
            except OSError as err:
                raise _files.write_error(self.path, err) from None

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # every line was flushed (or its failure reported) already
                self._file.close()
            self._file = None


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated CUDA memory, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_tokens(train_ids: torch.Tensor, val_ids: torch.Tensor, cfg: TrainConfig) -> None:
    """Enough tokens for ``cfg.block_size``, checked before step 1 (not at the first or final evaluation)."""
    block = cfg.block_size
    if train_ids.numel() < block + 2:
        raise ValueError(
            f"the training text has {train_ids.numel():,} tokens; --block-size {block} needs at least "
            f"{block + 2:,}: give more text (--data, --max-chars) or a smaller --block-size"
        )
    if val_ids.numel() < block + 1:
        raise ValueError(
            f"the validation text has {val_ids.numel():,} tokens; --block-size {block} needs at least "
            f"{block + 1:,}: give more text (--data, --max-chars) or a smaller --block-size"
        )
    if 0 < cfg.eval_tokens < block:
        raise ValueError(
            f"--eval-tokens {cfg.eval_tokens} is fewer than one window of --block-size {block}; give 0 (all) "
            "or at least the block size"
        )


class _Run:
    """One call of :func:`train`: the model (and its DDP/compiled forms), optimizer, history, log and folder."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, dist: Distributed, device: torch.device) -> None:
        self.raw, self.cfg, self.dist, self.device = model, cfg, dist, device
        model.to(device)
        model.train()
        self.optimizer = make_optimizer(model, cfg)
        self.history = History()
        self.log: RunLog | None = None
        self.checkpoint_path: Path | None = None
        self.signature: dict = {}
        self.timed_tokens, self.timed_seconds = 0, 0.0  # after the first steps (allocators, compilation)
        self.all_tokens, self.all_seconds = 0, 0.0  # every step: for runs too short to skip the first ones
        self.loads: list[float] = []  # the 1-minute load average at every step
        wrapped = model
        if dist.world > 1:
            wrapped = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.wrapped = wrapped
        self.step_model = wrapped if cfg.compile is None else torch.compile(wrapped, mode=cfg.compile)

    def step(self, step: int, train_ids: torch.Tensor, first_timed: int) -> float:
        """Optimizer step ``step`` (0-based): the loss of its batch, averaged over the processes."""
        t0 = time.perf_counter()
        cfg, dist, device = self.cfg, self.dist, self.device
        set_lr(self.optimizer, cfg, step)
        batch = dict(batch_size=cfg.batch_size, block_size=cfg.block_size, rank=dist.rank, world=dist.world)
        x, y = train_batch(train_ids, step=step, seed=cfg.seed, **batch)
        with warnings.catch_warnings():
            if cfg.compile is not None:
                warnings.filterwarnings("ignore", message=DYNAMO_CACHE_WARNING)
            loss = _loss(self.step_model, x.to(device), y.to(device), device.type == "cuda")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            nn.utils.clip_grad_norm_(self.wrapped.parameters(), cfg.clip)
        self.optimizer.step()
        (value,) = dist.sum([float(loss.detach())], device)
        value /= dist.world
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step + 1}; lower --lr")
        self.history.loss.append(value)
        if self.log is not None:
            self.log.step(step, value)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, tokens = time.perf_counter() - t0, cfg.batch_size * cfg.block_size
        if hasattr(os, "getloadavg"):
            self.loads.append(os.getloadavg()[0])
        self.all_seconds, self.all_tokens = self.all_seconds + seconds, self.all_tokens + tokens
        if step >= first_timed:
            self.timed_seconds, self.timed_tokens = self.timed_seconds + seconds, self.timed_tokens + tokens
        return value

    def evaluate(
        self, done: int, val_ids: torch.Tensor, on_eval: Callable[[int, float], None] | None
    ) -> None:
        cfg = self.cfg
        batch = max(cfg.batch_size // self.dist.world, 1)
        tokens = cfg.eval_tokens or None
        val = evaluate(
            self.raw, val_ids, block_size=cfg.block_size, batch_size=batch, max_tokens=tokens,
            device=self.device, dist=self.dist,
        )  # fmt: skip
        self.history.val.append((done, val))
        if self.log is not None:
            self.log.eval(done, val)
        if on_eval is not None and self.dist.main:
            on_eval(done, val)

    def checkpoint(self, step: int) -> None:
        if self.checkpoint_path is not None and self.dist.main:
            payload = {
                "model": self.raw.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "step": step,
                "history": {"loss": self.history.loss, "val": self.history.val},
                "rng": _resume.rng_state(),
                "signature": self.signature,
            }
            _checkpoint.save_checkpoint(self.checkpoint_path, payload)
        self.dist.barrier()

    def open(self, out, folder, described: dict | None, *, resume: bool, stop_at: int | None) -> int:
        """Where the run checkpoints and logs; on ``resume`` the checkpoint restored. Returns the first step."""
        self.signature = _resume.signature(self.cfg, described, _resume.runtime(self.device, self.dist.world))
        start = 0
        if out is not None:
            self.checkpoint_path = Path(out) / _resume.CHECKPOINT
        if resume and self.checkpoint_path is not None:
            path, model, optimizer = self.checkpoint_path, self.raw, self.optimizer
            start, self.history.loss, self.history.val = _resume.restore(
                path, self.signature, model, optimizer, self.cfg
            )
            if stop_at is not None and stop_at < start:
                raise ValueError(f"--stop-at {stop_at} is before the checkpoint's step {start}")
        if folder is not None:
            self.log = RunLog(folder.path / _resume.LOG, self.cfg, self.history)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return start

    def loop(self, start: int, end: int, train_ids, val_ids, on_step, on_eval) -> None:
        """Steps ``start`` to ``end`` (0-based), evaluating and checkpointing on the way.

        The final evaluation runs when the run reaches its last step.
        """
        cfg = self.cfg
        for step in range(start, end):
            loss = self.step(step, train_ids, first_timed=start + 2)
            done = step + 1
            if on_step is not None and self.dist.main:
                on_step(done, loss)
            if done < cfg.steps and cfg.evaluates_at(done):
                self.evaluate(done, val_ids, on_eval)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < end:
                self.checkpoint(done)
        if end > start:
            self.checkpoint(end)  # the trained state is safe before the final evaluation
        if end == cfg.steps and not (self.history.val and self.history.val[-1][0] == cfg.steps):
            self.evaluate(cfg.steps, val_ids, on_eval)
            self.checkpoint(end)  # again, with the evaluation in its history

    def summarize(self, steps_run: int) -> History:
        history = self.history
        history.steps_run = steps_run
        if self.timed_seconds > 0:
            history.tokens_per_s = self.timed_tokens / self.timed_seconds
        elif self.all_seconds > 0:
            history.tokens_per_s = self.all_tokens / self.all_seconds
        history.train_seconds = self.timed_seconds
        history.peak_memory_mib = peak_memory_mib(self.device)
        if self.loads:
            history.load_average = sum(self.loads) / len(self.loads)
        return history


def train(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    *,
    out: str | os.PathLike | _runfolder.RunFolder | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    device: torch.device | str | None = None,
    signature: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> History:
    """Train ``model`` in place for ``cfg.steps`` optimizer steps and return its ``History``.

    Batch ``s`` is a pure function of ``(cfg.seed, s)`` (``train_batch``), and checkpoints hold the model,
    optimizer, step, history and RNG states, so ``resume=True`` continues from ``out/checkpoint.pt``
    with exactly the losses of an uninterrupted run. ``stop_at`` ends (with a checkpoint) after that many
    steps, as an interruption would. ``signature`` (model and data description) must match the checkpoint's
    on resume. ``on_step(step, loss)`` and ``on_eval(step, loss)`` are called after every step and evaluation
    (steps counted from 1; under DDP in the first process only), e.g. for a progress bar.

    ``out`` is a run folder: new or empty, or one this package wrote; it is locked for the run (a caller that
    holds it already, as the CLI does, passes its ``RunFolder``). A folder holding a previous run is refused unless ``resume`` (continue it) or ``overwrite``
    (replace the package's files in it; other files are kept). ``out/log.jsonl`` gets one line per step and
    per evaluation; on resume it is rewritten from the checkpoint, so it always equals an uninterrupted run's.
    Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DDP and each process takes its slice of the
    same global batch; rank 0 writes the folder.
    """
    cfg.check()
    if stop_at is not None and stop_at < 1:
        raise ValueError(f"train: stop_at must be >= 1, got {stop_at}")
    check_tokens(train_ids, val_ids, cfg)
    if resume and out is None:
        raise ValueError("--resume needs --out, the folder holding the checkpoint")
    dist = Distributed()
    device = torch.device(device) if device is not None else default_device(dist)
    if device.type == "cuda" and device.index is None:  # under torchrun each process takes its own GPU
        device = torch.device("cuda", dist.local_rank)
    folder = out if isinstance(out, _runfolder.RunFolder) else None
    path = folder.path if folder is not None else None if out is None else Path(cast(str, out))
    opened = False  # the caller may hold the folder; other processes of a DDP run hold none
    if folder is None and path is not None and dist.main:
        folder, opened = (
            _runfolder.RunFolder.open(path, kind="train", resume=resume, overwrite=overwrite),
            True,
        )
    run = None
    try:
        dist.init(device)
        run = _Run(model, cfg, dist, device)
        start = run.open(path, folder, signature, resume=resume, stop_at=stop_at)
        end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
        run.loop(start, end, train_ids, val_ids, on_step, on_eval)
        return run.summarize(max(end - start, 0))
    finally:
        if run is not None and run.log is not None:
            run.log.close()
        if opened and folder is not None:
            folder.close()
