"""What every benchmark script shares: the import path, the timer, the machine description, the tables.

Importing this module puts the checkout's root first on ``sys.path`` (the scripts run from a checkout
without installing), so ``import _harness`` comes before ``import tensornet`` in every script.

* :func:`time_interleaved` -- median wall-clock and CPU time of several callables measured in interleaved
  rounds (each round calls every callable once, after warm-up calls), so that load from other jobs on a
  shared machine hits all of them alike and their ratios stay fair;
* :func:`machine` -- the machine, the libraries, the thread settings and the load average, as markdown
  bullet lines to put under a result table;
* :func:`markdown_table`, :func:`ratio`, :func:`number` -- the table writer and its cell formats;
* :func:`saved_bytes` -- the bytes an autograd graph keeps for backward (torch).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


# --- timing ---------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Seconds per call of one callable: every sample, wall clock and CPU time of this process."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def best(self) -> float:
        return min(self.wall)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


@dataclass
class Measured:
    """What :func:`time_interleaved` returns: timings, the last result of each callable, and failures."""

    timings: dict[str, Timing]
    results: dict[str, Any]
    failures: dict[str, str]

    def median(self, clock: str = "wall") -> dict[str, float]:
        """Median seconds per call of each callable that ran, by wall clock or CPU time."""
        return {name: (t.cpu_median if clock == "cpu" else t.median) for name, t in self.timings.items()}


def short_error(error: BaseException, limit: int = 90) -> str:
    """One line naming the exception (for a table cell)."""
    text = f"{type(error).__name__}: {error}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int = 50,
    min_rounds: int = 3,
    budget: float | None = None,
    warmup: int = 1,
    inner: int = 1,
    sync: Callable[[], None] | None = None,
) -> Measured:
    """Median time per call of each function, measured in interleaved rounds.

    Parameters
    ----------
    fns : dict
        Name -> callable without arguments.
    rounds : int
        At most this many rounds.
    min_rounds : int
        Every callable gets at least this many samples (unless it fails).
    budget : float, optional
        Seconds of samples per callable after which it stops being timed (after ``min_rounds``); None
        times every callable for ``rounds`` rounds.
    warmup : int
        Untimed calls of each callable first (plans, caches, allocators); a callable that raises there is
        reported in ``failures`` and not timed.
    inner : int
        Back-to-back calls per sample (for microsecond-scale calls); a sample is their mean.
    sync : callable, optional
        Called after each sample's calls (e.g. ``torch.cuda.synchronize``), inside the timing.
    """
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for name, fn in fns.items():
        try:
            for _ in range(max(warmup, 1)):
                results[name] = fn()
        except Exception as error:  # a missing or broken peer is reported, not fatal
            failures[name] = short_error(error)
    if sync is not None:
        sync()
    timings = {name: Timing() for name in results}
    for _ in range(rounds):
        active = [
            n
            for n, t in timings.items()
            if len(t.wall) < min_rounds or budget is None or sum(t.wall) < budget
        ]
        if not active:
            break
        for name in active:
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(inner):
                results[name] = fns[name]()
            if sync is not None:
                sync()
            timings[name].wall.append((time.perf_counter() - start) / inner)
            timings[name].cpu.append((time.process_time() - start_cpu) / inner)
    return Measured(timings, results, failures)


# --- the machine ------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, then ``lscpu``, then ``platform``)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def versions(names: Iterable[str]) -> str:
    """``name version`` of each installed distribution (``name missing`` otherwise)."""
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return ", ".join(found)


def _commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    return "unknown"


def _threads() -> str:
    settings = [
        f"{k}={os.environ[k]}"
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
        if k in os.environ
    ]
    torch = sys.modules.get("torch")
    if torch is not None:
        settings.append(f"torch threads {torch.get_num_threads()}")
    with contextlib.suppress(ImportError):
        import threadpoolctl

        blas = [
            f"{info.get('internal_api')} {info.get('num_threads')}"
            for info in threadpoolctl.threadpool_info()
        ]
        settings.append("BLAS/OpenMP pools: " + (", ".join(blas) or "none loaded"))
    return "; ".join(settings) or "library defaults"


def machine(*, device: str = "cpu", peers: Sequence[str] = ()) -> list[str]:
    """Markdown bullet lines describing where and how a benchmark ran.

    The CPU (or GPU), the platform, Python, numpy, torch and tensornet versions (with the commit), the
    thread settings, the load average (1, 5, 15 min; other jobs share the machine), the time, the command
    line and the peers' versions.
    """
    lines = [f"- CPU: {cpu_model()}, {os.cpu_count()} logical cores; {platform.platform()}"]
    torch = sys.modules.get("torch")
    if device.startswith("cuda") and torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"- GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs), "
            f"CUDA {torch.version.cuda}"
        )
    libraries = f"Python {platform.python_version()}, {versions(['numpy', 'torch'])}"
    lines.append(f"- {libraries}, tensornet at {_commit()}")
    lines.append(f"- threads: {_threads()}")
    if hasattr(os, "getloadavg"):
        lines.append("- load average (1, 5, 15 min): " + ", ".join(f"{v:.1f}" for v in os.getloadavg()))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"- {now}; command: `python {' '.join(sys.argv)}`")
    if peers:
        lines.append(f"- peers: {versions(peers)}")
    return lines


# --- tables ---------------------------------------------------------------------------------------------
def number(value: float | None, digits: int = 1) -> str:
    """``value`` with thousands separators, or ``-`` for a missing one."""
    return "-" if value is None else f"{value:,.{digits}f}"


def ratio(value: float | None, base: float | None, digits: int = 2) -> str:
    """``value / base`` as ``1.23x``, or ``-`` when either is missing."""
    return "-" if value is None or not base else f"{value / base:.{digits}f}x"


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()
) -> list[str]:
    """A markdown table: the header, the alignment row (columns in ``right`` right-aligned) and the rows."""
    aligned = set(right)
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if k in aligned else "---" for k in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def write_report(path: str | Path | None, lines: Sequence[str]) -> None:
    """Write the report's lines to ``path`` (nothing when None), creating its folder."""
    if path is None:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"written to {out}", file=sys.stderr)


# --- torch ----------------------------------------------------------------------------------------------
def saved_bytes(run: Callable[[], Any], exclude: Iterable[Any] = ()) -> int:
    """Bytes of the distinct storages the autograd graph of ``run()`` saves for backward.

    Tensors sharing a storage with one in ``exclude`` (parameters) are not counted; each storage once.
    """
    import torch

    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(seen.values())


def device_sync(device: str) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA device, None otherwise."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return None


# --- peers' results as trains ----------------------------------------------------------------------------
def as_train(result: Any) -> Any:
    """A tensornet train from a method's result: a train, or a peer's object through ``tensornet.interop``.

    torchTT ``TT``, tntorch ``Tensor`` (Tucker factors and CP cores included), tensorly ``TTTensor``, quimb
    MPS, and teneva's format (a list of numpy cores). Conversions happen outside the timed calls.
    """
    import tensornet as tn
    from tensornet import interop

    if isinstance(result, (tn.TT, tn.TTM)):
        return result
    home = type(result).__module__.split(".")[0]
    convert = {
        "torchtt": interop.from_torchtt,
        "tntorch": interop.from_tntorch,
        "tensorly": interop.from_tensorly,
        "quimb": interop.from_quimb,
    }.get(home)
    if convert is not None:
        return convert(result)
    return interop.from_teneva(list(result))  # teneva: a list of numpy cores


def host_cores(result: Any, dtype: Any) -> list[Any]:
    """The cores of :func:`as_train` ``(result)`` as numpy arrays of ``dtype`` (detached, on the host)."""
    import numpy as np

    return [np.asarray(c, dtype=dtype) for c in as_train(result).to("numpy").cores]
