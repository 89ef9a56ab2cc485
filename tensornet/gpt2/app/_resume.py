"""Exact resume: a checkpoint is resumed only by a run with the settings that wrote it (:func:`_resume`)."""

import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._checkpoint import load_checkpoint, summary
from ._config import TrainConfig

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
# signature names that are not "--" + the name with dashes
_FLAGS = {
    "model.n_positions": "--block-size",
    "model.vocab_size": "--vocab-size or --tokenizer",
    **dict.fromkeys(("model.resid_pdrop", "model.embd_pdrop", "model.attn_pdrop"), "--dropout"),
    "model.tensornet": "--rank, --shapes, --ncores, --layers, --no-bias, --embeddings, --embedding-rank or --lowrank",
    "corpus": "--data or --max-chars",
    "tokenizer": "--tokenizer or --vocab-size",
    "runtime.processes": "torchrun's --nproc-per-node",
}
_SAME = "Resume only with the settings it started with, or start a new run in another --out"


def _flag(name: str) -> str:  # train.lr -> --lr
    key = next((key for key in _FLAGS if name == key or name.startswith(key + ".")), None)
    return _FLAGS[key] if key else "--" + name.rpartition(".")[2].replace("_", "-")


def signature(cfg: TrainConfig, extra: dict | None, runtime: dict | None = None) -> dict:
    """What the log depends on, so must not change on resume: ``cfg`` but checkpoint_every, ``extra``, ``runtime``."""
    train_settings = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}
    return {"train": train_settings, **(extra or {}), **({"runtime": runtime} if runtime is not None else {})}


def runtime(device: torch.device | str, processes: int) -> dict:
    """The device type, process count and (on CPU) thread count: each changes the order of float sums."""
    device = torch.device(device)
    threads = {"threads": torch.get_num_threads()} if device.type == "cpu" else {}
    return {"device": device.type, "processes": processes, **threads}


def rng_state() -> dict:
    cuda = {"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {}
    return {"torch": torch.get_rng_state(), "python": random.getstate(), **cuda}


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:  # [dotted.name: checkpoint X, now Y (--flag)]
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new), key=str)
        return [d for k in keys for d in _diff(old.get(k, "<unset>"), new.get(k, "<unset>"), f"{prefix}{k}.")]
    name = prefix.rstrip(".")
    return [] if old == new else [f"{name}: checkpoint {old!r}, now {new!r} ({_flag(name)})"]


def _resume(path: Path, expected: dict, apply, *, verify: bool, only: bool = False) -> Any:
    """``apply`` to the checkpoint at ``path`` once its signature (``only``: ``expected``'s keys) matches."""
    if not os.path.lexists(path):
        stopped = (
            "the run there stopped before its first checkpoint; " if (path.parent / LOG).is_file() else ""
        )
        raise FileNotFoundError(
            f"--resume: no checkpoint at {str(path)!r}: {stopped}start it without --resume"
        )
    ckpt = load_checkpoint(path, "--resume", verify=verify)
    try:
        diff = _diff({k: ckpt["signature"].get(k) for k in expected} if only else ckpt["signature"], expected)
        why = f"was written by a run with different settings: {'; '.join(diff)}. {_SAME}" if diff else ""
        result = None if diff else apply(ckpt)
    except Exception as err:  # a file crafted with a valid checksum: whatever broke is said in one line
        why = f"is not a checkpoint this run can resume ({summary(err)})"
    if not why:
        return result
    if not verify:  # verified now, so that damage (rather than what it broke) is what the error says
        load_checkpoint(path, "--resume")
    raise ValueError(f"--resume: {str(path)!r} {why}")


def _load_state(ckpt: dict, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig):
    """Load ``ckpt`` into ``model``, ``optimizer`` (keeping this run's AdamW settings) and the RNGs."""
    step, loss = int(ckpt["step"]), [float(v) for v in ckpt["history"]["loss"]]
    if not 0 <= step == len(loss) <= cfg.steps:
        raise ValueError(f"its step {step} does not match its {len(loss)} losses and --steps {cfg.steps}")
    val = [(int(s), float(v)) for s, v in ckpt["history"]["val"]]
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)  # this run's settings (its signature matched), not the file's
    for param, state in optimizer.state.items():  # load_state_dict leaves a wrong shape to the first step
        if any(value.shape != param.shape for key, value in state.items() if key != "step"):
            raise ValueError(f"its optimizer state does not fit a parameter {tuple(param.shape)}")
    torch.set_rng_state(ckpt["rng"]["torch"])
    random.setstate(ckpt["rng"]["python"])
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    return step, loss, val


def check_resume(out: str | os.PathLike, cfg: TrainConfig, stop_at: int | None = None) -> None:
    """Before any work: ``out`` holds a checkpoint of a run with ``cfg``'s settings, not after ``stop_at``."""
    path = Path(out) / CHECKPOINT
    expected = {"train": signature(cfg, None)["train"]}
    step = _resume(path, expected, lambda ckpt: int(ckpt["step"]), verify=False, only=True)
    if stop_at is not None and stop_at < step:
        raise ValueError(f"--stop-at {stop_at} is before the checkpoint's step {step} in {str(path)!r}")


def check_checkpoint_fits(
    out: str | os.PathLike, model: nn.Module, optimizer, cfg: TrainConfig, described: dict, where=None
) -> int:
    """Before any tokens are read: :func:`restore` (unverified) ``out``'s checkpoint; its step."""
    path = Path(out) / CHECKPOINT
    return restore(path, signature(cfg, described, where), model, optimizer, cfg, verify=False)[0]


def restore(
    path: Path, expected: dict, model: nn.Module, optimizer, cfg: TrainConfig, *, verify: bool = True
) -> tuple[int, list[float], list[tuple[int, float]]]:
    """Load the checkpoint of a run with signature ``expected``; its step and history; ValueError naming it."""
    return _resume(path, expected, lambda ckpt: _load_state(ckpt, model, optimizer, cfg), verify=verify)
