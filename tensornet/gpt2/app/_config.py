"""A training run's settings, one schema: ``TrainConfig``'s fields carry the range and help its flags use."""

import argparse
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

MAX_STEPS, MAX_SIZE, MAX_TOKENS = 10**9, 65536, 2**40


@dataclass(frozen=True)
class Range:
    """The values a setting takes: a number (an integer with ``integer``) from ``lo`` to ``hi``."""

    lo: float
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def rule(self) -> str:
        """The range in words: ``>= 1``, ``in [0, 65536]``, ``a finite number in (0, 1]``."""
        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        above = f"{'>' if self.lo_open else '>='} {self.lo}"
        bounds = above if self.hi == math.inf else f"in {left}{self.lo}, {self.hi}{right}"
        return bounds if self.integer else f"a finite number {bounds}"

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return math.isfinite(value) and above and below

    def __call__(self, text: str) -> Any:  # an argparse type
        try:
            value: Any = int(text) if self.integer else float(text)
        except ValueError:
            value = None
        if not self.holds(value):
            raise argparse.ArgumentTypeError(f"must be {self.rule()}, got {text!r}")
        return value


def _set(default: Any, values: Range, text: str = "") -> Any:  # a field, its range and its flag's help
    return field(default=default, metadata={"range": values, "help": text})


def ints(lo: int, hi: float = math.inf) -> Range:
    return Range(lo, hi, integer=True)


CompileMode = Literal["default", "reduce-overhead", "max-autotune"]
COMPILE_MODES: tuple[CompileMode, ...] = ("default", "reduce-overhead", "max-autotune")
# a product of factors moves W less per Adam step than a dense matrix: its own multiplier (make_optimizer)
_SCALE = "learning-rate multiplier of {} (a per-model setting: benchmarks/results/gpt2_compare_cpu.md)"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (frozen), by default the paper's GPT-2 small recipe but the step count and batch.

    Raises
    ------
    ValueError
        From :meth:`check`, naming the first setting out of its range.
    """

    steps: int = _set(1000, ints(1, MAX_STEPS), "optimizer steps")
    batch_size: int = _set(16, ints(1, MAX_SIZE), "sequences per step over all processes")
    block_size: int = _set(512, ints(1, MAX_SIZE), "sequence length")
    lr: float = _set(6.25e-5, Range(0, 1, lo_open=True), "peak AdamW learning rate")
    min_lr_ratio: float = _set(0.1, Range(0, 1), "cosine decays to lr x this")
    warmup: int = _set(4000, ints(0, MAX_STEPS), "linear warmup steps")
    weight_decay: float = _set(1e-4, Range(0), "AdamW weight decay on matrices and TT cores")
    beta1: float = _set(0.9, Range(0, 1, hi_open=True), "AdamW beta1")
    beta2: float = _set(0.999, Range(0, 1, hi_open=True), "AdamW beta2")
    clip: float = _set(1.0, Range(0), "gradient-norm clip, 0 = off")
    tt_lr_scale: float = _set(1.0, Range(0, lo_open=True), _SCALE.format("TT cores"))
    lowrank_lr_scale: float = _set(1.0, Range(0, lo_open=True), _SCALE.format("low-rank factors"))
    seed: int = _set(0, ints(0, 2**32 - 1), "seed for initialisation and data order")
    eval_every: int = _set(0, ints(0, MAX_STEPS), "steps between evaluations")
    eval_at: tuple[int, ...] = ()  # evaluate also after these steps (compare: log-spaced, for its figure)
    eval_tokens: int = _set(65536, ints(0, MAX_TOKENS), "validation tokens per evaluation (0: all)")
    checkpoint_every: int = _set(0, ints(0, MAX_STEPS))  # 0: only at the end (when out is set)
    compile: CompileMode | None = None  # torch.compile mode, None: eager

    def check(self) -> None:
        """Raise ValueError naming the first setting out of its range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if "range" in f.metadata and not f.metadata["range"].holds(value):
                raise ValueError(f"TrainConfig: {f.name} must be {f.metadata['range'].rule()}, got {value!r}")
        if self.compile not in (None, *COMPILE_MODES):
            raise ValueError(f"TrainConfig: compile must be None or in {COMPILE_MODES}, got {self.compile!r}")
        if any(not 1 <= step <= self.steps for step in self.eval_at):
            raise ValueError(f"TrainConfig: eval_at must be steps in [1, {self.steps}], got {self.eval_at!r}")

    def evaluates_at(self, done: int) -> bool:
        """Whether the run evaluates after ``done`` steps (always after the last)."""
        return (
            done == self.steps or done in self.eval_at or (self.eval_every > 0 and not done % self.eval_every)
        )

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = min((step - self.warmup) / max(self.steps - self.warmup, 1), 1.0)
        r = self.min_lr_ratio
        return self.lr * (r + (1 - r) * 0.5 * (1 + math.cos(math.pi * progress)))
