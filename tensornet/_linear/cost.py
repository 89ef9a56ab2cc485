"""The roofline cost model: every kernel a strategy runs is charged as one :class:`Step`.

Per step ``max(flops / (peak * efficiency), bytes / bandwidth) + launch``, with GEMM efficiency falling
for thin dimensions and permuting copies charged as strided memory traffic. FLOPs alone mislead (a
FLOP-optimal factorised path can be several times slower than dense because of transposes and tiny
GEMMs, and every kernel launch costs microseconds), hence the model. With autotuning on the candidates
are timed instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Machine:
    """Roofline constants of the cost model (rough; autotuning replaces them with measurements).

    ``thin``: a GEMM dimension of this size runs at half the peak rate (efficiency ``s / (s + thin)``
    per dimension, the contracted one counted at half weight). ``einsum_call``: the host time one
    ``torch.einsum`` call spends beyond its kernel's launch (parsing the subscripts, planning the permutes
    and reshapes around its GEMM): ~20 us per call against ~3 us for ``torch.mm`` on a tiny pair, measured
    on CPU with torch 2.13 (the same host work precedes a CUDA launch).
    """

    name: str
    peak_flops: float
    bandwidth: float
    launch: float
    thin: float
    einsum_call: float = 16e-6

    @staticmethod
    def for_device(device: str, itemsize: int) -> Machine:
        """The machine model for ``device`` ('cpu' or 'cuda...') and an element size in bytes."""
        if device.startswith("cuda"):
            peak = 400e12 if itemsize <= 2 else 50e12
            return Machine("cuda", peak, 2.0e12, 8e-6, 128.0)
        return Machine("cpu", 40e9 if itemsize <= 4 else 20e9, 6e9, 4e-6, 16.0)


@dataclass(frozen=True)
class Step:
    """One kernel of a candidate, as the cost model charges it.

    ``what`` it does, its ``kind`` ("gemm" or "copy"), FLOPs, bytes moved, output size and modelled seconds.
    """

    what: str
    kind: str
    flops: int
    bytes: int
    elements: int
    seconds: float


class Costing:
    """Builds the steps of one candidate for a machine and an item size."""

    def __init__(self, machine: Machine, itemsize: int) -> None:
        self.machine, self.item, self.steps = machine, itemsize, []  # type: ignore[var-annotated]

    def gemm(self, m: int, k: int, n: int, what: str, batch: int = 1, host: float = 0.0) -> None:
        """A (batched) ``(m, k) @ (k, n)`` product (``host``: extra host seconds of the call that runs it)."""
        machine, item = self.machine, self.item
        flops = 2 * m * k * n * batch
        moved = item * (m * k + k * n + m * n) * batch
        eff = (m / (m + machine.thin)) * (n / (n + machine.thin)) * math.sqrt(k / (k + machine.thin))
        seconds = max(flops / (machine.peak_flops * eff), moved / machine.bandwidth) + machine.launch + host
        label = f"{what}: GEMM ({m} x {k}) @ ({k} x {n})" + (f" x {batch}" if batch > 1 else "")
        self.steps.append(Step(label, "gemm", flops, moved, m * n * batch, seconds))

    def copy(self, elements: int, what: str, host: float = 0.0) -> None:
        """A permuting copy of ``elements`` entries (strided reads run well below streaming bandwidth)."""
        moved = 2 * self.item * elements
        seconds = 2 * moved / self.machine.bandwidth + self.machine.launch + host
        self.steps.append(Step(f"{what}: copy of {elements} elements", "copy", 0, moved, elements, seconds))


@dataclass(frozen=True)
class Candidate:
    """One way to compute a network: named ``strategy`` (and an einsum ``path``), with its steps."""

    strategy: str
    steps: tuple[Step, ...]
    path: tuple[tuple[int, ...], ...] | None = None
    measured: float | None = None

    @property
    def flops(self) -> int:
        """Floating-point operations of all the steps."""
        return sum(s.flops for s in self.steps)

    @property
    def bytes(self) -> int:
        """Bytes moved by all the steps."""
        return sum(s.bytes for s in self.steps)

    @property
    def largest(self) -> int:
        """Elements of the largest intermediate or output."""
        return max((s.elements for s in self.steps), default=0)

    @property
    def seconds(self) -> float:
        """Measured seconds when autotuned, else the model's estimate."""
        return self.measured if self.measured is not None else sum(s.seconds for s in self.steps)

    def row(self) -> str:
        """One line of the cost table (modelled and, where timed, measured)."""
        timed = f"{self.measured * 1e3:9.3f} ms measured" if self.measured is not None else ""
        modelled = sum(s.seconds for s in self.steps)
        return (
            f"  {self.strategy:<8} {self.flops / 1e6:12.2f} MFLOP {self.bytes / 1e6:10.2f} MB "
            f"{self.largest:>12} elements {modelled * 1e3:9.3f} ms model {timed}"
        )
