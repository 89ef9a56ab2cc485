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
import os
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


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
        """A short hash of the whole content, used to name the tokenizer and token caches."""
        return self.digest[:16]


def stdlib_files() -> list[Path]:
    """The embedded corpus's files, in their fixed order (sorted relative path)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rels = sorted((p.relative_to(root) for p in root.rglob("*.py")), key=lambda rel: rel.as_posix())
    return [
        root / rel
        for rel in rels
        if not (rel.name.startswith("_sysconfigdata") or rel.parts[0].startswith("config-"))
        and _EXCLUDED_DIRS.isdisjoint(rel.parts[:-1])
    ]


def _is_val(rel: str) -> bool:
    return zlib.crc32(rel.encode("utf-8")) % 20 == 0


def existing_path(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a Path; FileNotFoundError naming ``flag`` when it is empty or does not exist."""
    if not str(path) or not Path(path).exists():
        raise FileNotFoundError(f"{flag}: {str(path)!r} does not exist")
    return Path(path)


def read_text_file(path: Path) -> str:
    """The text of ``path``; ValueError naming it for anything but a regular UTF-8 text file."""
    if not path.is_file():  # a FIFO or a device would never end
        raise ValueError(f"{str(path)!r} is not a regular file; give a UTF-8 text file")
    raw = path.read_bytes()
    try:
        if b"\x00" in raw[:65536]:
            raise ValueError("it looks binary: it contains NUL bytes")
        return raw.decode("utf-8")
    except ValueError as err:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{str(path)!r} is not valid UTF-8 text ({err}); give a UTF-8 text file") from None


def stdlib_corpus(*, max_chars: int | None = None) -> Corpus:
    """The embedded corpus.

    With ``max_chars``, the first files (in the fixed order) up to that many characters of training text and a
    tenth of it of validation text.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, skipped = [], 0
    for path in stdlib_files():
        try:
            texts.append((path.relative_to(root).as_posix(), read_text_file(path)))
        except ValueError:  # a broken stdlib file is the installation's problem: the corpus is what reads
            skipped += 1
    limit = "" if max_chars is None else f", first {max_chars:,} characters"
    name = f"Python {sysconfig.get_python_version()} standard library source"
    unread = f", {skipped} unreadable files skipped" if skipped else ""
    return _corpus(texts, max_chars, "stdlib_corpus", f"{name} ({root}{limit}{unread})", name)


def text_corpus(
    path: str | os.PathLike, *, max_chars: int | None = None, flag: str = "--data", split: bool = True
) -> Corpus:
    """A corpus from a UTF-8 text file or a folder of them (all non-hidden files, recursively, sorted).

    A folder with at least two files is split by file like the embedded corpus (at least one validation file);
    a single file is split at the line boundary nearest 95% of its length. ``flag`` names the option in messages;
    ``split=False`` keeps all of the text as training text (evaluation reads all of it).
    """
    root = existing_path(path, flag)
    if root.is_dir():
        hidden = lambda p: any(part.startswith(".") for part in p.relative_to(root).parts)  # noqa: E731
        files = sorted(p for p in root.rglob("*") if p.is_file() and not hidden(p))
        if not files:
            raise ValueError(f"{flag}: folder {str(root)!r} contains no files")
        texts = [(p.relative_to(root).as_posix(), read_text_file(p)) for p in files]
    else:
        texts = [(root.name, read_text_file(root))]
    return _corpus(texts, max_chars, flag, str(root), root.resolve().name or str(root), split)


def _corpus(
    texts: list[tuple[str, str]], max_chars: int | None, flag: str, where: str, name: str, split: bool = True
) -> Corpus:
    """``(name, text)`` documents (empty ones dropped) split, then cut to ``max_chars`` and a tenth of it."""
    if max_chars is not None and max_chars < 1:
        raise ValueError(f"{flag}: max_chars must be >= 1, got {max_chars}")
    docs = [(rel, text) for rel, text in texts if text.strip()]
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
        train = [t for rel, t in docs if not _is_val(rel)]
        val = [t for rel, t in docs if _is_val(rel)]
        if not val:  # small folders: the last file validates
            val = [train.pop()]
        if not train:
            train = [val.pop(0)]
    if max_chars is not None:
        train, val = _head(train, max_chars), _head(val, max(max_chars // 10, 1))
    description = (
        f"{where}: {len(train)} train / {len(val)} validation documents, "
        f"{sum(map(len, train)):,} / {sum(map(len, val)):,} chars"
    )
    return Corpus(tuple(train), tuple(val), description, name)


def _head(texts: list[str], budget: int) -> list[str]:
    """The first ``texts`` up to ``budget`` characters, the last one cut."""
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
