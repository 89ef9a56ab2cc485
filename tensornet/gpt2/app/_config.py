"""The optimisation settings of a run (:class:`TrainConfig`), which need no torch (``--help`` reads them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

CompileMode = Literal["default", "reduce-overhead", "max-autotune"]
COMPILE_MODES: tuple[CompileMode, ...] = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (frozen: a run's settings do not change under it).

    Defaults are the paper's GPT-2 small recipe except the step count and batch.
    """

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
    # the same for the two factors of the low-rank baseline (LowRankLinear): at 1 they stay in the dense group
    lowrank_lr_scale: float = 1.0
    seed: int = 0
    eval_every: int = 0  # 0: only at the end
    eval_at: tuple[int, ...] = ()  # evaluate also after these steps (compare: log-spaced, for its figure)
    eval_tokens: int = 65536  # validation tokens per evaluation (0: all)
    checkpoint_every: int = 0  # 0: only at the end (when out is set)
    compile: CompileMode | None = None  # torch.compile mode, None: eager

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
        for name in ("lr", "tt_lr_scale", "lowrank_lr_scale"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise bad(name, "> 0 and finite")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "in [0, 1]")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "in [0, 1)")
        if self.compile not in (None, *COMPILE_MODES):
            raise bad("compile", f"None or one of {COMPILE_MODES}")
        if any(not 1 <= step <= self.steps for step in self.eval_at):
            raise bad("eval_at", f"steps in [1, {self.steps}]")

    def evaluates_at(self, done: int) -> bool:
        """Whether the run evaluates after ``done`` steps (always after the last)."""
        return (
            done == self.steps
            or (self.eval_every > 0 and done % self.eval_every == 0)
            or done in self.eval_at
        )

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine to lr * min_lr_ratio."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        decay_steps = max(self.steps - self.warmup, 1)
        progress = min((step - self.warmup) / decay_steps, 1.0)
        return self.lr * (
            self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        )
