"""A tokenizer or token cache file is used only for what it was built from: a valid file of another corpus
or tokenizer under this corpus's cache name is rebuilt (with a warning), never silently trained on, and a file
the cache did not write under its name is an error that leaves the file as it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tensornet.gpt2.app import _checkpoint, _data
from tensornet.gpt2.app._data import cached_tokenizer, cached_tokens, encode, stdlib_corpus, token_cache_path


@pytest.fixture(scope="module")
def corpora():
    """Two different corpora (the first 20,000 and 12,000 characters of the embedded one)."""
    return stdlib_corpus(max_chars=20000), stdlib_corpus(max_chars=12000)


def cache_of(shared, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    return cache


def tokenizer_file(cache: Path, corpus, vocab: int) -> Path:
    """The tokenizer cache file of ``corpus`` (whatever the version's naming), found by its fingerprint."""
    (found,) = (cache / "tokenizers").glob(f"bpe-{vocab}-{corpus.fingerprint()}*")
    return found


def test_a_token_file_of_another_corpus_is_rebuilt_not_used(shared, tmp_path, corpora):
    a, b = corpora
    cache = cache_of(shared, tmp_path)
    tokenizer = cached_tokenizer(a, 300, cache)
    cached_tokens(a, tokenizer, cache)
    foreign = token_cache_path(b, tokenizer, cache)
    foreign.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(token_cache_path(a, tokenizer, cache), foreign)  # valid, but corpus a's tokens
    with pytest.warns(UserWarning, match="another corpus"):
        train_ids, val_ids = cached_tokens(b, tokenizer, cache)
    assert torch.equal(train_ids, encode(tokenizer, b.train)) and torch.equal(
        val_ids, encode(tokenizer, b.val)
    )
    assert torch.equal(cached_tokens(b, tokenizer, cache)[0], train_ids)  # replaced: no warning now


def test_a_token_file_of_another_tokenizer_is_rebuilt_not_used(shared, tmp_path, corpora):
    a, _ = corpora
    cache = cache_of(shared, tmp_path)
    small, large = cached_tokenizer(a, 300, cache), cached_tokenizer(a, 320, cache)
    cached_tokens(a, small, cache)
    foreign = token_cache_path(a, large, cache)
    shutil.copyfile(token_cache_path(a, small, cache), foreign)  # its ids all fit the larger vocabulary
    with pytest.warns(UserWarning, match="another tokenizer"):
        train_ids, _ = cached_tokens(a, large, cache)
    assert torch.equal(train_ids, encode(large, a.train))


def test_a_tokenizer_of_another_corpus_is_retrained_not_used(shared, tmp_path, corpora):
    a, b = corpora
    cache = cache_of(shared, tmp_path)
    cached_tokenizer(a, 300, cache)
    own = tokenizer_file(cache, a, 300)
    foreign = own.with_name(own.name.replace(a.fingerprint(), b.fingerprint()))
    shutil.copyfile(own, foreign)  # corpus a's tokenizer under corpus b's name
    with pytest.warns(UserWarning, match="another corpus"):
        tokenizer = cached_tokenizer(b, 300, cache)
    assert tokenizer.to_str() == _data.train_tokenizer(b.train, 300).to_str()


def test_files_the_cache_did_not_write_are_errors_and_kept(shared, tmp_path, corpora):
    a, _ = corpora
    cache = cache_of(shared, tmp_path)
    tokenizer = cached_tokenizer(a, 300, cache)
    path = token_cache_path(a, tokenizer, cache)
    user_files = {
        # a valid token file with a checksum, written by someone else (no record of what it was built from)
        "tokens": lambda: _checkpoint.save_tensors(
            path, {"train": torch.tensor([1, 2]), "val": torch.tensor([3])}
        ),
        "text": lambda: path.write_text("my notes"),
    }
    for name, plant in user_files.items():
        plant()
        before = path.read_bytes()
        with pytest.raises(ValueError, match="tensornet did not write it") as info:
            cached_tokens(a, tokenizer, cache)
        assert str(path) in str(info.value) and path.read_bytes() == before, name
    tokenizer_path = tokenizer_file(cache, a, 300)
    tokenizer_path.write_text(tokenizer.to_str())  # a valid tokenizer.json, not the cache's record
    with pytest.raises(ValueError, match="tensornet did not write it"):
        cached_tokenizer(a, 300, cache)
    assert tokenizer_path.read_text() == tokenizer.to_str()


def test_a_cache_record_whose_tokenizer_has_no_separator_is_retrained(shared, tmp_path, corpora):
    a, _ = corpora
    cache = cache_of(shared, tmp_path)
    cached_tokenizer(a, 300, cache)
    path = tokenizer_file(cache, a, 300)
    record = json.loads(path.read_text())  # the cache's own record (its identity matches), crafted
    record["tokenizer"]["added_tokens"] = []
    record["tokenizer"]["model"]["vocab"].pop("<|endoftext|>")
    path.write_text(json.dumps(record))
    tokenizer = cached_tokenizer(a, 300, cache)  # not a tokenizer that encode cannot separate documents with
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    assert tokenizer.to_str() == _data.train_tokenizer(a.train, 300).to_str()
