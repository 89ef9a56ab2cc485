"""The record ``tensorize`` returns: one :class:`LayerReport` per replaced layer in a :class:`TensorizeReport`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LayerReport", "TensorizeReport"]


@dataclass(frozen=True)
class LayerReport:
    """What happened to one layer. ``shape`` is the weight as ``(out, in)`` / ``(num_embeddings, dim)``.

    ``error``: the measured relative error ``||W - W~||_F / ||W||_F`` of a layer converted from weights.
    ``error_bound``: under a budget, the TT-SVD bound on it at the chosen ranks (see :func:`tensorize`).
    ``norm``: ``||W||_F`` of a layer converted from weights; ``bias_params``: its bias entries (in both
    ``params_before`` and ``params_after``).
    """

    name: str
    kind: str
    shape: tuple[int, int]
    row_shape: tuple[int, ...]
    col_shape: tuple[int, ...]
    ranks: tuple[int, ...]
    params_before: int
    params_after: int
    error: float | None
    note: str = ""
    error_bound: float | None = None
    norm: float | None = None
    bias_params: int = 0


@dataclass(frozen=True)
class TensorizeReport:
    """Per-layer records and the model's parameter counts (shared parameters counted once).

    ``skipped``: ``(name, why)`` of each layer a rule matched but that was left dense because its parent
    reads its weight tensor directly (see :func:`tensorize`). ``budget``: the budget asked for (None:
    ranks from the rules); ``weight_ratio``: what the replaced layers' TT cores take of their dense weights.
    """

    layers: list[LayerReport] = field(default_factory=list)
    model_params_before: int = 0
    model_params_after: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    budget: float | None = None
    allocation: str = ""

    @property
    def weight_ratio(self) -> float:
        """The replaced layers' TT-core parameters over their dense weights (biases left out of both)."""
        dense = sum(layer.shape[0] * layer.shape[1] for layer in self.layers)
        cores = sum(layer.params_after - layer.bias_params for layer in self.layers)
        return cores / dense if dense else math.nan

    @property
    def total_error(self) -> float | None:
        """``sqrt(sum_l e_l^2 ||W_l||^2 / sum_l ||W_l||^2)``: the replaced weights' error taken together.

        None unless every layer was converted from weights and its norm is known.
        """
        pairs = [(layer.error, layer.norm) for layer in self.layers]
        if not pairs or any(error is None or norm is None for error, norm in pairs):
            return None
        known = [(float(error), float(norm)) for error, norm in pairs]  # type: ignore[arg-type]
        peak = max(norm for _, norm in known)
        if not peak > 0:
            return 0.0
        # norms divided by the largest first: their squares neither overflow nor all underflow
        total = sum((norm / peak) ** 2 for _, norm in known)
        return math.sqrt(sum((error * norm / peak) ** 2 for error, norm in known) / total)

    @property
    def ratio(self) -> float:
        """Model parameters after divided by before."""
        return self.model_params_after / self.model_params_before if self.model_params_before else math.nan

    @property
    def max_error(self) -> float | None:
        """The largest relative error of a layer converted from weights (None when none was)."""
        errors = [layer.error for layer in self.layers if layer.error is not None]
        return max(errors) if errors else None

    def __str__(self) -> str:
        header: tuple[str, ...] = (
            "layer",
            "type",
            "shape",
            "TT shape (rows x cols)",
            "ranks",
            "params",
            "TT params",
            "ratio",
            "rel. error",
        )
        bounded = any(layer.error_bound is not None for layer in self.layers)
        if bounded:
            header += ("bound",)
        rows: list[tuple[str, ...]] = [header]
        for layer in self.layers:
            pairs = "".join(f"({m},{n})" for m, n in zip(layer.row_shape, layer.col_shape))
            rows.append(
                (
                    layer.name,
                    layer.kind,
                    f"{layer.shape[0]}x{layer.shape[1]}",
                    pairs,
                    "-".join(str(r) for r in layer.ranks),
                    f"{layer.params_before:,}",
                    f"{layer.params_after:,}",
                    f"{layer.params_before / layer.params_after:.1f}x",
                    "-" if layer.error is None else f"{layer.error:.3g}",
                )
                + ((("-" if layer.error_bound is None else f"{layer.error_bound:.3g}"),) if bounded else ())
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        right = {5, 6, 7, 8, 9}
        lines = []
        for i, row in enumerate(rows):
            cells = [
                cell.rjust(w) if j in right else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths))
            ]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        before, after = self.model_params_before, self.model_params_after
        share = 100.0 * after / before if before else float("nan")
        lines.append(
            f"{len(self.layers)} layers replaced; model parameters {before:,} -> {after:,} ({share:.1f}% of before)"
        )
        if self.budget is not None:
            lines.append(
                f"budget {self.budget:g}: the TT cores take {self.weight_ratio:.4f} of the replaced layers' dense "
                f"weights; {self.allocation}"
            )
        lines += [f"note: {layer.name}: {layer.note}" for layer in self.layers if layer.note]
        lines += [f"skipped (left dense): {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython / notebooks
        printer.text(str(self))
