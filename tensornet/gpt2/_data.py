"""Text corpora, the byte-level BPE tokenizer and deterministic token batches.

The embedded corpus is the Python standard library's own source code, which every Python installation carries:
all ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` except ``site-packages``/``dist-packages``, test
suites (``test``, ``tests``, ``idle_test`` folders) and the machine-generated ``_sysconfigdata*`` module, read
as UTF-8 in sorted relative-path order. A file goes to the validation split when ``crc32(relative path) % 20 ==
0`` (about 5%), so the split is fixed by the file name alone and does not move when other files change. On
CPython 3.11 this is 729 files (690 train, 39 validation) and 12.08M characters; CPython 3.12: 511 files,
10.1M characters.
"""

from __future__ import annotations

import hashlib
import os
import re
import sysconfig
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import _checkpoint, _files

EOT = "<|endoftext|>"
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_VAL_MODULUS = 20


@dataclass(frozen=True)
class Corpus:
    """Documents split into training and validation text; ``description`` says where they came from."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    description: str

    @property
    def train_chars(self) -> int:
        """Characters in the training texts."""
        return sum(len(t) for t in self.train)

    @property
    def val_chars(self) -> int:
        """Characters in the validation texts."""
        return sum(len(t) for t in self.val)

    def fingerprint(self) -> str:
        """A short hash of the whole content, used to key the tokenizer and token caches."""
        digest = hashlib.sha256()
        for split in (self.train, self.val):
            for text in split:
                digest.update(text.encode("utf-8"))
                digest.update(b"\x00")
            digest.update(b"\x01")
        return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$TENSORNET_CACHE`` if set, else ``~/.cache/tensornet``."""
    env = os.environ.get("TENSORNET_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tensornet"


def stdlib_files() -> list[Path]:
    """The embedded corpus's files, in their fixed order (sorted relative path)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in _EXCLUDED_DIRS for part in rel.parts[:-1]) or rel.name.startswith("_sysconfigdata"):
            continue
        if rel.parts[0].startswith("config-"):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _is_val(rel: str) -> bool:
    return zlib.crc32(rel.encode("utf-8")) % _VAL_MODULUS == 0


def read_text_file(path: Path) -> str:
    """Read ``path`` as UTF-8 text, with a clear error for missing, empty, binary or non-UTF-8 files."""
    if not path.exists():
        raise FileNotFoundError(f"text file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a regular file")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise ValueError(f"{str(path)!r} looks binary (it contains NUL bytes); give a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{str(path)!r} is not valid UTF-8 (byte {err.start}: {raw[err.start : err.start + 1]!r}); "
            "convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None
    return text


def stdlib_corpus(*, max_chars: int | None = None) -> Corpus:
    """The embedded corpus.

    With ``max_chars``, the first files (in the fixed order) up to that many characters of training text and a
    tenth of it of validation text.
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"stdlib_corpus: max_chars must be >= 1, got {max_chars}")
    root = Path(sysconfig.get_paths()["stdlib"])
    train: list[str] = []
    val: list[str] = []
    train_budget = max_chars if max_chars is not None else float("inf")
    val_budget = max(max_chars // 10, 1) if max_chars is not None else float("inf")
    train_n = val_n = 0
    skipped = 0
    for path in stdlib_files():
        rel = path.relative_to(root).as_posix()
        is_val = _is_val(rel)
        if (val_n if is_val else train_n) >= (val_budget if is_val else train_budget):
            continue
        try:
            text = read_text_file(path)
        except ValueError:
            skipped += (
                1  # a broken stdlib file is the installation's problem; the corpus is what reads cleanly
            )
            continue
        if not text.strip():
            continue
        if is_val:
            val.append(text)
            val_n += len(text)
        else:
            train.append(text)
            train_n += len(text)
        if train_n >= train_budget and val_n >= val_budget:
            break
    if max_chars is not None:  # whole files were taken; cut the last one at the budget
        train, val = _truncate(train, max_chars), _truncate(val, max(max_chars // 10, 1))
        train_n, val_n = sum(map(len, train)), sum(map(len, val))
    if not train or not val:
        raise RuntimeError(f"stdlib_corpus: found no usable Python source under {str(root)!r}")
    limit = "" if max_chars is None else f", first {max_chars:,} characters"
    description = (
        f"Python {sysconfig.get_python_version()} standard library source ({root}{limit}): "
        f"{len(train)} train files / {train_n:,} chars, {len(val)} validation files / {val_n:,} chars"
        + (f", {skipped} unreadable files skipped" if skipped else "")
    )
    return Corpus(tuple(train), tuple(val), description)


def text_corpus(
    path: str | os.PathLike, *, max_chars: int | None = None, flag: str = "--data", split: bool = True
) -> Corpus:
    """A corpus from a UTF-8 text file or a folder of them (all non-hidden files, recursively, sorted).

    A folder with at least two files is split by file like the embedded corpus (at least one validation file);
    a single file is split at the line boundary nearest 95% of its length. ``flag`` names the option in messages;
    ``split=False`` keeps all of the text as training text (evaluation reads all of it).
    """
    if not str(path):
        raise ValueError(f"{flag}: the path is empty; give a text file or folder")
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{flag}: {str(root)!r} does not exist")
    if root.is_dir():
        files = sorted(
            p
            for p in root.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not files:
            raise ValueError(f"{flag}: folder {str(root)!r} contains no files")
        texts = [(p.relative_to(root).as_posix(), read_text_file(p)) for p in files]
    else:
        texts = [(root.name, read_text_file(root))]
    texts = [(rel, t) for rel, t in texts if t.strip()]
    if not texts:
        raise ValueError(f"{flag}: {str(root)!r} contains only empty text")
    if not split:
        train, val = [t for _, t in texts], []
    elif len(texts) == 1:
        text = texts[0][1]
        cut = text.rfind("\n", 0, int(len(text) * 0.95))
        cut = cut + 1 if cut > 0 else int(len(text) * 0.95)
        train, val = [text[:cut]], [text[cut:]]
        if not val[0].strip() or not train[0].strip():
            raise ValueError(f"{flag}: {str(root)!r} is too short to split into training and validation text")
    else:
        train = [t for rel, t in texts if not _is_val(rel)]
        val = [t for rel, t in texts if _is_val(rel)]
        if not val:  # small folders: the last file validates
            val = [train.pop()]
        if not train:
            train = [val.pop(0)]
    if max_chars is not None:
        train = _truncate(train, max_chars)
        val = _truncate(val, max(max_chars // 10, 1))
    description = (
        f"{root}: {len(train)} train / {len(val)} validation documents, "
        f"{sum(map(len, train)):,} / {sum(map(len, val)):,} chars"
    )
    return Corpus(tuple(train), tuple(val), description)


def _truncate(texts: list[str], budget: int) -> list[str]:
    out: list[str] = []
    total = 0
    for text in texts:
        if total >= budget:
            break
        out.append(text[: budget - total])
        total += len(out[-1])
    return out


def load_corpus(
    data: str | os.PathLike | None = None,
    *,
    max_chars: int | None = None,
    flag: str = "--data",
    split: bool = True,
) -> Corpus:
    """``data`` (a file or folder) or, when None, the embedded standard-library corpus."""
    if data is None:
        return stdlib_corpus(max_chars=max_chars)
    return text_corpus(data, max_chars=max_chars, flag=flag, split=split)


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
# the cache's own file names: only these (and their temporary names) are ever removed there
_TOKENIZER_CACHE = re.compile(r"bpe-\d+-[0-9a-f]{16}\.json")
_TOKENS_CACHE = re.compile(r"[0-9a-f]{16}-[0-9a-f]{16}\.safetensors")


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

    if not str(path):
        raise ValueError(f"{flag}: the path is empty; give a tokenizer.json file or a tokenizer folder")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{flag}: {str(p)!r} does not exist")
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


def cached_tokenizer(corpus: Corpus, vocab_size: int, cache_dir: str | os.PathLike | None = None):
    """Train the BPE on ``corpus.train`` once and keep it under ``cache_dir/tokenizers``.

    An unreadable cache entry is retrained (with a warning).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / "tokenizers" / f"bpe-{vocab_size}-{corpus.fingerprint()}.json"
    if path.is_file():
        try:
            return load_tokenizer(path, flag="cached_tokenizer")
        except ValueError as err:
            warnings.warn(
                f"cached_tokenizer: rebuilding the damaged cache file {str(path)!r} ({err})", stacklevel=2
            )
    tokenizer = train_tokenizer(corpus.train, vocab_size)
    _cache_dir(path.parent, _TOKENIZER_CACHE)
    data = _tokenizer_json(tokenizer)
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


def tokenizer_id(tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_str().encode("utf-8")).hexdigest()[:16]


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
    return cache / "tokens" / f"{corpus.fingerprint()}-{tokenizer_id(tokenizer)}.safetensors"


def cached_tokens(corpus: Corpus, tokenizer, cache_dir: str | os.PathLike | None = None):
    """``(train_ids, val_ids)``, encoded once per (corpus, tokenizer) and cached as int32 safetensors.

    A cache entry that fails its checks (unreadable, wrong shape or dtype, ids outside the vocabulary) is
    rebuilt, with a warning.
    """
    path = token_cache_path(corpus, tokenizer, cache_dir)
    if path.is_file():
        try:
            return _checkpoint.load_token_file(path, tokenizer.get_vocab_size(), "cached_tokens")
        except ValueError as err:
            warnings.warn(f"cached_tokens: rebuilding the damaged token cache ({err})", stacklevel=2)
    train, val = encode(tokenizer, corpus.train), encode(tokenizer, corpus.val)
    _cache_dir(path.parent, _TOKENS_CACHE)
    _checkpoint.save_tensors(path, {"train": train.int(), "val": val.int()})
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
