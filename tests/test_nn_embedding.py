"""TTEmbedding: lookups equal rows of the rebuilt table (values and gradients), conversion, bad arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import as_numpy, dense_ttm, gpu

nn = torch.nn

import tensornet as tn  # noqa: E402
from tensornet.nn import RankClipWarning, TTEmbedding  # noqa: E402

CASES = [
    # (num_embeddings, embedding_dim, voc_shape, emb_shape, rank)
    (60, 24, (3, 4, 5), (2, 3, 4), 3),
    (57, 12, (3, 4, 5), (3, 4, 1), (2, 3)),  # padded vocabulary (60 rows, 57 used), a 1 in emb_shape
    (10, 6, (10,), (6,), 1),  # one core
    (101, 8, None, None, 2),  # a prime vocabulary, padded automatically
]


def make(num, dim, voc_shape, emb_shape, rank, dtype=torch.float64):
    torch.manual_seed(0)
    return TTEmbedding(num, dim, rank=rank, voc_shape=voc_shape, emb_shape=emb_shape, dtype=dtype, init=1.0)


@pytest.mark.parametrize(("num", "dim", "voc_shape", "emb_shape", "rank"), CASES)
@pytest.mark.parametrize("lookup", ["auto", "gather"])
def test_lookup_equals_rows_of_the_full_table_with_gradients(num, dim, voc_shape, emb_shape, rank, lookup):
    layer = make(num, dim, voc_shape, emb_shape, rank)
    layer.lookup = lookup
    d = len(layer.voc_shape)
    # 28 tokens: "auto" contracts the first two cores over all their prefixes (<= 28 of them) first.
    assert layer.prefix_cores(28) == (1 if lookup == "gather" or d < 3 else 2)
    assert math.prod(layer.voc_shape) >= num
    table = torch.tensor(dense_ttm(layer.weight))  # entry by entry, independent of tensornet
    ids = torch.randint(0, num, (4, 7))
    ids[0, 0], ids[0, 1] = 0, num - 1
    out = layer(ids)
    assert out.shape == (4, 7, dim) and out.dtype == torch.float64
    np.testing.assert_allclose(as_numpy(out), as_numpy(table[ids]), rtol=1e-12, atol=1e-12)
    # Gradients: the same cores rebuilt into the table by autograd, then plain indexing.
    grad_out = torch.randn(4, 7, dim, dtype=torch.float64)
    out.backward(grad_out)
    cores = [c.detach().clone().requires_grad_(True) for c in layer.cores]
    tn.full(tn.TTM(cores))[ids].backward(grad_out)
    for k, (grad, ref) in enumerate(zip(layer.core_grads, cores)):
        np.testing.assert_allclose(
            as_numpy(grad), as_numpy(ref.grad), rtol=1e-10, atol=1e-12, err_msg=f"core {k}"
        )


def test_lookup_any_index_shape_and_int32():
    layer = make(60, 24, (3, 4, 5), (2, 3, 4), 3)
    full = tn.full(layer.weight).detach()
    for ids in (
        torch.tensor(7),
        torch.arange(60),
        torch.randint(0, 60, (2, 3, 4)),
        torch.zeros(0, 3, dtype=torch.long),
    ):
        out = layer(ids)
        assert out.shape == (*ids.shape, 24)
        np.testing.assert_allclose(as_numpy(out), as_numpy(full[ids]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        as_numpy(layer(torch.arange(60, dtype=torch.int32))), as_numpy(full), atol=1e-12
    )


def test_gpt2_vocabulary_is_padded_to_a_balanced_size():
    torch.manual_seed(0)
    layer = TTEmbedding(50257, 768, rank=8)
    assert math.prod(layer.voc_shape) >= 50257 and max(layer.voc_shape) <= math.ceil(1.25 * 50257 ** (1 / 3))
    assert layer.emb_shape == (8, 8, 12) and layer.weight.shape == (math.prod(layer.voc_shape), 768)
    assert "50257 (padded to" in repr(layer) and "compression" in repr(layer)
    ids = torch.tensor([0, 50256, 12345])
    rows = tn.full(layer.weight).detach()[ids]
    np.testing.assert_allclose(as_numpy(layer(ids)), as_numpy(rows), rtol=1e-5, atol=1e-7)


def test_init_std_and_state_dict():
    torch.manual_seed(0)
    layer = TTEmbedding(1000, 64, rank=8)
    table = tn.full(layer.weight).detach().double()
    assert float(table.square().mean().sqrt()) == pytest.approx(0.02, rel=1e-5)
    other = TTEmbedding(1000, 64, rank=8)
    other.load_state_dict(layer.state_dict())
    ids = torch.randint(0, 1000, (9,))
    assert torch.equal(other(ids), layer(ids))


@pytest.mark.parametrize("scale", [1e300, 1e-300, 1e-310])
def test_from_embedding_reports_its_error_at_every_finite_scale(scale):
    # NaN near 1e300 (the squares overflowed), 0.0 near 1e-300 (they underflowed)
    torch.manual_seed(0)
    embedding = nn.Embedding(60, 24, dtype=torch.float64)
    expected = TTEmbedding.from_embedding(embedding, rank=3).conversion_error
    with torch.no_grad():
        embedding.weight.mul_(scale)
    assert 0.1 < expected < 1
    assert TTEmbedding.from_embedding(embedding, rank=3).conversion_error == pytest.approx(expected, rel=1e-9)


def test_a_state_of_another_factorisation_is_refused_and_the_same_loads():
    # (3, 4, 5) x (2, 3, 4) and (5, 4, 3) x (4, 3, 2) at equal ranks pack as many entries: it loaded silently
    saved = TTEmbedding(60, 24, rank=3, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4))
    layer = TTEmbedding(60, 24, rank=3, voc_shape=(5, 4, 3), emb_shape=(4, 3, 2))
    assert saved.nparams == layer.nparams
    with pytest.raises(
        RuntimeError, match=r"voc_shape=\(3, 4, 5\), emb_shape=\(2, 3, 4\).*voc_shape=\(5, 4, 3\)"
    ):
        layer.load_state_dict(saved.state_dict(), strict=False)
    same = TTEmbedding(60, 24, rank=3, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4))
    same.load_state_dict(saved.state_dict())
    ids = torch.arange(60)
    assert torch.equal(same(ids), saved(ids))


@pytest.mark.parametrize("eps", [0.3, 1e-8])
def test_from_embedding_error_within_eps_and_to_embedding(eps):
    w = tn.random_ttm((3, 4, 5), (2, 3, 4), 2, seed=0).full()[:57]
    w = w + 0.1 * np.random.default_rng(1).standard_normal(w.shape)
    embedding = nn.Embedding(57, 24, dtype=torch.float64)
    with torch.no_grad():
        embedding.weight.copy_(torch.as_tensor(w))
    layer = TTEmbedding.from_embedding(embedding, eps=eps, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4))
    assert layer.num_embeddings == 57 and layer.conversion_error <= eps
    back = layer.to_embedding()
    assert back.weight.shape == (57, 24)
    measured = float(
        torch.linalg.norm(back.weight - embedding.weight).detach()
        / torch.linalg.norm(embedding.weight).detach()
    )
    assert layer.conversion_error == pytest.approx(measured, rel=1e-6, abs=1e-12)
    ids = torch.randint(0, 57, (3, 5))
    np.testing.assert_allclose(as_numpy(layer(ids)), as_numpy(back(ids)), rtol=1e-10, atol=1e-12)


BAD = [
    (
        dict(rank=2, voc_shape=(3, 4, 4)),
        ValueError,
        r"voc_shape \(3, 4, 4\) multiplies to 48 < num_embeddings = 60",
    ),
    (
        dict(rank=2, emb_shape=(2, 3, 5)),
        ValueError,
        r"emb_shape \(2, 3, 5\) multiplies to 30 but embedding_dim = 24",
    ),
    (
        dict(rank=2, voc_shape=(6, 10), emb_shape=(2, 3, 4)),
        ValueError,
        "voc_shape .* has 2 factors but emb_shape .* has 3",
    ),
    (dict(rank=0), ValueError, "rank must be >= 1"),
    (dict(rank=2, init="normal"), ValueError, "init must be one of"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        TTEmbedding(60, 24, **kwargs)
    assert str(info.value).startswith("TTEmbedding: ")


@pytest.mark.filterwarnings("ignore:Complex modules are a new feature")  # torch, on .to(complex)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.bool])
def test_dtypes_other_than_real_floating_are_refused_at_construction(dtype):
    # complex built and looked up; int64 and bool gave torch's "Only Tensors of floating point ..."
    match = "do not support complex dtypes yet" if dtype.is_complex else "hold trainable cores in one of"
    with pytest.raises(TypeError, match=rf"TTEmbedding: dtype is {dtype}.*{match}"):
        TTEmbedding(60, 24, rank=3, dtype=dtype)
    if dtype.is_complex:
        with pytest.raises(TypeError, match=r"TTEmbedding\.from_embedding: the embedding's dtype is .*yet"):
            TTEmbedding.from_embedding(nn.Embedding(60, 24, dtype=dtype), rank=3)
        layer = TTEmbedding(60, 24, rank=3).to(dtype)
        with pytest.raises(TypeError, match=r"TTEmbedding: the cores' dtype is torch\.complex64.*yet"):
            layer(torch.arange(5))


def test_bad_lookups_and_conversions():
    layer = make(57, 24, (3, 4, 5), (2, 3, 4), 2)
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 57\), got values from 0 to 57"):
        layer(torch.tensor([0, 57]))  # a padded row is not a token
    with pytest.raises(IndexError, match="from -1"):
        layer(torch.tensor([-1]))
    with pytest.raises(TypeError, match="indices must be an int64 or int32 tensor"):
        layer(torch.tensor([1.0]))
    with pytest.warns(RankClipWarning, match="bond 1: 100 -> 6"):
        TTEmbedding(60, 24, rank=100, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4))
    with pytest.raises(ValueError, match="max_norm"):
        TTEmbedding.from_embedding(nn.Embedding(60, 24, max_norm=1.0), rank=2)
    with pytest.raises(ValueError, match=r"padding_idx must lie in \[-60, 60\), got 60"):
        TTEmbedding(60, 24, rank=2, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4), padding_idx=60)
    with pytest.raises(TypeError, match="padding_idx must be an int or None, got float"):
        TTEmbedding(60, 24, rank=2, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4), padding_idx=1.0)
    with pytest.raises(TypeError, match=r"expected an nn\.Embedding"):
        TTEmbedding.from_embedding(nn.Linear(2, 2), rank=2)
    with pytest.raises(ValueError, match="give rank, eps or both"):
        TTEmbedding.from_embedding(nn.Embedding(60, 24))


@gpu
@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:Attempting to run cuBLAS, but there was no current CUDA context")
def test_cuda_lookup_and_gradients_match_cpu():
    layer = make(57, 24, (3, 4, 5), (2, 3, 4), 3, dtype=torch.float32)
    ids = torch.randint(0, 57, (4, 9))
    expected = layer(ids)
    cuda = layer.to("cuda")
    out = cuda(ids.cuda())
    assert out.device.type == "cuda"
    np.testing.assert_allclose(as_numpy(out), as_numpy(expected), rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    assert cuda.packed_cores.grad is not None and cuda.packed_cores.grad.device.type == "cuda"


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_torch_compile_matches_eager_without_graph_breaks():
    layer = make(57, 24, (3, 4, 5), (2, 3, 4), 3, dtype=torch.float32)
    ids = torch.randint(0, 57, (4, 7))
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager")
    out, expected = compiled(ids), layer(ids)
    np.testing.assert_allclose(as_numpy(out), as_numpy(expected), rtol=1e-6, atol=1e-7)
    grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
    grads_eager = torch.autograd.grad(expected.square().sum(), list(layer.parameters()))
    for a, b in zip(grads, grads_eager):
        np.testing.assert_allclose(as_numpy(a), as_numpy(b), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
    assert torch._dynamo.explain(layer)(ids).graph_break_count == 0


@pytest.mark.parametrize(("num", "dim", "voc_shape", "emb_shape", "rank"), CASES)
def test_dense_table_cache_gathers_the_same_rows_and_follows_updates(num, dim, voc_shape, emb_shape, rank):
    layer = make(num, dim, voc_shape, emb_shape, rank).cache_dense_weight()
    ids = torch.randint(0, num, (3, 5))
    with torch.no_grad():
        out = layer(ids)
        table = torch.tensor(dense_ttm(layer.weight))
        np.testing.assert_allclose(as_numpy(out), as_numpy(table[ids]), rtol=1e-12, atol=1e-12)
        assert layer.dense_table(ids.device, torch.float64) is layer.dense_table(ids.device, torch.float64)
        layer.cores[0].mul_(-1.0)  # in place, as an optimizer step: the cached table is rebuilt
        np.testing.assert_allclose(as_numpy(layer(ids)), -as_numpy(out), rtol=1e-12, atol=1e-12)
        with pytest.raises(IndexError, match="indices must lie in"):  # still checked with the cache on
            layer(torch.tensor([num]))
    # a gradient is needed: the TT lookup runs and the cores get gradients
    layer(ids).sum().backward()
    assert layer.packed_cores.grad is not None
    assert layer.cache_dense_weight(False).dense_table(ids.device, torch.float64) is None


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize(("num", "dim", "voc_shape", "emb_shape", "rank"), CASES[:2])
def test_padding_idx_reads_zeros_and_gets_no_gradient(num, dim, voc_shape, emb_shape, rank, cached):
    torch.manual_seed(0)
    layer = TTEmbedding(
        num,
        dim,
        rank=rank,
        voc_shape=voc_shape,
        emb_shape=emb_shape,
        dtype=torch.float64,
        init=1.0,
        padding_idx=-1,  # counts from the end, as nn.Embedding
    )
    assert layer.padding_idx == num - 1 and f"padding_idx={num - 1}" in repr(layer)
    ids = torch.randint(0, num, (4, 7))
    ids[0, :3] = num - 1
    table = torch.tensor(dense_ttm(layer.weight))
    keep = (ids != num - 1).unsqueeze(-1).double()
    if cached:
        layer.cache_dense_weight()
        with torch.no_grad():
            out = layer(ids)
        np.testing.assert_allclose(as_numpy(out), as_numpy(table[ids] * keep), rtol=1e-12, atol=1e-12)
        return
    out = layer(ids)
    assert torch.count_nonzero(out[0, :3]) == 0
    np.testing.assert_allclose(as_numpy(out), as_numpy(table[ids] * keep), rtol=1e-12, atol=1e-12)
    grad_out = torch.randn(4, 7, dim, dtype=torch.float64)
    out.backward(grad_out)
    cores = [c.detach().clone().requires_grad_(True) for c in layer.cores]
    (tn.full(tn.TTM(cores))[ids] * keep).backward(grad_out)
    for got, want in zip(layer.core_grads, cores):
        np.testing.assert_allclose(as_numpy(got), as_numpy(want.grad), rtol=1e-10, atol=1e-12)
    # only padding tokens: zeros out, zero gradients
    layer.zero_grad()
    layer(torch.full((5,), num - 1)).sum().backward()
    assert torch.count_nonzero(layer.packed_cores.grad) == 0


def test_from_embedding_carries_padding_idx_and_to_embedding_round_trips():
    torch.manual_seed(0)
    dense = nn.Embedding(60, 24, padding_idx=3, dtype=torch.float64)
    layer = TTEmbedding.from_embedding(dense, rank=None, eps=1e-12, voc_shape=(3, 4, 5), emb_shape=(2, 3, 4))
    assert layer.padding_idx == 3 and layer.conversion_error < 1e-10
    ids = torch.tensor([[0, 3, 59, 3], [7, 8, 3, 1]])
    np.testing.assert_allclose(as_numpy(layer(ids)), as_numpy(dense(ids)), rtol=1e-10, atol=1e-12)
    back = layer.to_embedding()
    assert back.padding_idx == 3 and torch.count_nonzero(back.weight[3]) == 0
    np.testing.assert_allclose(as_numpy(back(ids)), as_numpy(layer(ids)), rtol=1e-12, atol=1e-12)


def test_tied_head_is_the_linear_forward_on_the_embedding_cores(monkeypatch):
    from tensornet.nn import TiedTTHead, TTMLinear, dense_weights

    torch.manual_seed(0)
    embedding = TTEmbedding(50, 12, rank=3, voc_shape=(4, 4, 4), emb_shape=(2, 2, 3)).double()
    head = TiedTTHead(embedding)
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)
    table = tn.full(embedding.weight)  # (64, 12): the padded vocabulary
    # the cores were validated once, at construction: a forward builds no TTM (no per-call checks)
    built = []
    real_init = tn.TTM.__init__
    monkeypatch.setattr(
        tn.TTM, "__init__", lambda self, *a, **k: (built.append(1), real_init(self, *a, **k))[1]
    )
    logits = head(x)
    assert not built and logits.shape == (2, 5, 50)
    np.testing.assert_allclose(as_numpy(logits), as_numpy(x @ table[:50].T), rtol=1e-12, atol=1e-12)
    logits.sum().backward()  # gradients reach the embedding's cores through the shared product
    assert embedding.packed_cores.grad is not None and x.grad is not None
    # the same path as TTMLinear's: a linear layer on the same cores gives the same (padded) logits
    with torch.no_grad():
        linear = TTMLinear.from_ttm(embedding.weight, bias=None)
    with torch.no_grad(), dense_weights(head.embedding):  # and the cached dense table under dense_weights
        np.testing.assert_allclose(as_numpy(head(x)), as_numpy(linear(x)[..., :50]), rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match=r"TiedTTHead: input must be a torch\.Tensor"):
        head(np.zeros((2, 12)))
