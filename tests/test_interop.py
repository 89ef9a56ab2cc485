"""tensornet.interop against the real peer libraries: each peer's own dense reconstruction equals tn.full, each
peer's own decomposition converts back to the tensor it stands for, and round trips are exact.

A peer that is not installed skips its tests with a reason (CI installs them all: the ``interop`` extra).
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import as_numpy
from hypothesis import given
from hypothesis import strategies as st

import tensornet as tn
from tensornet import interop
from tensornet.testing import strategies as tst


def _peer(name: str, pip: str):
    with warnings.catch_warnings():  # torchTT warns on import that its optional C++ extension is missing
        warnings.simplefilter("ignore")
        return pytest.importorskip(name, reason=f"{pip} is not installed (tensornet's 'interop' extra)")


def _dense(t) -> np.ndarray:
    return as_numpy(tn.full(t))


def _same_train(a, b) -> None:
    """Same type and cores (values exactly, compared on the host)."""
    assert type(a) is type(b) and a.ranks == b.ranks and a.shape == b.shape
    for x, y in zip(a.cores, b.cores):
        np.testing.assert_array_equal(as_numpy(x), as_numpy(y))


ANY_TT = tst.tts(dtype=tst.dtypes(complex=True))
ANY_TTM = tst.ttms(dtype=tst.dtypes(complex=True))


def _close(actual, expected, t) -> None:
    scale = max(float(np.max(np.abs(expected))), 1e-300)
    rtol = 1e-5 if str(t.dtype).endswith(("float32", "complex64")) else 1e-12
    np.testing.assert_allclose(as_numpy(actual), expected, atol=rtol * scale, rtol=0)


# --- torchTT -------------------------------------------------------------------------------------------
@given(t=st.one_of(ANY_TT, ANY_TTM))
def test_torchtt_round_trip_and_full(t):
    _peer("torchtt", "torchTT")
    x = interop.to_torchtt(t)
    full = x.full()
    if isinstance(t, tn.TTM):
        assert x.is_ttm and list(x.M) == list(t.row_shape) and list(x.N) == list(t.col_shape)
        full = full.reshape(t.shape)  # torchTT's full of a TT-matrix is (m_1..m_d, n_1..n_d)
    _close(full, _dense(t), t)
    back = interop.from_torchtt(x)
    assert back.backend == "torch" and back.dtype == x.cores[0].dtype
    _same_train(back, t.to("torch"))


def test_torchtt_decomposition_converts_back():
    torchtt = _peer("torchtt", "torchTT")
    rng = np.random.default_rng(0)
    x = tn.full(tn.random_tt((4, 5, 3, 4), 3, seed=1))
    peer = torchtt.TT(torch.tensor(x), eps=1e-12)
    np.testing.assert_allclose(_dense(interop.from_torchtt(peer)), peer.full().numpy(), atol=1e-12)
    a = rng.standard_normal((2, 3, 4, 5)) + 1j * rng.standard_normal((2, 3, 4, 5))  # (m1, m2, n1, n2)
    op = torchtt.TT(torch.tensor(a), [(2, 4), (3, 5)], eps=1e-12)
    got = interop.from_torchtt(op)
    assert isinstance(got, tn.TTM) and got.row_shape == (2, 3) and got.col_shape == (4, 5)
    np.testing.assert_allclose(_dense(got), a.reshape(6, 20), atol=1e-12)


def test_torchtt_gradients_flow_back():
    _peer("torchtt", "torchTT")
    t = tn.random_tt((3, 4, 5), 2, seed=0, like=torch.zeros(1))
    cores = [c.clone().requires_grad_() for c in t.cores]
    interop.to_torchtt(tn.TT(cores)).full().square().sum().backward()
    reference = [c.clone().requires_grad_() for c in t.cores]
    tn.full(tn.TT(reference)).square().sum().backward()
    for a, b in zip(cores, reference):
        torch.testing.assert_close(a.grad, b.grad)


# --- tntorch -------------------------------------------------------------------------------------------
@given(t=st.one_of(ANY_TT, ANY_TTM))
def test_tntorch_round_trip_and_full(t):
    tntorch = _peer("tntorch", "tntorch")
    x = interop.to_tntorch(t)
    assert isinstance(x, tntorch.TTMatrix if isinstance(t, tn.TTM) else tntorch.Tensor)
    _close(x.torch(), _dense(t), t)
    _same_train(interop.from_tntorch(x), t.to("torch"))


def test_tntorch_decompositions_convert_back():
    tntorch = _peer("tntorch", "tntorch")
    x = torch.tensor(tn.full(tn.random_tt((4, 5, 6), 2, seed=3)))
    for peer in (
        tntorch.Tensor(x, ranks_tt=3),
        tntorch.Tensor(x, ranks_tucker=3, ranks_tt=2),  # Tucker factors: cast to TT by tntorch
        tntorch.Tensor(x, ranks_cp=2),  # CP cores
    ):
        got = interop.from_tntorch(peer)
        assert isinstance(got, tn.TT) and got.shape == (4, 5, 6) and got.dtype == torch.float64
        np.testing.assert_allclose(_dense(got), peer.torch().numpy(), atol=1e-10)
    m = torch.randn(6, 20, dtype=torch.float64)
    op = tntorch.TTMatrix(m, ranks=[4], input_dims=[2, 3], output_dims=[4, 5])
    got = interop.from_tntorch(op)
    assert got.row_shape == (2, 3) and got.col_shape == (4, 5)
    np.testing.assert_allclose(_dense(got), op.torch().numpy(), atol=1e-12)
    batch = tntorch.Tensor(torch.randn(2, 3, 4), batch=True)
    with pytest.raises(ValueError, match="batch of tntorch trains"):
        interop.from_tntorch(batch)


# --- teneva --------------------------------------------------------------------------------------------
@given(t=ANY_TT)
def test_teneva_round_trip_and_full(t):
    teneva = _peer("teneva", "teneva")
    y = interop.to_teneva(t)
    assert all(isinstance(c, np.ndarray) and c.flags.writeable for c in y)
    _close(teneva.full(y), _dense(t), t)
    _same_train(interop.from_teneva(y), t.to("numpy"))


def test_teneva_decomposition_converts_back_and_ttm_is_refused():
    teneva = _peer("teneva", "teneva")
    x = tn.full(tn.random_tt((4, 5, 3, 4), 3, seed=1))
    y = teneva.svd(x, e=1e-12)
    np.testing.assert_allclose(_dense(interop.from_teneva(y)), teneva.full(y), atol=1e-12)
    with pytest.raises(TypeError, match="to_teneva: expected a tensornet TT, got TTM"):
        interop.to_teneva(tn.random_ttm((2, 3), (3, 2), 2))
    with pytest.raises(TypeError, match="list of numpy arrays"):
        interop.from_teneva([torch.zeros(1, 2, 1)])


# --- tensorly ------------------------------------------------------------------------------------------
@given(t=st.one_of(ANY_TT, ANY_TTM))
def test_tensorly_round_trip_and_full(t):
    tensorly = _peer("tensorly", "tensorly")
    from tensorly.tt_matrix import TTMatrix, tt_matrix_to_matrix
    from tensorly.tt_tensor import TTTensor, tt_to_tensor

    x = interop.to_tensorly(t)
    if isinstance(t, tn.TTM):
        assert isinstance(x, TTMatrix)
        full = (
            tt_matrix_to_matrix(x)
            if t.backend == "numpy"
            else _with_backend(tensorly, tt_matrix_to_matrix, x)
        )
    else:
        assert isinstance(x, TTTensor)
        full = tt_to_tensor(x) if t.backend == "numpy" else _with_backend(tensorly, tt_to_tensor, x)
    _close(full, _dense(t), t)
    _same_train(interop.from_tensorly(x), t)


def _with_backend(tensorly, fn, x):
    with tensorly.backend_context("pytorch"):
        return fn(x)


def test_tensorly_decompositions_convert_back():
    _peer("tensorly", "tensorly")
    from tensorly.decomposition import tensor_train, tensor_train_matrix

    x = tn.full(tn.random_tt((4, 5, 6), 2, seed=2))
    peer = tensor_train(x, rank=[1, 2, 2, 1])
    np.testing.assert_allclose(_dense(interop.from_tensorly(peer)), peer.to_tensor(), atol=1e-12)
    a = tn.full(tn.random_ttm((2, 3), (4, 5), 2, seed=3)).reshape(2, 3, 4, 5)  # (m1, m2, n1, n2)
    op = tensor_train_matrix(a, rank=[1, 8, 1])
    got = interop.from_tensorly(op)
    assert got.row_shape == (2, 3) and got.col_shape == (4, 5)
    np.testing.assert_allclose(_dense(got), a.reshape(6, 20), atol=1e-12)
    np.testing.assert_allclose(
        _dense(interop.from_tensorly(list(peer.factors))), peer.to_tensor(), atol=1e-12
    )


# --- quimb ---------------------------------------------------------------------------------------------
@given(t=st.one_of(ANY_TT, ANY_TTM))
def test_quimb_round_trip_and_full(t):
    qtn = _peer("quimb.tensor", "quimb")
    x = interop.to_quimb(t)
    assert isinstance(x, qtn.MatrixProductOperator if isinstance(t, tn.TTM) else qtn.MatrixProductState)
    dense = x.to_dense()
    _close(dense.reshape(t.shape) if isinstance(t, tn.TT) else dense, _dense(t), t)
    _same_train(interop.from_quimb(x), t)


def test_quimb_operator_applies_as_matvec_and_decompositions_convert_back():
    qtn = _peer("quimb.tensor", "quimb")
    a = tn.random_ttm((2, 3, 2), (3, 2, 4), 2, seed=0, dtype="complex128")
    v = tn.random_tt(a.col_shape, 3, seed=1, dtype="complex128")
    applied = interop.to_quimb(a).apply(interop.to_quimb(v))
    np.testing.assert_allclose(applied.to_dense().ravel(), _dense(a @ v).ravel(), atol=1e-12)
    # quimb's own decompositions, its tensors' indices in its own orders
    psi = np.random.default_rng(0).standard_normal(2 * 3 * 4 * 2)
    mps = qtn.MatrixProductState.from_dense(psi, dims=[2, 3, 4, 2])
    np.testing.assert_allclose(_dense(interop.from_quimb(mps)).ravel(), psi, atol=1e-12)
    m = np.random.default_rng(1).standard_normal((6, 6))
    mpo = qtn.MatrixProductOperator.from_dense(m, dims=[2, 3])
    np.testing.assert_allclose(_dense(interop.from_quimb(mpo)), m, atol=1e-12)
    ring = qtn.MPS_rand_state(4, bond_dim=2, cyclic=True)
    with pytest.raises(ValueError, match="periodic boundaries"):
        interop.from_quimb(ring)


def test_quimb_holds_torch_arrays():
    _peer("quimb.tensor", "quimb")
    t = tn.random_tt((3, 4, 5), 2, seed=0, like=torch.zeros(1))
    x = interop.to_quimb(t)
    assert all(isinstance(a, torch.Tensor) for a in x.arrays)
    _same_train(interop.from_quimb(x), t)


# --- shared behaviour ----------------------------------------------------------------------------------
CONVERTERS = [
    (interop.to_torchtt, interop.from_torchtt, "torchtt", "torchTT"),
    (interop.to_tntorch, interop.from_tntorch, "tntorch", "tntorch"),
    (interop.to_teneva, interop.from_teneva, "teneva", "teneva"),
    (interop.to_tensorly, interop.from_tensorly, "tensorly", "tensorly"),
    (interop.to_quimb, interop.from_quimb, "quimb", "quimb"),
]


@pytest.mark.parametrize(("to", "back", "module", "pip"), CONVERTERS)
def test_bad_input_names_the_converter(to, back, module, pip):
    _peer(module, pip)
    with pytest.raises(TypeError, match=rf"{to.__name__}: expected a tensornet"):
        to(np.zeros((2, 2)))
    with pytest.raises(TypeError, match=rf"{back.__name__}: expected"):
        back("not a train")


@pytest.mark.parametrize(("to", "back", "module", "pip"), CONVERTERS)
def test_a_missing_peer_is_named(monkeypatch, to, back, module, pip):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail as if it were not installed
    monkeypatch.setitem(sys.modules, f"{module}.tensor", None)
    monkeypatch.setitem(sys.modules, f"{module}.tt_tensor", None)
    monkeypatch.setitem(sys.modules, f"{module}.tt_matrix", None)
    with pytest.raises(
        ModuleNotFoundError, match=rf"{to.__name__}: needs {pip}, which is not installed; pip install"
    ):
        to(tn.random_tt((2, 3), 1))
    if module != "teneva":  # from_teneva reads plain lists of numpy arrays: it needs no teneva
        with pytest.raises(ModuleNotFoundError, match=rf"{back.__name__}: needs {pip}"):
            back([np.zeros((1, 2, 1))])


def test_a_missing_peer_for_from_teneva_is_not_needed():
    """from_teneva reads plain numpy lists: it works without teneva."""
    _same_train(interop.from_teneva([np.ones((1, 2, 1))]), tn.TT([np.ones((1, 2, 1))]))


def test_importing_interop_imports_no_peer():
    code = (
        "import sys, tensornet.interop, tensornet as tn; tn.interop.to_teneva; "
        "print(sorted(m for m in ('torch', 'torchtt', 'tntorch', 'teneva', 'tensorly', 'quimb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_layouts_agree_entry_by_entry():
    """One entry by hand per peer: the index conventions, not only the reconstructions, agree."""
    a = tn.random_ttm((2, 3), (4, 5), 2, seed=5)
    i, j = (1, 2), (3, 4)
    by_hand = (a.cores[0][0, i[0], j[0], :] @ a.cores[1][:, i[1], j[1], 0]).item()
    row, col = i[0] * 3 + i[1], j[0] * 5 + j[1]
    assert _dense(a)[row, col] == pytest.approx(by_hand)
    if _has("quimb"):
        mpo = interop.to_quimb(a)
        assert mpo[0].ind_size(mpo.upper_ind(0)) == 2 and mpo[0].ind_size(mpo.lower_ind(0)) == 4
        assert mpo.to_dense()[row, col] == pytest.approx(by_hand)
    if _has("tntorch"):
        assert interop.to_tntorch(a).torch()[row, col].item() == pytest.approx(by_hand)


def _has(module: str) -> bool:
    try:
        _peer(module, module)
    except pytest.skip.Exception:
        return False
    return True
