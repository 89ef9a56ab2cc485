"""The training loop: AdamW, linear warmup + cosine decay, gradient clipping, evaluation, atomic checkpoints,
exact resume (checkpoint and log) and DDP (started by ``torchrun``)."""

from __future__ import annotations

import json
import math
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from torch import nn

from . import _files
from ._data import train_batch, val_batches

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINT = "checkpoint.pt"  # pickle, written by tensornet before 0.2: refused, never loaded
LOG = "log.jsonl"


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
        """Raise ValueError naming the first setting out of its range."""

        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"TrainConfig: {name} must be {rule}, got {getattr(self, name)!r}")

        for name in ("steps", "batch_size", "block_size"):
            if getattr(self, name) < 1:
                raise bad(name, ">= 1")
        for name in ("warmup", "eval_every", "checkpoint_every", "seed"):
            if getattr(self, name) < 0:
                raise bad(name, ">= 0")
        for name in ("weight_decay", "clip"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, ">= 0 and finite")
        for name in ("lr", "tt_lr_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "> 0 and finite")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "in [0, 1]")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "in [0, 1)")

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
        return _ppl(self.val[-1][1]) if self.val else float("nan")


def _ppl(loss: float) -> float:
    """Perplexity ``exp(loss)``, infinite rather than an OverflowError for a diverged model."""
    return math.exp(loss) if loss < 700 else float("inf")


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
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() < 2 and id(p) not in ids]
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


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The settings that differ between two signatures, as ``name: checkpoint X, now Y`` (nested names dotted)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key, "<unset>"), new.get(key, "<unset>"), f"{prefix}{key}.")
        return out
    if old == new:
        return []
    return [f"{prefix.rstrip('.')}: checkpoint {old!r}, now {new!r}"]


def _signature_mismatch(path: Path, old: Any, new: dict) -> ValueError | None:
    diff = _diff(old, new)
    if not diff:
        return None
    more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
    return ValueError(
        f"--resume: {str(path)!r} was written by a run with different settings: {'; '.join(diff[:5])}{more}. "
        "Resume with the original settings, or start a new run in another --out"
    )


def check_resume(out: str | os.PathLike, cfg: TrainConfig | None = None, stop_at: int | None = None) -> None:
    """Cheap checks before any data is loaded: ``out`` holds a tensornet checkpoint (format and version; the
    checksum is verified when ``train`` loads it), written with the same optimisation settings as ``cfg``
    (when given), at a step not after ``stop_at``."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        legacy = Path(out) / LEGACY_CHECKPOINT
        if legacy.is_file():
            raise ValueError(f"--resume: {str(legacy)!r} is a pickle checkpoint: {_files.PICKLE_NOTE}")
        if (Path(out) / LOG).is_file():  # a run killed before its first checkpoint
            raise FileNotFoundError(
                f"--resume: no checkpoint at {str(path)!r}: the run there stopped before its first checkpoint; "
                "start it over with --overwrite"
            )
        raise FileNotFoundError(f"--resume: no checkpoint at {str(path)!r}; run without --resume to start")
    skeleton = _files.checkpoint_metadata(path, "--resume")["skeleton"]
    if not isinstance(skeleton, dict) or not isinstance(skeleton.get("signature"), dict):
        raise ValueError(f"--resume: {str(path)!r} is not a tensornet training checkpoint (no settings)")
    if cfg is not None:
        now = {"train": _signature(cfg, None)["train"]}
        err = _signature_mismatch(path, {"train": skeleton["signature"].get("train")}, now)
        if err is not None:
            raise err
    step = skeleton.get("step")
    if stop_at is not None and isinstance(step, int) and stop_at < step:
        raise ValueError(f"--stop-at {stop_at} is before the checkpoint's step {step} in {str(path)!r}")


class RunLog:
    """``log.jsonl``: one line per optimizer step (``step``, ``loss``, ``lr``) and per evaluation (``step``,
    ``val_loss``, ``val_ppl``), numbers only (no timings), so a run resumed from a checkpoint has exactly the
    log of an uninterrupted one: opening it rewrites it, atomically, from the checkpoint's history."""

    def __init__(self, path: Path, cfg: TrainConfig, history: History) -> None:
        self.path, self.cfg = path, cfg
        lines = []
        evals = dict(history.val)
        for i, loss in enumerate(history.loss):
            lines.append(self._step(i, loss))
            if i + 1 in evals:
                lines.append(self._eval(i + 1, evals[i + 1]))
        _files.write_text(path, "".join(lines))
        self._file: IO[str] | None = path.open("a", encoding="utf-8")

    def _step(self, step: int, loss: float) -> str:
        return json.dumps({"step": step + 1, "loss": loss, "lr": self.cfg.lr_at(step)}) + "\n"

    @staticmethod
    def _eval(step: int, loss: float) -> str:
        return json.dumps({"step": step, "val_loss": loss, "val_ppl": _ppl(loss)}) + "\n"

    def step(self, step: int, loss: float) -> None:
        """Log optimizer step ``step`` (0-based, written 1-based like the evaluations)."""
        self._write(self._step(step, loss))

    def eval(self, step: int, loss: float) -> None:
        self._write(self._eval(step, loss))

    def _write(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def peak_memory_mib(device: torch.device) -> float:
    """Peak allocated CUDA memory, or on CPU the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _signature(cfg: TrainConfig, extra: dict | None) -> dict:
    """What must not change between a checkpoint and its resume: the optimisation settings that shape the
    losses (not eval/checkpoint frequency or compilation) and the caller's model/data description."""
    train_settings = asdict(cfg)
    for name in ("eval_every", "checkpoint_every", "compile"):
        train_settings.pop(name)
    return {"train": train_settings, **(extra or {})}


_CHECKPOINT_KEYS = ("model", "optimizer", "step", "history", "rng", "signature")


def _restore(path: Path, signature: dict, model: nn.Module, optimizer, history: History) -> int:
    """Load ``path`` into the model, optimizer, history and RNGs; return the step to continue from."""
    if not path.is_file():
        check_resume(path.parent)  # raises the right message (none there, or an old pickle checkpoint)
    ckpt = _files.load_checkpoint(path, "--resume")
    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"--resume: {str(path)!r} is not a tensornet training checkpoint (no {missing})")
    mismatch = _signature_mismatch(path, ckpt["signature"], signature)
    if mismatch is not None:
        raise mismatch
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = ckpt["step"]
        loss = [float(v) for v in ckpt["history"]["loss"]]
        val = [(int(s), float(v)) for s, v in ckpt["history"]["val"]]
        if not isinstance(start, int) or len(loss) != start:
            raise ValueError(f"step {start!r} with {len(loss)} recorded losses")
        _set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"--resume: {str(path)!r} does not fit this run ({type(err).__name__}: {str(err)[:300]}); "
            "resume with the settings that wrote it, or start a new run in another --out"
        ) from None
    history.loss, history.val = loss, val
    return start


def train(
    model: nn.Module,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    cfg: TrainConfig,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    stop_at: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    signature: dict | None = None,
    on_eval: Callable[[int, float], None] | None = None,
) -> History:
    """Train ``model`` in place for ``cfg.steps`` optimizer steps and return its ``History``.

    Batch ``s`` is a pure function of ``(cfg.seed, s)`` (``train_batch``), and checkpoints hold the model,
    optimizer, step, history and RNG states, so ``resume=True`` continues from ``out/checkpoint.safetensors``
    with exactly the losses of an uninterrupted run. ``stop_at`` ends (with a checkpoint) after that many
    steps, as an interruption would. ``signature`` (model and data description) must match the checkpoint's
    on resume.

    ``out`` is a run folder (see ``_files.RunFolder``): new or empty, or one this package wrote; it is locked
    for the run. A folder holding a previous run is refused unless ``resume`` (continue it) or ``overwrite``
    (replace the package's files in it; other files are kept). ``out/log.jsonl`` gets one line per step and
    per evaluation; on resume it is rewritten from the checkpoint, so it always equals an uninterrupted run's.
    Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DDP and each process takes its slice of the
    same global batch; rank 0 writes the folder.
    """
    cfg.check()
    if stop_at is not None and stop_at < 1:
        raise ValueError(f"train: stop_at must be >= 1, got {stop_at}")
    if resume and out is None:
        raise ValueError("--resume needs --out, the folder holding the checkpoint")
    dist = Distributed()
    device = torch.device(device) if device is not None else default_device(dist)
    if device.type == "cuda" and device.index is None:  # under torchrun each process takes its own GPU
        device = torch.device("cuda", dist.local_rank)
    out_dir = Path(out) if out is not None else None
    ckpt_path = out_dir / CHECKPOINT if out_dir is not None else None
    signature = _signature(cfg, signature)
    folder = None
    if out_dir is not None and dist.main:
        folder = _files.RunFolder.open(out_dir, kind="train", resume=resume, overwrite=overwrite)
    log = None
    try:
        dist.init(device)
        model.to(device)
        model.train()
        optimizer = make_optimizer(model, cfg)
        history, start = History(), 0
        if resume and ckpt_path is not None:  # (resume without out was refused above)
            start = _restore(ckpt_path, signature, model, optimizer, history)
            if stop_at is not None and stop_at < start:
                raise ValueError(f"--stop-at {stop_at} is before the checkpoint's step {start}")
        if folder is not None:
            log = RunLog(folder.path / LOG, cfg, history)
        autocast = device.type == "cuda"

        def checkpoint(step: int) -> None:
            if ckpt_path is not None and dist.main:
                _files.save_checkpoint(
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
            if log is not None:
                log.step(step, loss_value)
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
                if log is not None:
                    log.eval(done, val)
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
    finally:
        if log is not None:
            log.close()
        if folder is not None:
            folder.close()
