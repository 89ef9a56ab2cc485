"""tn.linear: every planned path equals dense math; the torch autograd Function (gradcheck, plain
autograd gradients, saved bytes, autocast, torch.compile, double backward); bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from conftest import as_numpy, saved_storage_bytes
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet import _linear
from tensornet._linear import autograd, binding
from tensornet._linear.kernels import torch_ops
from tensornet.testing import strategies as tst

TOL = {"float32": 2e-5, "float64": 1e-12}
FORWARD = ("rebuild", "sweep", "einsum")
BACKWARD = ("dense", "sweep", "einsum")
COMPILE_WARNINGS = [
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    # torch 2.13's dynamo instantiates autograd.Function itself when tracing any custom Function
    pytest.mark.filterwarnings(
        "ignore:<class 'torch.autograd.function.Function'> should not be instantiated"
    ),
]


def _dense(w):
    return as_numpy(tn.full(w))


def _close(actual, expected, dtype, what=""):
    expected = as_numpy(expected)
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(as_numpy(actual), expected, rtol=0, atol=TOL[dtype] * scale * 10, err_msg=what)


def _x(shape, like, seed):
    return tn._backend.asarray_like(np.random.default_rng(seed).standard_normal(shape), like)


# --- forward: every path the planner can choose ----------------------------------------------------------
@given(
    tst.ttms(max_ncores=4, max_size=4, max_rank=4),
    st.lists(st.integers(1, 4), min_size=0, max_size=2),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_every_forward_path_equals_dense(w, lead, with_bias, seed):
    rows, cols = w.shape
    dtype = tn._backend.dtype_name(w.dtype)
    x = _x((*lead, cols), w.cores[0], seed)
    bias = _x((rows,), w.cores[0], seed + 1) if with_bias else None
    expected = as_numpy(x) @ _dense(w).T + (0 if bias is None else as_numpy(bias))
    y = tn.linear(x, w, bias)
    assert tuple(y.shape) == (*lead, rows) and y.dtype == w.dtype
    _close(y, expected, dtype, "tn.linear")
    x2d = x.reshape(-1, cols) if lead else x.reshape(1, cols)
    plan = tn.contract.plan_linear(tuple(x2d.shape), w.cores)
    assert {c.strategy for c in plan.forward_candidates} == set(FORWARD)
    for candidate in plan.forward_candidates:
        y2d = _linear.linear_forward(x2d, w.cores, candidate.strategy, candidate.path)
        _close(y2d, (as_numpy(x2d) @ _dense(w).T), dtype, candidate.strategy)
    if w.backend == "torch":
        for candidate in plan.forward_candidates:
            y2d = _linear.linear_forward(x2d, w.cores, candidate.strategy, candidate.path, ops=torch_ops())
            _close(y2d, (as_numpy(x2d) @ _dense(w).T), dtype, "torch ops " + candidate.strategy)


@given(tst.ttms(max_ncores=4, max_size=4, max_rank=4), st.integers(1, 12), st.integers(0, 2**16))
def test_every_backward_path_equals_dense(w, tokens, seed):
    rows, cols = w.shape
    dtype = tn._backend.dtype_name(w.dtype)
    x = _x((tokens, cols), w.cores[0], seed)
    gy = _x((tokens, rows), w.cores[0], seed + 1)
    dense_w = _dense(w)
    # reference core gradients: plain torch autograd through the rebuilt matrix, in float64
    cores = [torch.as_tensor(as_numpy(c)).requires_grad_() for c in w.cores]
    (torch.as_tensor(as_numpy(x)) @ tn.TTM(cores).full().T).backward(torch.as_tensor(as_numpy(gy)))
    plan = tn.contract.plan_linear((tokens, cols), w.cores)
    assert {c.strategy for c in plan.backward_candidates} == set(BACKWARD)
    for candidate in plan.backward_candidates:
        strategy = candidate.strategy
        gx, gcores = _linear.linear_backward(x, w.cores, gy, strategy, path=candidate.path)
        _close(gx, as_numpy(gy) @ dense_w, dtype, f"{strategy} dx")
        for k, (g, ref) in enumerate(zip(gcores, cores)):
            assert tuple(g.shape) == tuple(ref.shape)
            _close(g, ref.grad, dtype, f"{strategy} core {k}")
        only_x, none = _linear.linear_backward(
            x, w.cores, gy, strategy, need_cores=False, path=candidate.path
        )
        assert none is None
        _close(only_x, as_numpy(gy) @ dense_w, dtype, f"{strategy} dx only")


def test_zero_tokens_and_numpy_errors():
    w = tn.random_ttm((2, 3), (3, 2), 2, seed=0)
    assert tn.linear(np.ones((0, 6)), w).shape == (0, 6)
    assert tn.linear(np.ones((2, 0, 6)), w, np.ones(6)).shape == (2, 0, 6)
    with pytest.raises(ValueError, match="last dimension of x must be N = 6"):
        tn.linear(np.ones((2, 5)), w)
    with pytest.raises(ValueError, match="bias has shape"):
        tn.linear(np.ones((2, 6)), w, np.ones(5))
    with pytest.raises(TypeError, match="one dtype"):
        tn.linear(np.ones((2, 6), dtype=np.float32), w)
    with pytest.raises(TypeError, match="must be a tensornet TTM"):
        tn.linear(np.ones((2, 6)), tn.random_tt((6,), 1))
    with pytest.raises(TypeError, match="torch tensor but W has numpy cores"):
        tn.linear(torch.ones(2, 6, dtype=torch.float64), w)
    with pytest.raises(TypeError, match="numpy array but W has torch cores"):
        tn.linear(np.ones((2, 6)), w.to("torch"))


# (x dtype, bias dtype or None, the message's naming); W is float64. The message named x and W even where
# the bias was the operand that differs ("x is float64 but W is float64").
OPERAND_DTYPES = [
    ("float64", "int64", "bias is {int64} but x and W are {float64}"),
    ("float64", "float32", "bias is {float32} but x and W are {float64}"),
    ("float32", "float64", "x is {float32} but W and bias are {float64}"),
    ("float32", None, "x is {float32} but W is {float64}"),
    ("float32", "float32", "x and bias are {float32} but W is {float64}"),
    ("float32", "int64", "x is {float32} and bias is {int64} but W is {float64}"),
]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(("x_dtype", "bias_dtype", "message"), OPERAND_DTYPES)
def test_dtype_mismatches_name_the_operand_that_differs(backend, x_dtype, bias_dtype, message):
    w = tn.random_ttm((2, 3), (3, 2), 2, seed=0).to(backend)
    lib = np if backend == "numpy" else torch
    prefix = "" if backend == "numpy" else "torch."
    names = {k: prefix + k for k in ("float64", "float32", "int64")}
    x = lib.ones((2, 6), dtype=getattr(lib, x_dtype))
    bias = None if bias_dtype is None else lib.ones(6, dtype=getattr(lib, bias_dtype))
    with pytest.raises(TypeError, match=re.escape(f"linear: {message.format(**names)}; use one dtype")):
        tn.linear(x, w, bias)


def test_device_and_backend_mismatches_name_the_operand_that_differs():
    w = tn.random_ttm((2, 3), (3, 2), 2, seed=0).to("torch")
    x, bias = torch.ones(2, 6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    # the bias's device was not checked: torch's own error came from inside the product
    with pytest.raises(ValueError, match="linear: bias is on meta but x and W are on cpu; move them"):
        tn.linear(x, w, bias.to("meta"))
    with pytest.raises(ValueError, match="linear: x is on meta but W and bias are on cpu; move them"):
        tn.linear(x.to("meta"), w, bias)
    # tensornet.adjoint.linear checked none of its operands against W
    gy = torch.ones(2, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"adjoint.linear: grad_y is on meta but x and W are on cpu"):
        tn.adjoint.linear(x, w, gy.to("meta"))
    with pytest.raises(
        TypeError, match=r"adjoint.linear: grad_y is torch.float32 but x and W are torch.float64"
    ):
        tn.adjoint.linear(x, w, gy.float())
    with pytest.raises(TypeError, match=r"adjoint.linear: x and grad_y are numpy but W is torch arrays"):
        tn.adjoint.linear(np.ones((2, 6)), w, np.ones((2, 6)))
    with pytest.raises(TypeError, match=r"adjoint.linear: grad_y is float32 but x and W are float64"):
        tn.adjoint.linear(np.ones((2, 6)), w.to("numpy"), np.ones((2, 6), dtype=np.float32))


def test_numpy_linear_does_not_import_torch():
    code = (
        "import sys, numpy as np, tensornet as tn\n"
        "w = tn.random_ttm((2, 3), (3, 2), 2, seed=0)\n"
        "tn.linear(np.ones((3, 6)), w); tn.adjoint.linear(np.ones((3, 6)), w, np.ones((3, 6)))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the autograd Function ------------------------------------------------------------------------------
def _graph_names(y, depth=3):
    names, frontier = set(), [y.grad_fn]
    for _ in range(depth):
        names |= {type(f).__name__ for f in frontier if f is not None}
        frontier = [n for f in frontier if f is not None for n, _ in f.next_functions]
    return " ".join(sorted(names))


def _layer(dtype=torch.float64, seed=0, rows=(3, 2, 2), cols=(2, 3, 2), rank=3):
    w = tn.random_ttm(rows, cols, rank, seed=seed).to("torch", dtype=str(dtype).replace("torch.", ""))
    return [c.clone().requires_grad_() for c in w.cores]


@pytest.mark.parametrize("forward", FORWARD)
@pytest.mark.parametrize("backward", BACKWARD)
def test_gradcheck_every_forward_backward_pair(forward, backward):
    torch.manual_seed(0)
    cores = _layer(rows=(2, 2, 2), cols=(2, 1, 2), rank=2)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(8, dtype=torch.float64, requires_grad=True)
    plan = tn.contract.plan_linear((3, 4), cores)
    path = plan.forward_candidates[2].path
    backward_path = {c.strategy: c.path for c in plan.backward_candidates}[backward]
    function = autograd.function_for("cpu")
    route = autograd.Route(forward, path, backward, backward_path, False, None)
    assert torch.autograd.gradcheck(lambda x, b, *cs: function.apply(route, x, b, *cs), (x, bias, *cores))


GRAD_CASES = {"all": (True, True), "x only (frozen cores)": (True, False), "cores only": (False, True)}


@pytest.mark.parametrize("needs", GRAD_CASES, ids=str)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("keep", [False, True], ids=["rebuilt in backward", "save_weight"])
def test_gradcheck_dense_backward_for_each_set_of_inputs_needing_grad(needs, with_bias, keep):
    # without grad x the backward forms only the halves of W's product; with save_weight the forward
    # keeps what the backward reads (W for grad x, the halves for the cores)
    torch.manual_seed(1)
    x_grad, cores_grad = GRAD_CASES[needs]
    cores = [c.detach().requires_grad_(cores_grad) for c in _layer(rows=(2, 3, 2), cols=(2, 1, 3), rank=2)]
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=x_grad)
    bias = torch.randn(12, dtype=torch.float64, requires_grad=True) if with_bias else None
    function = autograd.function_for("cpu")
    inputs = (x, bias, *cores) if with_bias else (x, *cores)

    def f(x, *rest):
        b, cs = (rest[0], rest[1:]) if with_bias else (None, rest)
        route = autograd.Route("rebuild", None, "dense", None, keep, None)
        return autograd.first_output(function.apply(route, x, b, *cs))

    assert torch.autograd.gradcheck(f, inputs)


@given(st.integers(1, 300), st.sampled_from(["float32", "float64"]), st.booleans(), st.integers(0, 2**16))
def test_save_weight_gives_the_default_gradients(tokens, dtype, with_bias, seed):
    torch.manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    cores = _layer(torch_dtype, seed)
    x = torch.randn(tokens, 12, dtype=torch_dtype, requires_grad=True)
    bias = torch.randn(12, dtype=torch_dtype, requires_grad=True) if with_bias else None
    gy = torch.randn(tokens, 12, dtype=torch_dtype)
    params = [x, *cores] + ([bias] if with_bias else [])
    results = []
    for keep in (False, True):
        y = tn.linear(x, tn.TTM(cores), bias, save_weight=keep)
        results.append((y, torch.autograd.grad(y, params, gy)))
    (y0, g0), (y1, g1) = results
    # same kernels in the same order: the kept W is the one the default's backward rebuilds
    _close(as_numpy(y1.detach()), as_numpy(y0.detach()), dtype, "y")
    for k, (a, b) in enumerate(zip(g1, g0)):
        _close(as_numpy(a), as_numpy(b), dtype, f"grad {k}")


@pytest.mark.parametrize("needs", GRAD_CASES, ids=str)
@pytest.mark.parametrize("autocast", [False, True])
def test_save_weight_keeps_what_the_backward_reads_when_the_forward_rebuilds(needs, autocast):
    x_grad, cores_grad = GRAD_CASES[needs]
    cores = [
        c.detach().requires_grad_(cores_grad)
        for c in _layer(torch.float32, rows=(4, 4, 4), cols=(4, 4, 2), rank=8)
    ]
    x = torch.randn(4096, 32, requires_grad=x_grad)
    # split 1: the left half is core 0 itself (a view, nothing new); the right half (r1, m2 n2 m3 n3) is new
    assert _linear.split_point([tuple(c.shape) for c in cores]) == 1
    assert tn.contract.plan_linear(tuple(x.shape), cores).forward.strategy == "rebuild"
    # under autocast x and the cores are cast to bf16 once (as nn.Linear casts its input and weight) and
    # saved in bf16; W and the halves come out of bf16 GEMMs
    size = 2 if autocast else 4

    def run(keep):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return saved_storage_bytes(lambda: tn.linear(x, tn.TTM(cores), save_weight=keep))

    base = (x.numel() + sum(c.numel() for c in cores)) * size
    assert run(False) == base
    extra = (64 * 32 if x_grad else 0) + (8 * 4 * 4 * 4 * 2 if cores_grad else 0)
    assert run(True) == base + extra * size


def test_save_weight_keeps_nothing_when_the_forward_is_factorised():
    # one token through a 512 x 512 layer is planned as a factorised sweep: there is no W to keep
    cores = _layer(torch.float32, rows=(8, 8, 8), cols=(8, 8, 8), rank=4)
    single = torch.randn(1, 512, requires_grad=True)
    assert tn.contract.plan_linear((1, 512), cores).forward.strategy == "sweep"
    kept = saved_storage_bytes(lambda: tn.linear(single, tn.TTM(cores), save_weight=True))
    assert (
        kept
        == saved_storage_bytes(lambda: tn.linear(single, tn.TTM(cores)))
        == 4 * (512 + sum(c.numel() for c in cores))
    )


def test_save_weight_must_be_a_bool():
    cores = _layer()
    with pytest.raises(TypeError, match="linear: save_weight must be True or False, got 1"):
        tn.linear(torch.randn(2, 12, dtype=torch.float64), tn.TTM(cores), save_weight=1)


@given(st.integers(1, 40), st.sampled_from(["float32", "float64"]), st.booleans(), st.integers(0, 2**16))
def test_gradients_equal_plain_autograd(tokens, dtype, with_bias, seed):
    torch.manual_seed(seed)
    torch_dtype = getattr(torch, dtype)
    cores = _layer(torch_dtype, seed)
    ref_cores = [c.detach().clone().requires_grad_() for c in cores]
    x = torch.randn(tokens, 12, dtype=torch_dtype, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    bias = torch.randn(12, dtype=torch_dtype, requires_grad=True) if with_bias else None
    bias_ref = bias.detach().clone().requires_grad_() if with_bias else None
    gy = torch.randn(tokens, 12, dtype=torch_dtype)
    y = tn.linear(x, tn.TTM(cores), bias)
    y.backward(gy)
    y_ref = x_ref @ tn.TTM(ref_cores).full().T + (0 if bias_ref is None else bias_ref)
    y_ref.backward(gy)
    assert "TTMLinearFunction" in _graph_names(y)
    _close(y, y_ref, dtype)
    _close(x.grad, x_ref.grad, dtype)
    for c, r in zip(cores, ref_cores):
        _close(c.grad, r.grad, dtype)
    if with_bias:
        _close(bias.grad, bias_ref.grad, dtype)


@given(
    tst.ttms(backend="torch", max_ncores=4, max_size=4, max_rank=4),
    st.integers(1, 40),
    st.booleans(),
    st.sampled_from(["no_grad", "inference_mode", "frozen"]),
    st.integers(0, 2**16),
)
def test_without_gradients_the_kernels_run_alone_and_give_the_same_result(w, tokens, with_bias, mode, seed):
    # no_grad / inference_mode / nothing requiring a gradient: the planned kernels run without the autograd
    # Function (its apply is host time decoding does not need); the result is the Function's, bit for bit
    rows, cols = w.shape
    x = _x((tokens, cols), w.cores[0], seed)
    bias = _x((rows,), w.cores[0], seed + 1) if with_bias else None
    tracked = [c.clone().requires_grad_() for c in w.cores]
    expected = tn.linear(x, tn.TTM(tracked), bias)
    assert "TTMLinearFunction" in _graph_names(expected)
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(mode, torch.enable_grad)
    failing = mock.patch.object(binding, "function_for", side_effect=AssertionError("the Function was used"))
    with failing, context():
        y = tn.linear(x, w, bias)
    assert y.grad_fn is None and not y.requires_grad
    assert torch.equal(y, expected.detach())


def test_only_requested_gradients_are_computed():
    cores = _layer()
    x = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    frozen = [c.detach() for c in cores]
    tn.linear(x, tn.TTM(frozen)).sum().backward()
    assert x.grad is not None
    x2 = torch.randn(4, 12, dtype=torch.float64)
    tn.linear(x2, tn.TTM(cores)).sum().backward()
    assert all(c.grad is not None for c in cores)


@pytest.mark.parametrize("tokens", [1, 4096])
def test_saved_bytes_are_at_most_x_and_cores(tokens):
    cores = _layer(torch.float32, rows=(4, 4, 4), cols=(4, 4, 2), rank=8)
    x = torch.randn(tokens, 32, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = tn.linear(x, tn.TTM(cores))
    limit = x.numel() * 4 + sum(c.numel() * 4 for c in cores)
    assert sum(saved) <= limit, (saved, limit)
    assert sum(saved) > 0
    # plain autograd through one einsum keeps far more (the reference point)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tn.contract.einsum(tn.contract.linear_equation(3), x.reshape(tokens, 4, 4, 2), *cores)
    assert sum(saved) > limit
    y.sum().backward()


def test_double_backward_is_exact():
    # differentiating the input gradient reaches the cores (it used to be silently cut from them)
    cores = _layer()
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(tn.linear(x, tn.TTM(cores)).square().sum(), x, create_graph=True)
    (ref,) = torch.autograd.grad((x @ tn.TTM(cores).full().T).square().sum(), x, create_graph=True)
    torch.testing.assert_close(gx, ref)
    grads = torch.autograd.grad(gx.square().sum(), cores)
    expected = torch.autograd.grad(ref.square().sum(), cores)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


def test_autocast_bf16_on_cpu():
    torch.manual_seed(0)
    cores = _layer(torch.float32, rows=(4, 4, 4), cols=(4, 4, 4), rank=4)
    x = torch.randn(16, 64, requires_grad=True)
    bias = torch.randn(64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = tn.linear(x, tn.TTM(cores), bias)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    assert x.grad.dtype == torch.float32 and all(c.grad.dtype == torch.float32 for c in cores)
    ref = x.detach() @ tn.TTM([c.detach() for c in cores]).full().T + bias.detach()
    scale = float(ref.abs().max())
    assert float((y.detach().float() - ref).abs().max()) <= 3e-2 * scale
    # bf16 input with fp32 cores is accepted under autocast only
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tn.linear(x.detach().bfloat16(), tn.TTM(cores)).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="use one dtype"):
        tn.linear(x.detach().bfloat16(), tn.TTM(cores))


@COMPILE_WARNINGS[0]
@COMPILE_WARNINGS[1]
@COMPILE_WARNINGS[2]
@pytest.mark.parametrize("route", [("rebuild", "dense"), ("sweep", "sweep"), ("einsum", "einsum")])
def test_torch_compile_fullgraph_runs_every_route(route, force_route):
    # each planned route traces without a graph break (the einsum route's list bookkeeping used to break
    # the graph), with and without gradients; the plan is forced so every route is reached
    torch._dynamo.reset()
    force_route(*route)
    torch.manual_seed(0)
    cores = _layer(torch.float32)
    w = tn.TTM(cores)
    bias = torch.randn(12, requires_grad=True)
    x = torch.randn(5, 12)

    def f(x):
        return tn.linear(x, w, bias)

    planned = binding._planned_route(x, cores, None, save_weight=False)
    assert (planned.forward, planned.backward) == route
    y_eager = f(x)
    grads_eager = torch.autograd.grad(y_eager.square().sum(), [*cores, bias])
    y_comp = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    grads_comp = torch.autograd.grad(y_comp.square().sum(), [*cores, bias])
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_comp, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        y_free = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(y_free, y_eager.detach(), rtol=1e-5, atol=1e-5)


@COMPILE_WARNINGS[0]
@COMPILE_WARNINGS[1]
@COMPILE_WARNINGS[2]
def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    cores = _layer(torch.float32)
    w = tn.TTM(cores)
    bias = torch.randn(12, requires_grad=True)

    def f(x):
        return tn.linear(x, w, bias)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    for tokens in (3, 300):
        x = torch.randn(tokens, 12)
        y_eager = f(x)
        grads_eager = torch.autograd.grad(y_eager.square().sum(), [*cores, bias])
        y_comp = compiled(x)
        grads_comp = torch.autograd.grad(y_comp.square().sum(), [*cores, bias])
        np.testing.assert_allclose(as_numpy(y_comp), as_numpy(y_eager), rtol=1e-5, atol=1e-5)
        for a, b in zip(grads_comp, grads_eager):
            np.testing.assert_allclose(as_numpy(a), as_numpy(b), rtol=1e-4, atol=1e-4)
