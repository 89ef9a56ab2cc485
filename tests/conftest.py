"""Shared test settings: hypothesis profiles and dense references independent of tensornet."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import torch  # a test dependency: the torch backend is tested everywhere
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile(
    "ci",
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
# a long randomised search for a developer hunting edge cases (not run by CI)
settings.register_profile(
    "fuzz", max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

HAS_CUDA = torch.cuda.is_available()

gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def as_numpy(array) -> np.ndarray:
    """Any backend's array as a float64 (complex128 if complex) numpy array (detached; a copy: a train's numpy
    cores are read-only)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().resolve_conj().numpy()
    wide = np.complex128 if np.iscomplexobj(array) else np.float64
    return np.array(array, dtype=wide)


def rtol(dtype) -> float:
    """Relative tolerance for results computed in ``dtype`` (a few hundred ulps of the dtype)."""
    return 2e-4 if "float32" in str(dtype) or "complex64" in str(dtype) else 1e-10


def dense_tt(train) -> np.ndarray:
    """Entry by entry, the product of core slices (a reference that shares no code with tensornet)."""
    cores = [as_numpy(c) for c in train.cores]
    shape = tuple(c.shape[1] for c in cores)
    out = np.empty(shape, dtype=np.result_type(*cores))
    for index in itertools.product(*(range(n) for n in shape)):
        value = np.ones((1, 1))
        for core, i in zip(cores, index):
            value = value @ core[:, i, :]
        out[index] = value[0, 0]
    return out


def dense_ttm(train) -> np.ndarray:
    cores = [as_numpy(c) for c in train.cores]
    rows = tuple(c.shape[1] for c in cores)
    cols = tuple(c.shape[2] for c in cores)
    out = np.empty((int(np.prod(rows)), int(np.prod(cols))), dtype=np.result_type(*cores))
    for i, row in enumerate(itertools.product(*(range(n) for n in rows))):
        for j, col in enumerate(itertools.product(*(range(n) for n in cols))):
            value = np.ones((1, 1))
            for core, a, b in zip(cores, row, col):
                value = value @ core[:, a, b, :]
            out[i, j] = value[0, 0]
    return out


def assert_close(actual, expected, dtype, scale=None) -> None:
    """``|actual - expected| <= rtol(dtype) * scale`` elementwise, scale defaulting to max |expected|."""
    actual, expected = as_numpy(actual), as_numpy(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if scale is None:
        scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-300)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol(dtype) * scale)


def saved_storage_bytes(fn, *, exclude=()) -> int:
    """Bytes of the distinct storages that the autograd graph of ``fn()`` saves for backward (views of one
    storage counted once; storages of the tensors in ``exclude``, e.g. parameters, left out). Runs the
    backward, so the graph is freed."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn()
    y.float().square().sum().backward()
    return sum(storages.values())


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny models run fastest so, and a busy machine does not stall them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def force_route(monkeypatch):
    """``force_route(forward, backward)``: every ``linear`` plan made afterwards in the test takes that route."""
    import dataclasses

    from tensornet._linear import plan as planner

    lookup = planner.lookup

    def force(forward: str, backward: str) -> None:
        def forced(*args, **kwargs):
            plan = lookup(*args, **kwargs)
            chosen = next(c for c in plan.forward_candidates if c.strategy == forward)
            back = next(c for c in plan.backward_candidates if c.strategy == backward)
            return dataclasses.replace(plan, forward=chosen, backward=back)

        monkeypatch.setattr(planner, "lookup", forced)

    return force


# --- the GPT-2 command line -----------------------------------------------------------------------------
# a 1-layer model on 20,000 characters: every run is dominated by Python's start-up, not by training
GPT2_TINY = [
    *("--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16", "--vocab-size", "300"),
    *("--max-chars", "20000", "--batch-size", "4", "--warmup", "2", "--no-progress", "--device", "cpu"),
]


def train_argv(shared: dict, out, *extra: str) -> list[str]:
    """``train`` of the tiny model for 3 steps into ``out``, on the module's shared token cache."""
    return [
        "train",
        *GPT2_TINY,
        "--steps",
        "3",
        "--cache-dir",
        str(shared["cache"]),
        "--out",
        str(out),
        *extra,
    ]


def cli_status(argv: list[str]) -> int:
    """``python -m tensornet.gpt2``'s exit status: usage errors exit through argparse, later errors return 2."""
    from tensornet.gpt2.app._cli import main

    try:
        return main(argv)
    except SystemExit as exit_info:
        return int(exit_info.code or 0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One tokenizer/token cache and one finished 3-step dense run (checkpoint, log, model/) per module."""
    root = tmp_path_factory.mktemp("run")
    cache, run = root / "cache", root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli_status(train_argv({"cache": cache}, run)) == 0
    finally:
        torch.set_num_threads(threads)
    return {"cache": cache, "run": run}
