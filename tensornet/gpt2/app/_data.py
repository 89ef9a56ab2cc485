"""The byte-level BPE tokenizer, the tokenizer and token caches, and deterministic token batches.

A cache file records what it was built from (SHA-256s of the corpus and tokenizer, the vocabulary size, the
encoding rule) and is used only for that: the cache's own file of something else, or a damaged one, is rebuilt
with a warning; a file at a cache name without the cache's record is an error, and left as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import files as _files
from . import _checkpoint
from ._corpus import Corpus, existing_path
from ._corpus import load_corpus as load_corpus  # re-exported: the commands read corpora from here
from ._corpus import stdlib_corpus as stdlib_corpus
from ._files import atomic_write

EOT = "<|endoftext|>"
TOKENIZER_BYTES = 256 * 2**20  # the most a tokenizer file may hold (GPT-2's tokenizer.json: 1.4 MB)
_ENCODING = "byte-level BPE ids of each document, then <|endoftext|>"  # recorded: another rule never reads it


def default_cache_dir() -> Path:
    """``$TENSORNET_CACHE`` if set, else ``~/.cache/tensornet``."""
    return Path(os.environ.get("TENSORNET_CACHE") or Path.home() / ".cache" / "tensornet")


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE (GPT-2's scheme) trained on ``texts``, with ``<|endoftext|>`` as token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"train_tokenizer: vocab_size must be >= 257 (256 bytes + {EOT}), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def load_tokenizer(path: str | os.PathLike, *, flag: str = "--tokenizer"):
    """A saved tokenizer: a ``tokenizer.json`` file, or a folder with it or GPT-2's vocab.json and merges.txt.

    Raises ValueError naming ``flag`` and the file for anything else (or a file over ``TOKENIZER_BYTES``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    p = existing_path(path, flag)
    gpt2 = p.is_dir() and (p / "vocab.json").exists() and not (p / "tokenizer.json").exists()
    names = [p / "vocab.json", p / "merges.txt"] if gpt2 else [p / "tokenizer.json" if p.is_dir() else p]
    raw = [_files.read_small_file(name, TOKENIZER_BYTES, flag) for name in names]  # a FIFO would never end
    try:
        if not gpt2:
            return _with_eot(Tokenizer.from_str(raw[0].decode("utf-8")))
        tokenizer = Tokenizer(models.BPE.from_file(*map(str, names)))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        return _with_eot(tokenizer)
    except Exception as err:  # tokenizers raises a bare Exception for a malformed file
        shown = " and ".join(repr(str(name)) for name in names)
        raise ValueError(
            f"{flag}: cannot read a tokenizer from {shown} ({type(err).__name__}: {err})"
        ) from None


def _with_eot(tokenizer):
    if tokenizer.token_to_id(EOT) is None:
        raise ValueError(f"it has no {EOT!r} token, which separates documents")
    return tokenizer


def _cached(path: Path, identity: dict, read: Callable[[Path], dict], load: Callable[[dict], Any]) -> Any:
    """The cache file's value if it was built from ``identity``, else None with its folder made (the rule above).

    Raises ValueError for a file at ``path`` that ``read`` finds no cache record in.
    """
    if os.path.lexists(path):
        try:
            record = read(path)
            if record.get("format") != identity["format"]:
                raise ValueError(f"it has no {identity['format']!r} record")
        except Exception as err:  # whatever it is, it is not the cache's file
            raise ValueError(
                f"{str(path)!r} is at the cache's name, but tensornet did not write it ({err}), so it is neither "
                "used nor replaced: move it away, or give another --cache-dir (or $TENSORNET_CACHE)"
            ) from None
        try:
            other = [key for key, value in identity.items() if record.get(key) != value]
            if other:
                raise ValueError(f"it was built from another {' and '.join(other)}")
            return load(record)
        except Exception as err:  # the cache's own file, damaged: rebuilt
            warnings.warn(f"rebuilding the cache file {str(path)!r}: {err}", stacklevel=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    _files.remove_stale_tmp(path.parent, [path.name], live=False)  # what a killed writer left
    return None


def tokenizer_cache_path(corpus: Corpus, vocab_size: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`cached_tokenizer` keeps the tokenizer of ``corpus`` and ``vocab_size``."""
    return (
        Path(cache_dir or default_cache_dir())
        / "tokenizers"
        / f"bpe-{vocab_size}-{corpus.fingerprint()}-v2.json"
    )


def cached_tokenizer(corpus: Corpus, vocab_size: int, cache_dir: str | os.PathLike | None = None):
    """Train the BPE on ``corpus.train`` once and keep it under ``cache_dir/tokenizers`` (the module's rule).

    Raises ValueError for a file at its cache name that the cache did not write.
    """
    from tokenizers import Tokenizer

    path = tokenizer_cache_path(corpus, vocab_size, cache_dir)
    identity = {"format": "tensornet-tokenizer-cache", "corpus": corpus.digest, "vocab_size": vocab_size}
    read = lambda p: json.loads(_files.read_small_file(p, TOKENIZER_BYTES, "cached_tokenizer"))  # noqa: E731
    load = lambda record: _with_eot(Tokenizer.from_str(json.dumps(record["tokenizer"])))  # noqa: E731
    tokenizer = _cached(path, identity, read, load)
    if tokenizer is None:
        tokenizer = train_tokenizer(corpus.train, vocab_size)
        data = json.dumps(identity | {"version": 2, "tokenizer": json.loads(tokenizer.to_str())}) + "\n"
        atomic_write(path, lambda f: f.write(data.encode("utf-8")))
    return tokenizer


def tokenizer_id(tokenizer) -> str:
    """A short hash of the tokenizer's JSON, naming its token caches."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


def encode(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """All documents as one int64 token stream, each followed by ``<|endoftext|>``."""
    eot = tokenizer.token_to_id(EOT)
    ids = [i for enc in tokenizer.encode_batch(list(texts)) for i in [*enc.ids, eot]]
    return torch.tensor(ids, dtype=torch.int64)


def token_cache_path(corpus: Corpus, tokenizer, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`cached_tokens` keeps the tokens of ``corpus`` under ``tokenizer``."""
    name = f"{corpus.fingerprint()}-{tokenizer_id(tokenizer)}-v2.safetensors"
    return Path(cache_dir or default_cache_dir()) / "tokens" / name


def token_identity(corpus: Corpus, tokenizer) -> dict[str, str]:
    """What a token cache file was built from, as recorded in its metadata."""
    digest = hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()
    return {"format": "tensornet-tokens", "corpus": corpus.digest, "tokenizer": digest, "encoding": _ENCODING}


def cached_tokens(corpus: Corpus, tokenizer, cache_dir: str | os.PathLike | None = None):
    """``(train_ids, val_ids)``, encoded once per (corpus, tokenizer), cached as int32 safetensors.

    The module's rule; a failed checksum, wrong shapes or dtypes, ids outside the vocabulary: damaged. Raises
    ValueError for a file at its cache name that the cache did not write.
    """
    path = token_cache_path(corpus, tokenizer, cache_dir)
    identity = token_identity(corpus, tokenizer)
    read = lambda p: _files.read_safetensors(p, "not a safetensors file", shapes=True)[0]  # noqa: E731
    load = lambda _: _checkpoint.load_token_file(path, tokenizer.get_vocab_size(), "cached_tokens")  # noqa: E731
    cached = _cached(path, identity, read, load)
    if cached is not None:
        return cached
    train, val = encode(tokenizer, corpus.train), encode(tokenizer, corpus.val)
    _checkpoint.save_tensors(path, {"train": train.int(), "val": val.int()}, metadata=identity)
    return train, val


def train_batch(
    tokens: torch.Tensor,
    *,
    step: int,
    seed: int,
    batch_size: int,
    block_size: int,
    rank: int = 0,
    world: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``step``-th batch ``(x, y)``, each ``(batch_size // world, block_size)``, ``y`` shifted by one token.

    Window offsets come from a generator seeded by ``(seed, step)``: the data order is a function of the step
    (exact resume), the global batch the same for any number of DDP processes; ``rank`` takes its slice.
    ``tokens`` must hold ``block_size + 2`` (:func:`check_windows`), ``world`` divide ``batch_size``.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    offsets = torch.randint(0, tokens.numel() - block_size - 1, (batch_size,), generator=gen)
    local = batch_size // world
    offsets = offsets[rank * local : (rank + 1) * local]
    chunk = tokens[offsets[:, None] + torch.arange(block_size + 1)[None, :]]  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


def check_windows(
    train_ids: torch.Tensor | None, val_ids: torch.Tensor | None, block: int, eval_tokens: int = 0
) -> None:
    """Enough tokens (those given) for windows of ``block`` tokens, and ``eval_tokens`` (0: all) one window.

    Raises ValueError saying which text is short and the flags that change it.
    """
    for name, ids, least in (("training", train_ids, block + 2), ("validation", val_ids, block + 1)):
        if ids is not None and ids.numel() < least:
            raise ValueError(
                f"the {name} text has {ids.numel():,} tokens; --block-size {block} needs at least {least:,}: "
                "give more text (--data, --max-chars) or a smaller --block-size"
            )
    if 0 < eval_tokens < block:
        raise ValueError(
            f"--eval-tokens {eval_tokens} is fewer than one window of --block-size {block} tokens; give 0 (all) "
            "or at least the block size"
        )


def val_batches(tokens: torch.Tensor, *, block_size: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping validation windows ``(n, block_size + 1)`` (consecutive windows share one token).

    Raises ValueError (:func:`check_windows`) when there is not one window.
    """
    check_windows(None, tokens, block_size, max_tokens or 0)
    n = eval_token_count(tokens.numel(), block_size, max_tokens) // block_size
    return tokens[torch.arange(n)[:, None] * block_size + torch.arange(block_size + 1)[None, :]]


def eval_token_count(ntokens: int, block_size: int, max_tokens: int | None = None) -> int:
    """How many tokens an evaluation of ``ntokens`` tokens (at most ``max_tokens``) predicts: whole windows."""
    usable = ntokens - 1 if max_tokens is None else min(ntokens - 1, max_tokens)
    return max(usable, 0) // block_size * block_size
