"""The core on CUDA: results stay on the device and match the CPU (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import as_numpy, gpu, torch

import tensornet as tn

# The autograd engine runs CUDA backward on its own thread; torch warns once when that thread makes its
# first cuBLAS call and sets the device's primary context itself (harmless).
pytestmark = [
    gpu,
    pytest.mark.gpu,
    pytest.mark.filterwarnings("ignore:Attempting to run cuBLAS, but there was no current CUDA context"),
]


def test_ops_and_decompositions_on_cuda_match_cpu():
    t = tn.random_tt((3, 4, 5, 2), 3, seed=0)
    a = tn.random_ttm((2, 3, 4), (3, 4, 5), 2, seed=1)
    v = tn.random_tt((3, 4, 5), 2, seed=2)
    tc, ac, vc = (z.to("torch", device="cuda") for z in (t, a, v))
    assert tc.device.type == "cuda" and str(tc.device) == str(tc.cores[0].device)
    pairs = [
        (tc.full(), t.full()),
        ((tc + tc).full(), (t + t).full()),
        (tn.dot(tc, tc), tn.dot(t, t)),
        (tn.norm(tc), tn.norm(t)),
        ((ac @ vc).full(), (a @ v).full()),
        (tn.round(tc + tc, eps=1e-10).full(), tn.round(t + t, eps=1e-10).full()),
        (tn.tt_svd(tc.full(), eps=1e-10).full(), t.full()),
        (tn.ttm_svd(ac.full(), a.row_shape, a.col_shape, eps=1e-10).full(), a.full()),
        (tc[1, :, 2], t[1, :, 2].full()),
    ]
    for on_gpu, on_cpu in pairs:
        result = on_gpu.full() if isinstance(on_gpu, tn.TT) else on_gpu
        assert result.device.type == "cuda"
        np.testing.assert_allclose(as_numpy(result), as_numpy(on_cpu), rtol=1e-9, atol=1e-9)


def test_linear_on_cuda_float32_and_grad():
    w = tn.random_ttm((4, 8), (8, 4), 4, seed=0, std=0.1).to("torch", device="cuda", dtype="float32")
    cores = [c.clone().requires_grad_(True) for c in w.cores]
    x = torch.randn(16, 32, device="cuda", requires_grad=True)
    y = tn.linear(x, tn.TTM(cores))
    dense = tn.TTM([c.detach() for c in cores]).full()
    torch.testing.assert_close(y, x @ dense.T, rtol=1e-4, atol=1e-4)
    y.sum().backward()
    assert x.grad is not None and all(c.grad is not None and c.grad.device.type == "cuda" for c in cores)


def test_mixed_devices_refused():
    core = torch.ones(1, 2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="device"):
        tn.TT([torch.ones(1, 2, 1, dtype=torch.float64, device="cuda"), core])
