"""Where a TT layer's product takes W from: one weight source per layer state, chosen when the state changes."""

from __future__ import annotations

import copy
import pickle

import torch
from torch import nn

import tensornet as tn
from tensornet.nn import TiedTTHead, TTEmbedding, TTMLinear, dense_weights, materialize
from tensornet.nn._source import CachedDense, Factored, GroupWeights


def _layer() -> TTMLinear:
    return TTMLinear(12, 12, rank=2, in_shape=(3, 4), out_shape=(3, 4), dtype=torch.float64)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(_layer(), nn.Tanh(), _layer())


def _dense(layer: TTMLinear) -> torch.Tensor:
    return tn.full(tn.TTM(list(layer.cores))).detach()


def test_the_source_follows_the_cache_and_the_group():
    model = _model()
    layer = model[0]
    assert layer._weight_source == Factored()
    layer.cache_dense_weight()
    assert layer._weight_source == CachedDense(Factored())
    materialize(model)
    assert layer._weight_source == CachedDense(GroupWeights(Factored()))
    layer.cache_dense_weight(False)
    assert layer._weight_source == GroupWeights(Factored())
    materialize(model, enabled=False)
    assert layer._weight_source == Factored() and model[2]._weight_source == Factored()


def test_every_source_gives_the_dense_product():
    model = _model()
    layer = model[0]
    x = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    expected = x.detach() @ _dense(layer).T + layer.bias.detach()
    torch.testing.assert_close(layer(x), expected)  # factorised
    with torch.no_grad(), dense_weights(model):
        assert isinstance(layer._weight_source, CachedDense)
        torch.testing.assert_close(layer(x), expected)
        assert layer._dense_cache.entries  # the cached matrix served the call
    materialize(model)
    y = layer(x)  # under gradients: the group's rebuilt W
    assert model[0].__dict__["_weight_group"][0]._weights
    torch.testing.assert_close(y, expected)


def test_a_layer_saved_before_sources_chooses_one_at_its_first_call():
    model = _model()
    materialize(model)
    layer = pickle.loads(pickle.dumps(model))[0]
    assert layer._weight_source == GroupWeights(Factored())
    del layer.__dict__["_weight_source"]  # as a module pickled by an older tensornet
    x = torch.randn(3, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ _dense(layer).T + layer.bias.detach())
    assert layer._weight_source == GroupWeights(Factored())


def test_copies_keep_their_source_and_the_tied_head_uses_the_embeddings():
    model = _model()
    model[0].cache_dense_weight()
    clone = copy.deepcopy(model[0])
    assert clone._weight_source == CachedDense(Factored()) and clone._dense_cache is not model[0]._dense_cache
    assert not any("source" in key for key in model[0].state_dict())  # chosen from the state, not saved
    embedding = TTEmbedding(24, 8, rank=2, voc_shape=(4, 6), emb_shape=(2, 4), dtype=torch.float64)
    head = TiedTTHead(embedding)
    embedding.cache_dense_weight()
    x = torch.randn(2, 8, dtype=torch.float64)
    with torch.no_grad():
        logits = head(x)
    assert embedding._dense_cache.entries
    torch.testing.assert_close(logits, x @ tn.full(tn.TTM(list(embedding.cores))).detach()[:24].T)
