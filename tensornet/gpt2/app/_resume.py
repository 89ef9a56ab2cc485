"""Exact resume: what a checkpoint must match, and the restore itself.

A checkpoint must match the run's settings, the model and the optimizer: checked before any data is loaded
(:func:`check_resume`, :func:`check_checkpoint_fits`) and again on the verified file (:func:`restore`).
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import files as _files
from . import _checkpoint
from ._checkpoint import check_layout
from ._config import TrainConfig

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
# signature names that are not "--" + the name with dashes
_FLAGS = {
    "model.n_positions": "--block-size",
    "model.vocab_size": "--vocab-size or --tokenizer",
    "model.resid_pdrop": "--dropout",
    "model.embd_pdrop": "--dropout",
    "model.attn_pdrop": "--dropout",
    "model.tensornet": "--rank, --shapes, --ncores, --layers, --no-bias, --embeddings, --embedding-rank or --lowrank",
    "corpus": "--data or --max-chars",
    "tokenizer": "--tokenizer or --vocab-size",
    "runtime.device": "--device",
    "runtime.threads": "--threads",
    "runtime.processes": "torchrun's --nproc-per-node",
}


def _flag(name: str) -> str:
    """The command-line flag that sets the signature entry ``name`` (``train.lr`` -> ``--lr``)."""
    for key, flag in _FLAGS.items():
        if name == key or name.startswith(key + "."):
            return flag
    return "--" + name.rpartition(".")[2].replace("_", "-")


def signature(cfg: TrainConfig, extra: dict | None, runtime: dict | None = None) -> dict:
    """What the log depends on, so must not change on resume: ``cfg`` but checkpoint_every, ``extra``, ``runtime``."""
    train_settings = asdict(cfg)
    train_settings.pop("checkpoint_every")
    return {"train": train_settings, **(extra or {}), **({"runtime": runtime} if runtime is not None else {})}


def runtime(device: torch.device | str, processes: int) -> dict:
    """The device type, process count and (on CPU) thread count: each changes the order of float sums."""
    device = torch.device(device)
    out: dict[str, Any] = {"device": device.type, "processes": processes}
    if device.type == "cpu":
        out["threads"] = torch.get_num_threads()
    return out


# AdamW settings that shape the updates, and the flags that set them (eps and the rest are fixed by the code)
_OPTIMIZER_SETTINGS = {
    "betas": "--beta1/--beta2",
    "weight_decay": "--weight-decay",
    "lr_scale": "--tt-lr-scale or --lowrank-lr-scale",
    "eps": "AdamW's eps",
    "amsgrad": "AdamW's amsgrad",
    "maximize": "AdamW's maximize",
}


def _check_fits(
    path: Path, ckpt: dict, expected: dict, model: nn.Module, optimizer, cfg: TrainConfig
) -> None:
    """Everything in ``ckpt`` that ``restore`` loads, against this run's ``expected`` signature and objects."""
    mismatch = _signature_mismatch(path, ckpt["signature"], expected)
    if mismatch is not None:
        raise mismatch
    for why in (
        _history_fault(ckpt["step"], ckpt["history"], cfg),
        _model_fault(ckpt["model"], model),
        _optimizer_fault(ckpt["optimizer"], optimizer),
    ):
        if why is not None:
            raise ValueError(
                f"--resume: {str(path)!r} does not fit this run: {why}; resume with the settings that wrote "
                "it, or start a new run in another --out"
            )


def _history_fault(step: int, history: dict, cfg: TrainConfig) -> str | None:
    """What is wrong with a checkpoint's step and history (None: nothing); their types are ``check_layout``'s."""
    if step > cfg.steps:
        return f"its step {step} is after --steps {cfg.steps}"
    loss, steps = history["loss"], [s for s, _ in history["val"]]
    if len(loss) != step or not all(math.isfinite(v) for v in [*loss, *(v for _, v in history["val"])]):
        return f"it records {len(loss)} losses for step {step} (or losses that are not finite numbers)"
    if not (steps == sorted(set(steps)) and all(1 <= s <= step for s in steps)):
        return "its evaluations are not (step, loss) pairs at increasing steps up to its step"
    return None


def _model_fault(state: dict, model: nn.Module) -> str | None:
    """What is wrong with a checkpoint's model tensors for ``model`` (names, shapes, dtypes); None: nothing."""
    # TT layers' core shapes: absent from checkpoints saved before they were recorded
    own = {k: v for k, v in model.state_dict().items() if k in state or not k.endswith("._extra_state")}
    if set(state) != set(own):
        return f"its model tensors differ from this model's ({', '.join(sorted(set(state) ^ set(own))[:5])})"
    for name, tensor in own.items():
        saved = state[name]
        if saved.shape != tensor.shape or saved.dtype != tensor.dtype:
            return f"its {name} is {tuple(saved.shape)} {saved.dtype}, this model's is {tuple(tensor.shape)} {tensor.dtype}"
    return None


def _optimizer_fault(opt: dict, optimizer: torch.optim.Optimizer) -> str | None:
    """What is wrong with a checkpoint's AdamW state for ``optimizer`` (None: nothing)."""
    groups, own = opt["param_groups"], optimizer.param_groups
    if len(groups) != len(own):
        return f"its optimizer has {len(groups)} parameter groups, this run's {len(own)}"
    params: dict[int, torch.Tensor] = {}
    for i, (saved, group) in enumerate(zip(groups, own)):
        if len(saved["params"]) != len(group["params"]):
            return f"its optimizer group {i} does not hold this run's {len(group['params'])} parameters"
        for key, flag in _OPTIMIZER_SETTINGS.items():
            if key in group and saved.get(key) != group[key]:
                return (
                    f"its optimizer group {i} has {key} {saved.get(key)!r}, this run {group[key]!r} ({flag})"
                )
        params.update(zip(saved["params"], group["params"]))
    for key, entry in opt["state"].items():
        if key not in params:
            return f"its optimizer state {key!r} belongs to no parameter of this run"
        for name, value in entry.items():
            if name == "step" and not (
                value.numel() == 1 if isinstance(value, torch.Tensor) else math.isfinite(value)
            ):
                return f"its optimizer state {key!r} has step {_checkpoint.shown(value)}"
            if name != "step" and not (
                isinstance(value, torch.Tensor)
                and value.shape == params[key].shape
                and value.is_floating_point()
            ):
                what = (
                    f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else "a number"
                )
                return f"its optimizer state {key!r} has {name} {what}, for a parameter of shape {tuple(params[key].shape)}"
    return None


def check_checkpoint_fits(
    out: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    described: dict,
    where: dict | None = None,
) -> int:
    """Before any tokens are loaded: check the checkpoint in ``out`` against this run; return its step.

    It must fit ``model``, ``optimizer`` and ``cfg`` and have been written by a run ``described`` so (its model
    and data) and, when given, computing ``where`` (:func:`runtime`). The checksum is verified only when
    something does not fit (damage, not a mismatch, is then what the error says).
    """
    path = Path(out) / CHECKPOINT
    ckpt = _checkpoint.load_checkpoint(path, "--resume", check_layout, verify=False)
    try:
        _check_fits(path, ckpt, signature(cfg, described, where), model, optimizer, cfg)
    except ValueError:
        _checkpoint.load_checkpoint(path, "--resume", check_layout)
        raise
    return int(ckpt["step"])


def restore(
    path: Path, expected: dict, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> tuple[int, list[float], list[tuple[int, float]]]:
    """Load ``path`` into the model, optimizer and RNGs; return the step to continue from and the history.

    The file is verified and checked against the ``expected`` signature first; the optimizer keeps this run's
    AdamW settings.
    """
    if not path.is_file():
        check_resume(path.parent)  # raises the right message (none there, or not a file)
    ckpt = _checkpoint.load_checkpoint(path, "--resume", check_layout)
    _check_fits(path, ckpt, expected, model, optimizer, cfg)
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
    loss = [float(v) for v in ckpt["history"]["loss"]]
    return ckpt["step"], loss, [(int(s), float(v)) for s, v in ckpt["history"]["val"]]


def rng_state() -> dict:
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
    """The settings that differ between two signatures, as ``dotted.name: checkpoint X, now Y (--flag)``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key, "<unset>"), new.get(key, "<unset>"), f"{prefix}{key}.")
        return out
    if old == new:
        return []
    name = prefix.rstrip(".")
    if name == "train.compile":  # absent: an eager run
        old, new = ("eager" if v in ("<unset>", None) else repr(v) for v in (old, new))
        return [f"{name}: checkpoint {old}, now {new} ({_flag(name)})"]
    return [f"{name}: checkpoint {old!r}, now {new!r} ({_flag(name)})"]


# why a setting that differs cannot change on resume (the first entry whose settings differ says it)
_WHY: dict[str | tuple[str, ...], str] = {
    "train.steps:": "--steps fixes the learning-rate schedule (warmup, then cosine to its end), so a run cannot "
    "be lengthened: resume with the original --steps, or start a longer run in another --out",
    "train.compile:": "compiled and eager steps round differently, so a run resumes with the --compile mode it "
    "started with; or start a new run in another --out",
    "runtime.": "the device, the number of processes and the CPU thread count each change the order of "
    "floating-point sums, so a run resumes exactly (its log that of an uninterrupted run) only where it "
    "started: resume with those settings, or start a new run in another --out",
    ("train.eval_every:", "train.eval_at:"): "the log has a line per evaluation, so a run resumes with the "
    "evaluations it started with (its log that of an uninterrupted run); or start a new run in another --out",
}


def _signature_mismatch(path: Path, old: Any, new: dict) -> ValueError | None:
    diff = _diff(old, new)
    if not diff:
        return None
    more = f" (and {len(diff) - 5} more)" if len(diff) > 5 else ""
    hint = next(
        (why for key, why in _WHY.items() if any(line.startswith(key) for line in diff)),
        "Resume with the original settings, or start a new run in another --out",
    )
    return ValueError(
        f"--resume: {str(path)!r} was written by a run with different settings: {'; '.join(diff[:5])}{more}. "
        f"{hint}"
    )


def check_resume(out: str | os.PathLike, cfg: TrainConfig | None = None, stop_at: int | None = None) -> None:
    """Cheap checks before any data is loaded: ``out`` holds a tensornet checkpoint this run can resume.

    Checked: its format, version and layout (the checksum is verified when ``train`` loads it), that it was
    written with the same training settings as ``cfg`` (when given), at a step not after ``stop_at``.
    """
    path = Path(out) / CHECKPOINT
    what = _files.not_a_file(path)
    if what is not None and what != "does not exist":
        raise ValueError(
            f"--resume: the checkpoint {str(path)!r} {what}; restore the file, or start the run over with "
            "--overwrite"
        )
    if what is not None:
        stopped = (Path(out) / LOG).is_file()  # a run killed before its first checkpoint
        raise FileNotFoundError(
            f"--resume: no checkpoint at {str(path)!r}"
            + (
                ": the run there stopped before its first checkpoint, so there is nothing to resume; run the "
                "same command without --resume to start it over"
                if stopped
                else "; run without --resume to start"
            )
        )
    ckpt = _checkpoint.load_checkpoint(path, "--resume", check_layout, verify=False)
    if cfg is not None:
        now = {"train": signature(cfg, None)["train"]}
        err = _signature_mismatch(path, {"train": ckpt["signature"].get("train")}, now)
        if err is not None:
            raise err
    if stop_at is not None and stop_at < ckpt["step"]:
        raise ValueError(
            f"--stop-at {stop_at} is before the checkpoint's step {ckpt['step']} in {str(path)!r}"
        )
