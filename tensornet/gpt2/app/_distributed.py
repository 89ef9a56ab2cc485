"""The processes of a run: rank and world size from torchrun's environment, the process group, the device.

Read from the environment: ``torch.distributed.get_rank``/``get_world_size`` answer only after
``init_process_group``, and the first process must be known before (it alone opens the run folder).
"""

from __future__ import annotations

import os

import torch


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
        self.main = self.rank == 0  # the process that writes the run folder and prints
        if self.rank >= self.world:
            raise ValueError(
                f"the environment gives RANK={self.rank} but WORLD_SIZE={self.world} (ranks 0 to "
                f"{self.world - 1}); start the processes with torchrun, or unset RANK and WORLD_SIZE"
            )

    def init(self, device: torch.device) -> None:
        """Start the process group (nccl on GPU, gloo on CPU) when there are several processes."""
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")

    def barrier(self) -> None:
        """Wait for every process."""
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over the processes."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def default_device(dist: Distributed | None = None) -> torch.device:
    """CUDA (this process's GPU under torchrun) when available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank if dist is not None else 0)
    return torch.device("cpu")
