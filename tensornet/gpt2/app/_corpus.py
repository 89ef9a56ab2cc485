"""Text corpora: the embedded Python standard library source, or the user's text files, split for validation.

The embedded corpus is the Python standard library's own source code, which every Python installation carries:
all ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` except ``site-packages``/``dist-packages``, test
suites (``test``, ``tests``, ``idle_test`` folders) and the machine-generated ``_sysconfigdata*`` module, read
as UTF-8 in sorted relative-path order. A file goes to the validation split when ``crc32(relative path) % 20 ==
0`` (about 5%), so the split is fixed by the file name alone and does not move when other files change. On
CPython 3.11 this is 729 files (690 train, 39 validation) and 12.08M characters; CPython 3.12: 511 files,
10.1M characters.
"""

from __future__ import annotations

import functools
import hashlib
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
        if any(part in _EXCLUDED_DIRS for part in rel.parts[:-1]) or rel.name.startswith("_sysconfigdata"):
            continue
        if rel.parts[0].startswith("config-"):
            continue
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
    name = f"Python {sysconfig.get_python_version()} standard library source"
    description = (
        f"{name} ({root}{limit}): "
        f"{len(train)} train files / {train_n:,} chars, {len(val)} validation files / {val_n:,} chars"
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
    if max_chars is not None:
        train = _truncate(train, max_chars)
        val = _truncate(val, max(max_chars // 10, 1))
    description = (
        f"{root}: {len(train)} train / {len(val)} validation documents, "
        f"{sum(map(len, train)):,} / {sum(map(len, val)):,} chars"
    )
    return Corpus(tuple(train), tuple(val), description, root.resolve().name or str(root))


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
