"""The corpus, the byte-level BPE tokenizer and the token caches, and the token batches.

A cache file records what it was built from and is used only for that: its own file of something else or a
damaged one is rebuilt (a warning); a file at its name without its record is an error, and left as it is.
"""

import functools
import hashlib
import itertools
import json
import os
import sysconfig
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

from .. import files as _files
from . import _checkpoint

EOT = "<|endoftext|>"
TOKENIZER_BYTES = 256 * 2**20  # the most a tokenizer file may hold (GPT-2's tokenizer.json: 1.4 MB)
# how the token cache turns documents into ids (encode): recorded, so that another rule never reads it
_TOKENS = {"format": "tensornet-tokens", "encoding": f"byte-level BPE ids of each document, then {EOT}"}
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
PathLike = str | os.PathLike


@dataclass(frozen=True)
class Corpus:
    """Training and validation documents, where they came from, and what a figure's title calls them."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    description: str
    name: str = "text corpus"

    @functools.cached_property
    def digest(self) -> str:
        """The SHA-256 of the whole content, split by split (recorded in the caches built from it)."""
        digest = hashlib.sha256()
        for split in (self.train, self.val):
            for text in split:
                digest.update(text.encode("utf-8") + b"\x00")
            digest.update(b"\x01")
        return digest.hexdigest()

    def fingerprint(self) -> str:
        """A short hash of the whole content, naming the tokenizer and token caches."""
        return self.digest[:16]


def stdlib_files() -> list[Path]:
    """The standard library's ``*.py`` files but site/dist-packages, tests and ``_sysconfigdata*``, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rels = sorted((p.relative_to(root) for p in root.rglob("*.py")), key=lambda rel: rel.as_posix())
    rels = [r for r in rels if not (r.name.startswith("_sysconfigdata") or r.parts[0].startswith("config-"))]
    return [root / rel for rel in rels if _EXCLUDED_DIRS.isdisjoint(rel.parts[:-1])]


def read_text_file(path: Path) -> str:
    """The text of ``path``; ValueError naming it for anything but a regular UTF-8 text file."""
    try:
        if not path.is_file():  # a FIFO or a device would never end
            raise ValueError("it does not exist or is not a regular file")
        if b"\x00" in (raw := path.read_bytes())[:65536]:
            raise ValueError("it looks binary: it contains NUL bytes")
        return raw.decode("utf-8")
    except ValueError as err:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{str(path)!r} is not a UTF-8 text file: {err}") from None


def stdlib_corpus(*, max_chars: int | None = None) -> Corpus:
    """The embedded corpus: ``load_corpus(None, max_chars=max_chars)``."""
    return load_corpus(max_chars=max_chars)


def load_corpus(
    data: PathLike | None = None, *, max_chars: int | None = None, flag: str = "--data", split: bool = True
) -> Corpus:
    """A UTF-8 text file, a folder of them (non-hidden files, recursively) or, when None, the embedded corpus.

    The embedded corpus is the standard library's source (CPython 3.11: 729 files, 12.08M characters). A file
    validates when ``crc32(relative path) % 20 == 0`` (about 5%), a single file from the line nearest 95% on.
    ``max_chars``: the first files up to that many characters of training text, a tenth of it of validation.
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"{flag}: max_chars must be >= 1, got {max_chars}")
    root = Path(sysconfig.get_paths()["stdlib"] if data is None else data)
    name, where = root.resolve().name or str(root), str(root)
    if data is None:
        files = stdlib_files()
        name = f"Python {sysconfig.get_python_version()} standard library source"
        where = f"{name} ({root}{'' if max_chars is None else f', first {max_chars:,} characters'})"
    elif root.is_dir():
        hidden = lambda p: any(part.startswith(".") for part in p.relative_to(root).parts)  # noqa: E731
        files = sorted(p for p in root.rglob("*") if p.is_file() and not hidden(p))
        if not files:
            raise ValueError(f"{flag}: folder {str(root)!r} contains no files")
    else:
        files = [root]
    docs = [(p.relative_to(root).as_posix(), text) for p in files if (text := read_text_file(p)).strip()]
    if not docs:
        raise ValueError(f"{flag}: {where!r} contains only empty text")
    if not split:
        train, val = [t for _, t in docs], []
    elif len(docs) == 1:
        text = docs[0][1]
        cut = text.rfind("\n", 0, int(len(text) * 0.95))
        cut = cut + 1 if cut > 0 else int(len(text) * 0.95)
        train, val = [text[:cut]], [text[cut:]]
        if not val[0].strip() or not train[0].strip():
            raise ValueError(f"{flag}: {where!r} is too short to split into training and validation text")
    else:
        val_names = {rel for rel, _ in docs if zlib.crc32(rel.encode("utf-8")) % 20 == 0} or {docs[-1][0]}
        if len(val_names) == len(docs):  # small folders: the last file validates and the first trains
            val_names.remove(docs[0][0])
        train = [t for rel, t in docs if rel not in val_names]
        val = [t for rel, t in docs if rel in val_names]
    if max_chars is not None:
        train, val = _head(train, max_chars), _head(val, max(max_chars // 10, 1))
    chars = f"{sum(map(len, train)):,} / {sum(map(len, val)):,} chars"
    description = f"{where}: {len(train)} train / {len(val)} validation documents, {chars}"
    return Corpus(tuple(train), tuple(val), description, name)


def _head(texts: list[str], budget: int) -> list[str]:
    starts = itertools.accumulate(map(len, texts), initial=0)
    return [text[: budget - start] for text, start in zip(texts, starts) if start < budget]


def default_cache_dir() -> Path:
    """``$TENSORNET_CACHE`` if set, else ``~/.cache/tensornet``."""
    return Path(os.environ.get("TENSORNET_CACHE") or Path.home() / ".cache" / "tensornet")


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE (GPT-2's scheme) trained on ``texts``, with ``<|endoftext|>`` as token 0."""
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


def load_tokenizer(path: PathLike, *, flag: str = "--tokenizer"):
    """A ``tokenizer.json``, or a folder with it or GPT-2's vocab.json and merges.txt; else ValueError."""
    p = Path(path)
    gpt2 = p.is_dir() and (p / "vocab.json").exists() and not (p / "tokenizer.json").exists()
    names = [p / "vocab.json", p / "merges.txt"] if gpt2 else [p / "tokenizer.json" if p.is_dir() else p]
    raw = [_files.read_small_file(name, TOKENIZER_BYTES, flag) for name in names]  # a FIFO would never end
    try:
        if gpt2:
            tokenizer = Tokenizer(models.BPE.from_file(*map(str, names)))
            tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tokenizer.decoder = decoders.ByteLevel()
        else:
            tokenizer = Tokenizer.from_str(raw[0].decode("utf-8"))
        if tokenizer.token_to_id(EOT) is None:
            raise ValueError(f"it has no {EOT!r} token, which separates documents")
    except Exception as err:  # tokenizers raises a bare Exception for a malformed file
        shown = f"{' and '.join(repr(str(name)) for name in names)} ({type(err).__name__}: {err})"
        raise ValueError(f"{flag}: cannot read a tokenizer from {shown}") from None
    return tokenizer


def _cached(path: Path, identity: dict, read: Callable[[Path], dict], load: Callable[[dict], Any]) -> Any:
    """The cache file's value if built from ``identity``, else None (its folder made): the module's rule."""
    if os.path.lexists(path):
        try:
            record = read(path)
            if record.get("format") != identity["format"]:
                raise ValueError(f"it has no {identity['format']!r} record")
        except Exception as err:  # whatever it is, it is not the cache's file
            kept = f"{str(path)!r} is at the cache's name but tensornet did not write it ({err})"
            raise ValueError(f"{kept}: it is left as is; move it away or give another --cache-dir") from None
        try:
            if other := [key for key, value in identity.items() if record.get(key) != value]:
                raise ValueError(f"it was built from another {' and '.join(other)}")
            return load(record)
        except Exception as err:  # the cache's own file, damaged: rebuilt
            warnings.warn(f"rebuilding the cache file {str(path)!r}: {err}", stacklevel=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    _files.remove_stale_tmp(path.parent, [path.name], live=False)  # what a killed writer left


def cached_tokenizer(corpus: Corpus, vocab_size: int, cache_dir: PathLike | None = None):
    """The BPE of ``corpus.train``, trained once and cached (the module's rule)."""
    name = f"bpe-{vocab_size}-{corpus.fingerprint()}-v2.json"
    path = Path(cache_dir or default_cache_dir()) / "tokenizers" / name
    identity = {"format": "tensornet-tokenizer-cache", "corpus": corpus.digest, "vocab_size": vocab_size}
    read = lambda p: json.loads(_files.read_small_file(p, TOKENIZER_BYTES, "cached_tokenizer"))  # noqa: E731
    load = lambda record: Tokenizer.from_str(json.dumps(record["tokenizer"]))  # noqa: E731
    tokenizer = _cached(path, identity, read, load)
    if tokenizer is None or tokenizer.token_to_id(EOT) is None:  # a crafted record's tokenizer is rebuilt too
        tokenizer = train_tokenizer(corpus.train, vocab_size)
        _checkpoint.write_json(path, identity | {"version": 2, "tokenizer": json.loads(tokenizer.to_str())})
    return tokenizer


def tokenizer_id(tokenizer, length: int = 16) -> str:
    """A hash of the tokenizer's JSON (16 hex digits name its token caches)."""
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()[:length]


def encode(tokenizer, texts: Sequence[str]) -> Tensor:
    """All documents as one int64 token stream, each followed by ``<|endoftext|>``."""
    eot = tokenizer.token_to_id(EOT)
    ids = [i for enc in tokenizer.encode_batch(list(texts)) for i in [*enc.ids, eot]]
    return torch.tensor(ids, dtype=torch.int64)


def token_cache_path(corpus: Corpus, tokenizer, cache_dir: PathLike | None = None) -> Path:
    """Where :func:`cached_tokens` keeps the tokens of ``corpus`` under ``tokenizer``."""
    name = f"{corpus.fingerprint()}-{tokenizer_id(tokenizer)}-v2.safetensors"
    return Path(cache_dir or default_cache_dir()) / "tokens" / name


def cached_tokens(corpus: Corpus, tokenizer, cache_dir: PathLike | None = None) -> tuple[Tensor, Tensor]:
    """``(train_ids, val_ids)`` of ``corpus``, encoded once and cached (the module's rule)."""
    path = token_cache_path(corpus, tokenizer, cache_dir)
    identity = _TOKENS | {"corpus": corpus.digest, "tokenizer": tokenizer_id(tokenizer, 64)}
    read = lambda p: _files.read_safetensors(p, "not a safetensors file", shapes=True)[0]  # noqa: E731
    load = lambda _: _checkpoint.load_token_file(path, tokenizer.get_vocab_size(), "tokens")  # noqa: E731
    if (cached := _cached(path, identity, read, load)) is not None:
        return cached
    train, val = encode(tokenizer, corpus.train), encode(tokenizer, corpus.val)
    _checkpoint.save_tensors(path, {"train": train.int(), "val": val.int()}, metadata=identity)
    return train, val


def train_batch(
    tokens: Tensor, *, step: int, seed: int, batch_size: int, block_size: int, rank: int = 0, world: int = 1
) -> tuple[Tensor, Tensor]:
    """``rank``'s slice ``(x, y)`` of batch ``step``, ``y`` shifted by one: a function of ``(seed, step)``."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    offsets = torch.randint(0, tokens.numel() - block_size - 1, (batch_size,), generator=gen)
    offsets = offsets.view(world, -1)[rank]  # world divides batch_size
    chunk = tokens[offsets[:, None] + torch.arange(block_size + 1)[None, :]]  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]


def check_windows(train_ids: Tensor | None, val_ids: Tensor | None, block: int, eval_tokens: int = 0) -> None:
    """Enough tokens (of those given) for windows of ``block`` tokens; ``eval_tokens`` (0: all) one window."""
    for name, ids, least in (("training", train_ids, block + 2), ("validation", val_ids, block + 1)):
        if ids is not None and ids.numel() < least:
            got = f"the {name} text has {ids.numel():,} tokens; --block-size {block} needs at least {least:,}"
            raise ValueError(f"{got}: give more text (--data, --max-chars) or a smaller --block-size")
    if 0 < eval_tokens < block:
        raise ValueError(
            f"--eval-tokens {eval_tokens} is fewer than one window of --block-size {block}: give 0 (all) or more"
        )


def val_batches(tokens: Tensor, *, block_size: int, max_tokens: int | None = None) -> Tensor:
    """Non-overlapping validation windows ``(n, block_size + 1)``, consecutive ones sharing one token."""
    check_windows(None, tokens, block_size, max_tokens or 0)
    n = eval_token_count(tokens.numel(), block_size, max_tokens) // block_size
    return tokens[torch.arange(n)[:, None] * block_size + torch.arange(block_size + 1)[None, :]]


def eval_token_count(ntokens: int, block_size: int, max_tokens: int | None = None) -> int:
    """The tokens an evaluation of ``ntokens`` (at most ``max_tokens``) predicts: whole windows."""
    usable = ntokens - 1 if max_tokens is None else min(ntokens - 1, max_tokens)
    return max(usable, 0) // block_size * block_size
