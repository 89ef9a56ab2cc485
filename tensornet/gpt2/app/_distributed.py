"""The processes of a run: rank and world size under torchrun, the process group, the device."""

import os

import torch

_ENV = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}  # torchrun sets them; their values without it


class Distributed:
    """Rank, world size and ``main`` (the first process: it writes the run folder, prints) under torchrun."""

    def __init__(self) -> None:
        # not torch.distributed.get_rank: the first process opens the run folder, before the group starts
        given = {name: os.environ.get(name, "").strip() or default for name, default in _ENV.items()}
        world, rank, local = (int(v) if v.isdecimal() else -1 for v in given.values())
        if not 0 <= rank < world or local < 0:
            shown = ", ".join(f"{k}={v}" for k, v in given.items())
            raise ValueError(f"the environment gives {shown}; start with torchrun or unset them")
        self.world, self.rank, self.local_rank, self.main = world, rank, local, rank == 0

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
    cuda = torch.cuda.is_available()
    return torch.device("cuda", dist.local_rank if dist else 0) if cuda else torch.device("cpu")
