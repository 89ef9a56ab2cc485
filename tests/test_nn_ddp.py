"""TTMLinear under DistributedDataParallel (gloo, 2 CPU processes): gradients equal the single-process ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tensornet.nn import TTEmbedding, TTMLinear

WORLD = 2


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        TTEmbedding(60, 24, rank=3, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4), init=1.0),
        TTMLinear(24, 30, rank=(3, 4), in_shape=(2, 3, 4), out_shape=(5, 3, 2), init="glorot"),
        torch.nn.Tanh(),
        TTMLinear(30, 24, rank=2, init="kaiming"),
    )


def _batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 60, (WORLD * 4, 5), generator=generator)


def _grads(model: torch.nn.Module) -> list[np.ndarray]:
    return [p.grad.detach().double().numpy().copy() for p in model.parameters()]


def _worker(rank: int, store: str, queue) -> None:
    torch.set_num_threads(1)
    # a file store, not a TCP port: a port found free in the parent can be taken by another process
    # before the workers bind it (the test failed once in a full pytest-xdist run, cause not captured)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        ids = _batch().chunk(WORLD)[rank]
        model(ids).square().mean().backward()  # DDP averages over ranks: same as the mean over the batch
        if rank == 0:
            queue.put(_grads(model.module))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ddp_gloo_two_processes_gradients_equal_single_process(tmp_path):
    model = _model()
    model(_batch()).square().mean().backward()
    expected = _grads(model)
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    store = str(tmp_path / "store")
    mp.start_processes(_worker, args=(store, queue), nprocs=WORLD, join=True, start_method="spawn")
    got = queue.get()
    assert len(got) == len(expected) == len(list(model.parameters()))
    for k, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=f"parameter {k}")
