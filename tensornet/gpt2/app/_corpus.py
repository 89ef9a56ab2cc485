"""Text corpora: the embedded Python standard library source, or the user's text files, split for validation.

The embedded corpus is every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` but site/dist-packages,
test suites and ``_sysconfigdata*``, read as UTF-8 in sorted relative-path order. A file validates when
``crc32(relative path) % 20 == 0`` (about 5%): the split is fixed by the name alone. CPython 3.11: 729 files
(690 train, 39 validation), 12.08M characters; 3.12: 511 files, 10.1M characters.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_VAL_MODULUS = 20


@dataclass(frozen=True)
class Corpus:
    """Documents split into training and validation text.

    ``description`` says where they came from (the path, the sizes); ``name`` is what a figure's title calls
    them (``Python 3.11 standard library source``, a file's name), never an absolute path.
    """

    train: tuple[str, ...]
    val: tuple[str, ...]
    description: str
    name: str = "text corpus"

    @property
    def train_chars(self) -> int:
        """Characters in the training texts."""
        return sum(len(t) for t in self.train)

    @property
    def val_chars(self) -> int:
        """Characters in the validation texts."""
        return sum(len(t) for t in self.val)

    @functools.cached_property
    def digest(self) -> str:
        """The SHA-256 of the whole content, split by split (recorded in the caches built from it)."""
        digest = hashlib.sha256()
        for split in (self.train, self.val):
            for text in split:
                digest.update(text.encode("utf-8"))
                digest.update(b"\x00")
            digest.update(b"\x01")
        return digest.hexdigest()

    def fingerprint(self) -> str:
        """A short hash of the whole content, used to name the tokenizer and token caches."""
        return self.digest[:16]


def stdlib_files() -> list[Path]:
    """The embedded corpus's files, in their fixed order (sorted relative path)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        skip = rel.name.startswith("_sysconfigdata") or rel.parts[0].startswith("config-")
        if not skip and not any(part in _EXCLUDED_DIRS for part in rel.parts[:-1]):
            files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _is_val(rel: str) -> bool:
    return zlib.crc32(rel.encode("utf-8")) % _VAL_MODULUS == 0


def existing_path(path: str | os.PathLike, flag: str, what: str) -> Path:
    """``path`` as a Path; ValueError when it is empty, FileNotFoundError when it does not exist."""
    if not str(path):
        raise ValueError(f"{flag}: the path is empty; give {what}")
    if not Path(path).exists():
        raise FileNotFoundError(f"{flag}: {str(path)!r} does not exist")
    return Path(path)


def read_text_file(path: Path) -> str:
    """Read ``path`` as UTF-8 text; ValueError for a missing or irregular, binary or non-UTF-8 file."""
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not a regular file (or does not exist)")
    raw = path.read_bytes()
    if b"\x00" in raw[:65536]:
        raise ValueError(f"{str(path)!r} looks binary (it contains NUL bytes); give a UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{str(path)!r} is not valid UTF-8 (byte {err.start}: {raw[err.start : err.start + 1]!r}); "
            "convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def stdlib_corpus(*, max_chars: int | None = None) -> Corpus:
    """The embedded corpus.

    With ``max_chars``, the first files (in the fixed order) up to that many characters of training text and a
    tenth of it of validation text.
    """
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"stdlib_corpus: max_chars must be >= 1, got {max_chars}")
    root = Path(sysconfig.get_paths()["stdlib"])
    budgets = _budgets(max_chars)
    splits: tuple[list[str], list[str]] = ([], [])  # training, validation
    skipped = 0
    for path in stdlib_files():
        is_val = int(_is_val(path.relative_to(root).as_posix()))
        if sum(map(len, splits[is_val])) >= budgets[is_val]:
            continue
        try:
            text = read_text_file(path)
        except ValueError:  # a broken stdlib file is the installation's problem: the corpus is what reads
            skipped += 1
            continue
        if text.strip():
            splits[is_val].append(text)
        if all(sum(map(len, texts)) >= budget for texts, budget in zip(splits, budgets)):
            break
    train, val = _cut(*splits, max_chars)
    if not train or not val:
        raise RuntimeError(f"stdlib_corpus: found no usable Python source under {str(root)!r}")
    limit = "" if max_chars is None else f", first {max_chars:,} characters"
    name = f"Python {sysconfig.get_python_version()} standard library source"
    description = (
        f"{name} ({root}{limit}): {len(train)} train files / {sum(map(len, train)):,} chars, {len(val)} "
        f"validation files / {sum(map(len, val)):,} chars"
        + (f", {skipped} unreadable files skipped" if skipped else "")
    )
    return Corpus(tuple(train), tuple(val), description, name)


def text_corpus(
    path: str | os.PathLike, *, max_chars: int | None = None, flag: str = "--data", split: bool = True
) -> Corpus:
    """A corpus from a UTF-8 text file or a folder of them (all non-hidden files, recursively, sorted).

    A folder with at least two files is split by file like the embedded corpus (at least one validation file);
    a single file is split at the line boundary nearest 95% of its length. ``flag`` names the option in messages;
    ``split=False`` keeps all of the text as training text (evaluation reads all of it).
    """
    root = existing_path(path, flag, "a text file or folder")
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
    train, val = _cut(train, val, max_chars)
    description = (
        f"{root}: {len(train)} train / {len(val)} validation documents, "
        f"{sum(map(len, train)):,} / {sum(map(len, val)):,} chars"
    )
    return Corpus(tuple(train), tuple(val), description, root.resolve().name or str(root))


def _budgets(max_chars: int | None) -> tuple[float, float]:
    """Characters of training and validation text: ``max_chars`` and a tenth of it (all when None)."""
    return (math.inf, math.inf) if max_chars is None else (max_chars, max(max_chars // 10, 1))


def _cut(train: list[str], val: list[str], max_chars: int | None) -> tuple[list[str], list[str]]:
    """The first texts up to their budget (:func:`_budgets`), the last one cut."""
    if max_chars is None:
        return train, val
    train_budget, val_budget = _budgets(max_chars)
    return _head(train, int(train_budget)), _head(val, int(val_budget))


def _head(texts: list[str], budget: int) -> list[str]:
    starts = itertools.accumulate(map(len, texts), initial=0)
    return [text[: budget - start] for text, start in zip(texts, starts) if start < budget]


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
