"""The processes of a run: rank and world size under torchrun, the process group, the device."""

from __future__ import annotations

import os

import torch

_ENV = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}  # torchrun sets them; their values without it


class Distributed:
    """Rank and world size from torchrun's environment; ``init()`` starts the process group when world > 1."""

    def __init__(self) -> None:
        # from the environment, not torch.distributed.get_rank: the first process (the one that opens the run
        # folder) must be known before the process group starts
        given = {name: os.environ.get(name, "").strip() or default for name, default in _ENV.items()}
        try:
            self.world, self.rank, self.local_rank = (int(v) for v in given.values())
        except ValueError:
            self.world = self.rank = self.local_rank = -1
        if not 0 <= self.rank < self.world or self.local_rank < 0:
            shown = ", ".join(f"{k}={v}" for k, v in given.items())
            raise ValueError(f"the environment gives {shown}; start with torchrun or unset them")
        self.main = self.rank == 0  # the process that writes the run folder and prints

    def init(self, device: torch.device) -> None:
        """Start the process group (nccl on GPU, gloo on CPU) when there are several processes."""
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")

    def barrier(self) -> None:
        """Wait for every process."""
        if torch.distributed.is_initialized():
            torch.distributed.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """``values`` summed over the processes."""
        if not torch.distributed.is_initialized():
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def default_device(dist: Distributed | None = None) -> torch.device:
    """CUDA (this process's GPU under torchrun) when available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank if dist is not None else 0)
    return torch.device("cpu")
