"""The training loop: AdamW, linear warmup + cosine decay, gradient clipping, evaluation, atomic checkpoints,
exact resume (checkpoint and log) and DDP (started by ``torchrun``)."""

from __future__ import annotations

import contextlib
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

from . import _checkpoint, _files
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
    steps_run: int = 0  # optimizer steps this call ran (0: a resumed run that had already finished)

    @property
    def val_ppl(self) -> float:
        return _ppl(self.val[-1][1]) if self.val else float("nan")


def _ppl(loss: float) -> float:
    """Perplexity ``exp(loss)``, infinite rather than an OverflowError for a diverged model."""
    return math.exp(loss) if loss < 700 else float("inf")


def _env_int(name: str, default: int, lo: int) -> int:
    """An integer torchrun puts in the environment, checked (a hand-set ``WORLD_SIZE=0`` is an error)."""
    text = os.environ.get(name, "").strip() or str(default)
    try:
        value = int(text)
    except ValueError:
        value = lo - 1
    if value < lo:
        raise ValueError(
            f"the environment variable {name}={os.environ.get(name)!r} must be an integer >= {lo}; torchrun "
            f"sets it: unset it to run one process"
        )
    return value


class Distributed:
    """Process rank/world from torchrun's environment; ``init()`` starts the process group when world > 1."""

    def __init__(self) -> None:
        self.world = _env_int("WORLD_SIZE", 1, 1)
        self.rank = _env_int("RANK", 0, 0)
        self.local_rank = _env_int("LOCAL_RANK", 0, 0)
        if self.rank >= self.world:
            raise ValueError(
                f"the environment gives RANK={self.rank} but WORLD_SIZE={self.world} (ranks 0 to "
                f"{self.world - 1}); start the processes with torchrun, or unset RANK and WORLD_SIZE"
            )
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
    what = _files.not_a_file(path)
    if what is not None and what != "does not exist":
        raise ValueError(
            f"--resume: the checkpoint {str(path)!r} {what}; restore the file, or start the run over with "
            "--overwrite"
        )
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
    skeleton = _checkpoint.checkpoint_metadata(path, "--resume")["skeleton"]
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
        try:  # the file just written (a link put there since is not followed)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError as err:
            raise _files.write_error(path, err) from None
        self._file: IO[str] | None = os.fdopen(fd, "a", encoding="utf-8")

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


def _signature(cfg: TrainConfig, extra: dict | None) -> dict:
    """What must not change between a checkpoint and its resume: the optimisation settings that shape the
    losses (not eval/checkpoint frequency or compilation) and the caller's model/data description."""
    train_settings = asdict(cfg)
    for name in ("eval_every", "checkpoint_every", "compile"):
        train_settings.pop(name)
    return {"train": train_settings, **(extra or {})}


_CHECKPOINT_KEYS = ("model", "optimizer", "step", "history", "rng", "signature")
# AdamW settings that shape the updates, and the flags that set them (eps and the rest are fixed by the code)
_OPTIMIZER_SETTINGS = {
    "betas": "--beta1/--beta2",
    "weight_decay": "--weight-decay",
    "lr_scale": "--tt-lr-scale",
    "eps": "AdamW's eps",
    "amsgrad": "AdamW's amsgrad",
    "maximize": "AdamW's maximize",
}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_checkpoint(path: Path, ckpt: dict, model: nn.Module, optimizer, cfg: TrainConfig) -> None:
    """Everything in ``ckpt`` that ``_restore`` loads, against this run: the step (an integer in [0, steps])
    and its history, the model's tensor names, shapes and dtypes, the optimizer's groups (their AdamW
    settings must be this run's) and state shapes, the RNG states. Works on the real tensors or on the
    header's ``meta`` tensors (``checkpoint_outline``)."""

    def bad(why: str) -> ValueError:
        return ValueError(
            f"--resume: {str(path)!r} does not fit this run: {why}; resume with the settings that wrote it, or "
            "start a new run in another --out"
        )

    missing = [k for k in _CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"--resume: {str(path)!r} is not a tensornet training checkpoint (no {missing})")
    step = ckpt["step"]
    if not (isinstance(step, int) and not isinstance(step, bool) and 0 <= step <= cfg.steps):
        raise bad(f"its step {step!r} is not an integer in [0, --steps {cfg.steps}]")
    history = ckpt["history"]
    if not (isinstance(history, dict) and isinstance(history.get("loss"), list)):
        raise bad("it has no list of training losses")
    loss, val = history["loss"], history.get("val")
    if len(loss) != step or not all(_number(v) for v in loss):
        raise bad(f"it records {len(loss)} losses for step {step} (or losses that are not finite numbers)")
    if not (
        isinstance(val, list)
        and all(
            isinstance(e, (list, tuple))
            and len(e) == 2
            and _number(e[0])
            and isinstance(e[0], int)
            and _number(e[1])
            for e in val
        )
        and [e[0] for e in val] == sorted({e[0] for e in val})
        and all(1 <= e[0] <= step for e in val)
    ):
        raise bad("its evaluations are not (step, loss) pairs at increasing steps up to its step")
    state, own = ckpt["model"], model.state_dict()
    if not isinstance(state, dict) or set(state) != set(own):
        names = sorted(map(str, set(state) ^ set(own))) if isinstance(state, dict) else ["not a state dict"]
        raise bad(f"its model tensors differ from this model's ({', '.join(names[:5])})")
    for name, tensor in own.items():
        saved = state[name]
        if not (
            isinstance(saved, torch.Tensor) and saved.shape == tensor.shape and saved.dtype == tensor.dtype
        ):
            what = f"{tuple(saved.shape)} {saved.dtype}" if isinstance(saved, torch.Tensor) else type(saved)
            raise bad(f"its {name} is {what}, this model's is {tuple(tensor.shape)} {tensor.dtype}")
    opt = ckpt["optimizer"]
    groups = opt.get("param_groups") if isinstance(opt, dict) else None
    saved_state = opt.get("state") if isinstance(opt, dict) else None
    if not (isinstance(groups, list) and isinstance(saved_state, dict)):
        raise bad("its optimizer state is not AdamW's (param_groups and state)")
    if len(groups) != len(optimizer.param_groups):
        raise bad(
            f"its optimizer has {len(groups)} parameter groups, this run's {len(optimizer.param_groups)}"
        )
    params: dict[Any, torch.Tensor] = {}
    for i, (saved_group, group) in enumerate(zip(groups, optimizer.param_groups)):
        ids = saved_group.get("params") if isinstance(saved_group, dict) else None
        if not (isinstance(ids, list) and len(ids) == len(group["params"])):
            raise bad(f"its optimizer group {i} does not hold this run's {len(group['params'])} parameters")
        for key, flag in _OPTIMIZER_SETTINGS.items():
            if key in group and saved_group.get(key) != group[key]:
                raise bad(
                    f"its optimizer group {i} has {key} {saved_group.get(key)!r}, this run {group[key]!r} "
                    f"({flag})"
                )
        params.update(zip(ids, group["params"]))
    for key, entry in saved_state.items():
        param = params.get(key)
        if param is None or not isinstance(entry, dict):
            raise bad(f"its optimizer state {key!r} belongs to no parameter of this run")
        for name, value in entry.items():
            if name == "step":
                if not (_number(value) or (isinstance(value, torch.Tensor) and value.numel() == 1)):
                    raise bad(f"its optimizer state {key!r} has step {value!r}")
            elif not (
                isinstance(value, torch.Tensor) and value.shape == param.shape and value.is_floating_point()
            ):
                what = (
                    f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value)
                )
                raise bad(
                    f"its optimizer state {key!r} has {name} {what}, for a parameter of shape "
                    f"{tuple(param.shape)}"
                )
    rng = ckpt["rng"]
    if not (
        isinstance(rng, dict)
        and isinstance(rng.get("torch"), torch.Tensor)
        and rng["torch"].dtype == torch.uint8
        and rng["torch"].shape == torch.get_rng_state().shape
        and isinstance(rng.get("python"), tuple)
    ):
        raise bad("its random-number-generator states are not torch's and Python's")


def check_checkpoint_fits(
    out: str | os.PathLike, model: nn.Module, cfg: TrainConfig, signature: dict
) -> None:
    """Before any tokens are loaded: the checkpoint in ``out`` (its header: shapes and settings, no tensor data
    and no checksum) fits ``model`` and ``cfg`` and was written with ``signature``."""
    path = Path(out) / CHECKPOINT
    outline = _checkpoint.checkpoint_outline(path, "--resume")
    try:
        if not isinstance(outline.get("signature"), dict):
            raise ValueError(f"--resume: {str(path)!r} is not a tensornet training checkpoint (no settings)")
        mismatch = _signature_mismatch(path, outline["signature"], _signature(cfg, signature))
        if mismatch is not None:
            raise mismatch
        _check_checkpoint(path, outline, model, make_optimizer(model, cfg), cfg)
    except ValueError:
        _checkpoint.load_checkpoint(path, "--resume")  # damage rather than a mismatch: the checksum says so
        raise


def _restore(
    path: Path, signature: dict, model: nn.Module, optimizer, history: History, cfg: TrainConfig
) -> int:
    """Load ``path`` into the model, optimizer, history and RNGs; return the step to continue from. Everything
    is checked first (``_check_checkpoint``); the optimizer keeps this run's AdamW settings."""
    if not path.is_file():
        check_resume(path.parent)  # raises the right message (none there, or an old pickle checkpoint)
    ckpt = _checkpoint.load_checkpoint(path, "--resume")
    if not isinstance(ckpt.get("signature"), dict):
        raise ValueError(f"--resume: {str(path)!r} is not a tensornet training checkpoint (no settings)")
    mismatch = _signature_mismatch(path, ckpt["signature"], signature)
    if mismatch is not None:
        raise mismatch
    _check_checkpoint(path, ckpt, model, optimizer, cfg)
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        for group, own in zip(optimizer.param_groups, settings):
            group.update(own)  # this run's settings (checked equal above), not the file's
        _set_rng_state(ckpt["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"--resume: {str(path)!r} does not fit this run ({type(err).__name__}: {str(err)[:300]}); "
            "resume with the settings that wrote it, or start a new run in another --out"
        ) from None
    history.loss = [float(v) for v in ckpt["history"]["loss"]]
    history.val = [(int(s), float(v)) for s, v in ckpt["history"]["val"]]
    return ckpt["step"]


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
    check_tokens(train_ids, val_ids, cfg)
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
            start = _restore(ckpt_path, signature, model, optimizer, history, cfg)
            if stop_at is not None and stop_at < start:
                raise ValueError(f"--stop-at {stop_at} is before the checkpoint's step {start}")
        if folder is not None:
            log = RunLog(folder.path / LOG, cfg, history)
        autocast = device.type == "cuda"

        def checkpoint(step: int) -> None:
            if ckpt_path is not None and dist.main:
                _checkpoint.save_checkpoint(
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

        def run_eval(done: int) -> None:
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
            if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                run_eval(done)
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < end:
                checkpoint(done)
        if bar is not None:
            bar.close()
        if end > start:
            checkpoint(end)  # the trained state is safe before the final evaluation
        if end == cfg.steps and not (history.val and history.val[-1][0] == cfg.steps):
            run_eval(cfg.steps)
            checkpoint(end)  # again, with the evaluation in its history
        history.steps_run = max(end - start, 0)
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
