"""The training loop: AdamW, warmup + cosine decay, clipping, evaluation, checkpoints, exact resume, DDP."""

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
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from tensornet.nn import tt_parameters

from .. import LowRankLinear
from ..files import write_error
from . import _checkpoint, _resume, _runfolder
from ._config import TrainConfig
from ._data import check_windows, train_batch, val_batches
from ._distributed import Distributed, default_device


@dataclass
class History:
    """Per-step training loss, evaluations as (step, loss), throughput and peak memory."""

    loss: list[float] = field(default_factory=list)
    val: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = float("nan")
    peak_memory_mib: float = float("nan")

    @property
    def val_ppl(self) -> float:
        """The last validation perplexity (NaN before the first evaluation)."""
        return perplexity(self.val[-1][1]) if self.val else float("nan")


def perplexity(loss: float) -> float:
    """Perplexity ``exp(loss)``, infinite rather than an OverflowError for a diverged model."""
    return math.exp(loss) if loss < 700 else float("inf")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW, weight decay on dim >= 2; TT cores at ``cfg.tt_lr_scale``, low-rank factors at ``lowrank_lr_scale``.

    (A core's change moves ``W`` times the other cores: at the dense ``lr`` a TT weight learns slower.)
    """
    cores = [p for p in tt_parameters(model) if p.requires_grad]
    lowrank = [m for m in model.modules() if isinstance(m, LowRankLinear) and cfg.lowrank_lr_scale != 1.0]
    factors = [p for m in lowrank for p in (m.a, m.b) if p.requires_grad]
    ids = {id(p) for p in cores + factors}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    vectors = {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0}
    groups = [{"params": [p for p in rest if p.dim() >= 2], "lr_scale": 1.0}, vectors]
    scaled = ((cores, cfg.tt_lr_scale), (factors, cfg.lowrank_lr_scale))
    groups += [{"params": p, "lr_scale": s} for p, s in scaled if p]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)


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
    """Mean next-token loss (nats) over non-overlapping validation windows (under DDP, shared and all-reduced).

    Raises ValueError for no window of ``block_size`` tokens (or a ``max_tokens`` below one).
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


class _Run:
    """One call of :func:`train`: the model (its DDP/compiled form for the steps), optimizer, history and log."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, dist: Distributed, device, path, signature):
        self.model, self.cfg, self.dist, self.device = model, cfg, dist, device
        self.path, self.signature = path, signature  # the checkpoint's, and what it must match to resume
        self.optimizer = make_optimizer(model.to(device).train(), cfg)
        # seconds: each step's, in this call; log: log.jsonl once open_log opened it
        self.history, self.seconds, self.log = History(), cast(list[float], []), cast(Any, None)
        ids = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids) if dist.world > 1 else model
        self.forward = ddp if cfg.compile is None else torch.compile(ddp, mode=cfg.compile)

    def open_log(self, path: Path) -> Any:
        """``log.jsonl`` rewritten atomically from the history (so a resumed run's is an uninterrupted one's)."""
        evals, lines = dict(self.history.val), []
        for i, loss in enumerate(self.history.loss):  # through write, the file not yet open
            lines.append(self.write(i, loss))
            if i + 1 in evals:
                lines.append(self.write(i + 1, evals[i + 1], val=True))
        text = "".join(lines).encode("utf-8")
        _checkpoint.atomic_write(path, lambda f: f.write(text))
        # the file just written: a link put there since is not followed
        opener = lambda p, flags: os.open(p, flags | getattr(os, "O_NOFOLLOW", 0))  # noqa: E731
        self.log = open(path, "a", encoding="utf-8", opener=opener)  # noqa: SIM115  (closed by train)
        return self.log

    def write(self, step: int, loss: float, val: bool = False) -> str:
        """Log step ``step`` (0-based, written 1-based) or, ``val``, the evaluation after ``step``."""
        record = {"step": step + 1, "loss": loss, "lr": self.cfg.lr_at(step)}
        if val:
            record = {"step": step, "val_loss": loss, "val_ppl": perplexity(loss)}
        line = json.dumps(record) + "\n"
        if self.log is not None:
            try:
                self.log.write(line)
                self.log.flush()
            except OSError as err:
                raise write_error(Path(self.log.name), err) from None
        return line

    def step(self, step: int, train_ids: torch.Tensor) -> float:
        t0, cfg, dist, device = time.perf_counter(), self.cfg, self.dist, self.device
        set_lr(self.optimizer, cfg, step)
        batch = dict(batch_size=cfg.batch_size, block_size=cfg.block_size, rank=dist.rank, world=dist.world)
        x, y = train_batch(train_ids, step=step, seed=cfg.seed, **batch)
        loss = _loss(self.forward, x.to(device), y.to(device), device.type == "cuda")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
        self.optimizer.step()
        value = dist.sum([float(loss.detach())], device)[0] / dist.world
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step + 1}; lower --lr")
        self.history.loss.append(value)
        self.write(step, value)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.seconds.append(time.perf_counter() - t0)
        return value

    def evaluate(self, done: int, val_ids: torch.Tensor, on_eval: Callable | None) -> None:
        cfg, dist = self.cfg, self.dist
        val = evaluate(
            self.model, val_ids, block_size=cfg.block_size, batch_size=max(cfg.batch_size // dist.world, 1),
            max_tokens=cfg.eval_tokens or None, device=self.device, dist=dist,
        )  # fmt: skip
        self.history.val.append((done, val))
        self.write(done, val, val=True)
        if on_eval is not None and dist.main:
            on_eval(done, val)

    def checkpoint(self, step: int) -> None:
        if self.path is not None and self.dist.main:
            model, optimizer = self.model.state_dict(), self.optimizer.state_dict()
            history = {"loss": self.history.loss, "val": self.history.val}
            payload = {"model": model, "optimizer": optimizer, "step": step, "history": history}
            payload |= {"rng": _resume.rng_state(), "signature": self.signature}
            _checkpoint.save_checkpoint(self.path, payload)
        self.dist.barrier()

    def loop(self, start: int, end: int, train_ids, val_ids, on_step, on_eval) -> None:
        cfg, history = self.cfg, self.history
        for step in range(start, end):
            loss, done = self.step(step, train_ids), step + 1
            if on_step is not None and self.dist.main:
                on_step(done, loss)
            if done < cfg.steps and cfg.evaluates_at(done):
                self.evaluate(done, val_ids, on_eval)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < end:
                self.checkpoint(done)
        if end > start:
            self.checkpoint(end)  # the trained state is safe before the final evaluation
        if end == cfg.steps and not (history.val and history.val[-1][0] == cfg.steps):
            self.evaluate(cfg.steps, val_ids, on_eval)
            self.checkpoint(end)  # again, with the evaluation in its history
        # timed past the first two steps (allocation, compilation), unless the run is too short for that
        timed = self.seconds[2:] if sum(self.seconds[2:]) > 0 else self.seconds
        if sum(timed) > 0:
            history.tokens_per_s = cfg.batch_size * cfg.block_size * len(timed) / sum(timed)
        if self.device.type == "cuda":
            history.peak_memory_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:  # the process's peak resident set size
            history.peak_memory_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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

    Batches are a function of ``(cfg.seed, step)``, so ``resume=True`` continues ``out``'s checkpoint (whose
    ``signature`` must match) with the losses and log.jsonl of an uninterrupted run. ``out``: a run folder
    (opened and locked here) or the ``RunFolder`` the caller holds; ``stop_at`` ends early, as an interruption
    would. Under ``torchrun``: DDP, the first process writing the folder and calling back.

    Raises ValueError, before the first step, for bad settings, too few tokens or a checkpoint that does not fit.
    """
    cfg.check()
    if stop_at is not None and stop_at < 1:
        raise ValueError(f"train: stop_at must be >= 1, got {stop_at}")
    check_windows(train_ids, val_ids, cfg.block_size, cfg.eval_tokens)
    if resume and out is None:
        raise ValueError("--resume needs --out, the folder holding the checkpoint")
    dist = Distributed()
    if cfg.batch_size % dist.world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {dist.world} processes")
    device = torch.device(device) if device is not None else default_device(dist)
    if device.type == "cuda" and device.index is None:  # under torchrun each process takes its own GPU
        device = torch.device("cuda", dist.local_rank)
    folder = out if isinstance(out, _runfolder.RunFolder) else None
    path = out.path if isinstance(out, _runfolder.RunFolder) else None if out is None else Path(out)
    with contextlib.ExitStack() as held:
        if folder is None and path is not None and dist.main:  # else the caller holds it, or another process
            folder = held.enter_context(
                _runfolder.RunFolder.open(path, kind="train", resume=resume, overwrite=overwrite)
            )
        dist.init(device)
        checks = _resume.signature(cfg, signature, _resume.runtime(device, dist.world))
        run = _Run(model, cfg, dist, device, None if path is None else path / _resume.CHECKPOINT, checks)
        start = 0
        if resume:
            start, run.history.loss, run.history.val = _resume.restore(
                run.path, checks, model, run.optimizer, cfg
            )
            if stop_at is not None and stop_at < start:
                raise ValueError(f"--stop-at {stop_at} is before the checkpoint's step {start}")
        if folder is not None:
            held.enter_context(run.open_log(folder.path / _resume.LOG))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with warnings.catch_warnings():  # compiling traces through tensornet's plan caches (pure functions)
            warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
            end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
            run.loop(start, end, train_ids, val_ids, on_step, on_eval)
        return run.history
