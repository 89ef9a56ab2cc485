"""The byte-level BPE tokenizer, the tokenizer and token caches, and deterministic token batches.

The corpora are ``_corpus``'s (re-exported here).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from .. import files as _files
from . import _checkpoint
from ._corpus import (
    Corpus,
    existing_path,
    load_corpus,
    read_text_file,
    stdlib_corpus,
    stdlib_files,
    text_corpus,
)

__all__ = [  # the corpus names are _corpus's, imported from here too
    "EOT",
    "Corpus",
    "ForeignCacheFile",
    "cached_tokenizer",
    "cached_tokens",
    "default_cache_dir",
    "encode",
    "eval_token_count",
    "load_corpus",
    "load_tokenizer",
    "read_text_file",
    "stdlib_corpus",
    "stdlib_files",
    "text_corpus",
    "token_cache_path",
    "tokenizer_cache_path",
    "train_batch",
    "train_tokenizer",
    "val_batches",
]

EOT = "<|endoftext|>"


def default_cache_dir() -> Path:
    """``$TENSORNET_CACHE`` if set, else ``~/.cache/tensornet``."""
    env = os.environ.get("TENSORNET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tensornet"


# ----------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE (GPT-2's scheme) trained on ``texts``, with ``<|endoftext|>`` as token 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"train_tokenizer: vocab_size must be >= 257 (256 bytes + {EOT}), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


TOKENIZER_BYTES = 256 * 2**20  # the most a tokenizer file may hold (GPT-2's tokenizer.json: 1.4 MB)
# the caches' own file names: only these (and their temporary names) are ever removed or replaced there. The
# "-v2" files record what they were built from (older, unmarked cache files are never read, nor removed)
_TOKENIZER_CACHE = re.compile(r"bpe-\d+-[0-9a-f]{16}-v2\.json")
_TOKENS_CACHE = re.compile(r"[0-9a-f]{16}-[0-9a-f]{16}-v2\.safetensors")
TOKENIZER_CACHE_FORMAT = "tensornet-tokenizer-cache"
TOKENS_FORMAT = "tensornet-tokens"
# how the token cache turns documents into ids (encode): recorded, so that another rule never reads it
_ENCODING = "byte-level BPE ids of each document, then <|endoftext|>"


class ForeignCacheFile(ValueError):
    """A file at one of the caches' names that the cache did not write: refused, and left alone."""


def _tokenizer_text(path: Path, flag: str) -> str:
    raw = _files.read_small_file(path, TOKENIZER_BYTES, flag)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{flag}: {str(path)!r} is not UTF-8 text") from None


def load_tokenizer(path: str | os.PathLike, *, flag: str = "--tokenizer"):
    """A saved tokenizer: a ``tokenizer.json`` file, or a folder with it or GPT-2's vocab and merges.

    The folder holds ``tokenizer.json`` or GPT-2's ``vocab.json`` + ``merges.txt``. The files must be regular
    files of at most ``TOKENIZER_BYTES``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    p = existing_path(path, flag, "a tokenizer.json file or a tokenizer folder")
    if p.is_dir():
        if (p / "tokenizer.json").exists():
            p = p / "tokenizer.json"
        elif (p / "vocab.json").exists() and (p / "merges.txt").exists():
            vocab_text = _tokenizer_text(p / "vocab.json", flag)
            merges_text = _tokenizer_text(p / "merges.txt", flag)
            try:
                vocab = _files.parse_json(vocab_text)
            except ValueError as err:
                raise ValueError(f"{flag}: {str(p / 'vocab.json')!r} is not valid JSON ({err})") from None
            if not (
                isinstance(vocab, dict)
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vocab.values())
            ):
                raise ValueError(
                    f"{flag}: {str(p / 'vocab.json')!r} is not a GPT-2 vocabulary (an object of token: id)"
                )
            merges = []
            for n, line in enumerate(merges_text.splitlines(), 1):
                if not line.strip() or (n == 1 and line.startswith("#version")):
                    continue
                pair = line.split(" ")
                if len(pair) != 2:
                    raise ValueError(
                        f"{flag}: line {n} of {str(p / 'merges.txt')!r} is not a merge (two tokens separated "
                        f"by one space): {line[:80]!r}"
                    )
                merges.append((pair[0], pair[1]))
            try:
                tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
            except Exception as err:  # tokenizers raises a bare Exception for inconsistent files
                raise ValueError(
                    f"{flag}: {str(p / 'vocab.json')!r} and {str(p / 'merges.txt')!r} do not form a BPE "
                    f"tokenizer: {err}"
                ) from None
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
            _check_eot(tokenizer, p, flag)
            return tokenizer
        else:
            raise ValueError(
                f"{flag}: folder {str(p)!r} has neither tokenizer.json nor vocab.json+merges.txt"
            )
    text = _tokenizer_text(p, flag)
    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception for malformed JSON
        raise ValueError(f"{flag}: cannot read {str(p)!r} as a tokenizers JSON file: {err}") from None
    _check_eot(tokenizer, p, flag)
    return tokenizer


def _check_eot(tokenizer, path: Path, flag: str = "--tokenizer") -> None:
    if tokenizer.token_to_id(EOT) is None:
        raise ValueError(f"{flag}: {str(path)!r} has no {EOT!r} token, which separates documents")


def _tokenizer_json(tokenizer) -> bytes:
    return tokenizer.to_str(pretty=True).encode("utf-8")  # what Tokenizer.save writes


def tokenizer_cache_path(corpus: Corpus, vocab_size: int, cache_dir: str | os.PathLike | None = None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / "tokenizers" / f"bpe-{vocab_size}-{corpus.fingerprint()}-v2.json"


def _foreign(where: str, path: Path, what: str) -> ForeignCacheFile:
    return ForeignCacheFile(
        f"{where}: {str(path)!r} is at the cache's name but {what}; tensornet did not write it, so it is neither "
        "used nor replaced: move it away, or give another --cache-dir (or $TENSORNET_CACHE)"
    )


def _read_cached_tokenizer(path: Path, corpus: Corpus, vocab_size: int):
    """The tokenizer the cache file ``path`` holds, checked to be the cache's own and built from ``corpus``.

    Raises :class:`ForeignCacheFile` for a file the cache did not write (not its JSON record) and ValueError for
    the cache's own record of another corpus or vocabulary size, or a damaged one.
    """
    from tokenizers import Tokenizer

    where = "cached_tokenizer"
    try:
        record = _files.parse_json(_files.read_small_file(path, TOKENIZER_BYTES, where))
    except ValueError as err:
        raise _foreign(where, path, f"it is not a tokenizer cache record ({err})") from None
    if not (isinstance(record, dict) and record.get("format") == TOKENIZER_CACHE_FORMAT):
        raise _foreign(where, path, f"it has no {TOKENIZER_CACHE_FORMAT!r} record")
    built = {"corpus": corpus.digest, "vocab_size": vocab_size}
    other = [key for key, value in built.items() if record.get(key) != value]
    if other:
        raise ValueError(f"{str(path)!r} was trained on another {' and '.join(other)}")
    try:
        tokenizer = Tokenizer.from_str(json.dumps(record.get("tokenizer")))
    except Exception as err:  # tokenizers raises a bare Exception for a malformed tokenizer
        raise ValueError(f"{str(path)!r} holds no readable tokenizer ({err})") from None
    _check_eot(tokenizer, path, where)
    return tokenizer


def cached_tokenizer(corpus: Corpus, vocab_size: int, cache_dir: str | os.PathLike | None = None):
    """Train the BPE on ``corpus.train`` once and keep it under ``cache_dir/tokenizers``.

    The cache file records the corpus (its SHA-256) and the vocabulary size it was trained for, and is used
    only when both are this call's. The cache's own file of another corpus (a copied file) or a damaged one is
    retrained and replaced, with a warning; a file the cache did not write under its name is an error, left
    as it is.
    """
    path = tokenizer_cache_path(corpus, vocab_size, cache_dir)
    if path.exists() or path.is_symlink():
        try:
            return _read_cached_tokenizer(path, corpus, vocab_size)
        except ForeignCacheFile:
            raise
        except ValueError as err:
            warnings.warn(f"cached_tokenizer: rebuilding the tokenizer cache: {err}", stacklevel=2)
    tokenizer = train_tokenizer(corpus.train, vocab_size)
    _cache_dir(path.parent, _TOKENIZER_CACHE)
    record = {
        "format": TOKENIZER_CACHE_FORMAT,
        "version": 2,
        "corpus": corpus.digest,
        "vocab_size": vocab_size,
        "tokenizer": json.loads(tokenizer.to_str()),
    }
    data = (json.dumps(record) + "\n").encode("utf-8")
    _files.atomic_write(path, lambda f: f.write(data))
    return tokenizer


def _cache_dir(folder: Path, names: re.Pattern[str]) -> None:
    """Create a cache folder and clear leftovers of writers that were killed (only the cache's own names)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(
            f"--cache-dir: cannot create the cache folder {str(folder)!r} ({err.strerror or err}); "
            "give a writable --cache-dir or set TENSORNET_CACHE"
        ) from None
    _files.remove_stale_tmp(folder, names, live=False)


def tokenizer_digest(tokenizer) -> str:
    """The SHA-256 of the tokenizer's JSON (recorded in the token caches built with it)."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()


def tokenizer_id(tokenizer) -> str:
    return tokenizer_digest(tokenizer)[:16]


def encode(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """All documents as one int64 token stream, each followed by ``<|endoftext|>``."""
    eot = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for enc in tokenizer.encode_batch(list(texts)):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.int64)


def token_cache_path(corpus: Corpus, tokenizer, cache_dir: str | os.PathLike | None = None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / "tokens" / f"{corpus.fingerprint()}-{tokenizer_id(tokenizer)}-v2.safetensors"


def token_identity(corpus: Corpus, tokenizer) -> dict[str, str]:
    """What a token cache file was built from, as recorded in its metadata."""
    return {
        "format": TOKENS_FORMAT,
        "corpus": corpus.digest,
        "tokenizer": tokenizer_digest(tokenizer),
        "encoding": _ENCODING,
    }


def cached_tokens(corpus: Corpus, tokenizer, cache_dir: str | os.PathLike | None = None):
    """``(train_ids, val_ids)``, encoded once per (corpus, tokenizer) and cached as int32 safetensors.

    The cache file records the corpus and the tokenizer (their SHA-256) and the encoding rule, and is used
    only when all three are this call's. The cache's own file that fails a check (another corpus or tokenizer,
    a failed checksum, wrong shapes or dtypes, ids outside the vocabulary) is rebuilt and replaced, with a
    warning; a file the cache did not write under its name (unreadable, or without the record) is an error,
    left as it is.
    """
    path = token_cache_path(corpus, tokenizer, cache_dir)
    identity = token_identity(corpus, tokenizer)
    if path.exists() or path.is_symlink():
        where = "cached_tokens"
        try:
            metadata, _ = _checkpoint.read_safetensors(path, f"{where}: {str(path)!r} is not a token file")
        except ValueError as err:
            raise _foreign(where, path, f"it is not a readable safetensors file ({err})") from None
        if metadata.get("format") != TOKENS_FORMAT:
            raise _foreign(where, path, f"it has no {TOKENS_FORMAT!r} record")
        try:
            return _checkpoint.load_token_file(path, tokenizer.get_vocab_size(), where, identity=identity)
        except ValueError as err:
            warnings.warn(f"cached_tokens: rebuilding the token cache: {err}", stacklevel=2)
    train, val = encode(tokenizer, corpus.train), encode(tokenizer, corpus.val)
    _cache_dir(path.parent, _TOKENS_CACHE)
    _checkpoint.save_tensors(path, {"train": train.int(), "val": val.int()}, metadata=identity)
    return train, val


# ------------------------------------------------------------------------------------------------ batches
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
    """The ``step``-th training batch: ``batch_size`` windows at offsets drawn from a seeded generator.

    The generator is seeded by ``(seed, step)``, so the data order is a pure function of the step (exact
    resume) and the same global batch is used whatever the number of DDP processes; ``rank`` takes its
    contiguous slice of it.

    Returns ``(x, y)``, each ``(batch_size // world, block_size)``, with ``y`` shifted by one token.
    """
    if tokens.numel() < block_size + 2:
        raise ValueError(
            f"train_batch: the training text has {tokens.numel()} tokens, fewer than block_size + 2 = "
            f"{block_size + 2}; give more text or a smaller --block-size"
        )
    if batch_size % world:
        raise ValueError(f"batch size {batch_size} is not divisible by the number of processes {world}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    offsets = torch.randint(0, tokens.numel() - block_size - 1, (batch_size,), generator=gen)
    local = batch_size // world
    offsets = offsets[rank * local : (rank + 1) * local]
    idx = offsets[:, None] + torch.arange(block_size + 1)[None, :]  # (B, T+1)
    chunk = tokens[idx]
    return chunk[:, :-1], chunk[:, 1:]


def val_batches(tokens: torch.Tensor, *, block_size: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping validation windows ``(n, block_size + 1)`` (consecutive windows share one token)."""
    usable = tokens.numel() - 1
    if max_tokens is not None and max_tokens < min(usable, block_size):
        raise ValueError(
            f"--eval-tokens {max_tokens} is fewer than one window of --block-size {block_size} tokens; "
            "give 0 (all) or at least the block size"
        )
    if max_tokens is not None:
        usable = min(usable, max_tokens)
    n = usable // block_size
    if n < 1:
        raise ValueError(
            f"the validation text has {tokens.numel()} tokens, fewer than --block-size + 1 = {block_size + 1}; "
            "give more text or a smaller --block-size"
        )
    idx = torch.arange(n)[:, None] * block_size + torch.arange(block_size + 1)[None, :]
    return tokens[idx]


def eval_token_count(ntokens: int, block_size: int, max_tokens: int | None = None) -> int:
    """How many tokens an evaluation of ``ntokens`` validation tokens predicts.

    That is ``val_batches``'s windows times ``block_size`` (the last token of the stream starts no window;
    ``max_tokens`` caps the tokens used).
    """
    usable = ntokens - 1 if max_tokens is None else min(ntokens - 1, max_tokens)
    return max(usable, 0) // block_size * block_size
