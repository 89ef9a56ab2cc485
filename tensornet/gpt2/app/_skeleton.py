"""Typed decoding of a checkpoint's JSON skeleton: every value is checked against the type it must have.

A checkpoint keeps its structure (step, history, optimizer settings, RNG states, ...) as JSON, with tensors,
tuples, non-finite floats and dicts with non-string keys written as tagged objects (``{"$tensor": name}``,
``{"$tuple": [...]}``, ``{"$float": "nan"}``, ``{"$dict": [[key, value], ...]}``). The skeleton is read before
the checksum is verified (the cheap checks of a run's settings read it), so it may hold anything a JSON parser
returns: an integer of 400 digits, a list where a key belongs, a string where a number belongs. A schema
decodes it node by node, and the first value of the wrong type or out of range raises :class:`SkeletonError`
naming where it is (``history.loss[3] must be a number a float holds, got an integer of 401 digits``), so what
the decoder returns can be used without a ``TypeError`` or ``OverflowError`` further on.

Schemas: :class:`Int`, :class:`Float`, :class:`Str`, :class:`Bool`, :class:`Null`, :class:`Tensor`,
:class:`List`, :class:`Tuple`, :class:`Mapping`, :class:`Record`, :class:`OneOf`, :class:`Where`, and
:data:`JSON` (any value the encoder writes: integers within int64, finite or tagged floats, strings, lists,
tuples, tensors and dicts whose keys are scalars).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

INT64 = (-(2**63), 2**63 - 1)


class SkeletonError(ValueError):
    """A skeleton value of the wrong type or out of range; the message starts with where it is."""


def _shown(value: Any) -> str:
    """``value`` in a message: its kind, and itself when short (an integer of 400 digits is not printed)."""
    if isinstance(value, bool) or value is None:
        return repr(value).lower() if value is not None else "null"
    if isinstance(value, int):
        digits = len(str(abs(value)))
        return repr(value) if digits <= 20 else f"an integer of {digits} digits"
    if isinstance(value, (float, str)):
        text = repr(value)
        return text if len(text) <= 60 else f"{text[:57]}..."
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        keys = ", ".join(repr(k)[:20] for k in list(value)[:3])
        return f"an object with keys {keys}" if value else "an empty object"
    return type(value).__name__


@dataclass
class Context:
    """What decoding needs besides the skeleton: the file's tensors by name, and the names it used."""

    tensors: dict[str, Any]
    used: set[str] = field(default_factory=set)


class Schema:
    """Decodes one node of a skeleton; :meth:`decode` raises :class:`SkeletonError` naming ``at``."""

    rule = "a value"

    def decode(self, value: Any, at: str, ctx: Context) -> Any:
        raise NotImplementedError

    def bad(self, value: Any, at: str, rule: str | None = None) -> SkeletonError:
        return SkeletonError(f"{at or 'the skeleton'} must be {rule or self.rule}, got {_shown(value)}")


def _tag(value: Any) -> tuple[str, Any] | None:
    """``(tag, payload)`` of a tagged object ``{"$tag": payload}``, else None."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, payload),) = value.items()
        if isinstance(key, str) and key.startswith("$"):
            return key, payload
    return None


@dataclass(frozen=True)
class Int(Schema):
    """A JSON integer (not a boolean) in ``[lo, hi]``."""

    lo: int = INT64[0]
    hi: int = INT64[1]

    @property
    def rule(self) -> str:  # type: ignore[override]
        if self.hi == INT64[1]:
            return f"an integer >= {self.lo} (and below 2**63)"
        return f"an integer in [{self.lo}, {self.hi}]"

    def decode(self, value: Any, at: str, ctx: Context) -> int:
        if not (isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi):
            raise self.bad(value, at)
        return value


@dataclass(frozen=True)
class Float(Schema):
    """A number a float holds: a JSON number of float range or a tagged ``nan``/``inf``/``-inf``."""

    rule = "a number a float holds"

    def decode(self, value: Any, at: str, ctx: Context) -> float:
        tag = _tag(value)
        if tag is not None and tag[0] == "$float" and tag[1] in ("nan", "inf", "-inf"):
            return float(tag[1])
        if isinstance(value, float):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise self.bad(value, at) from None
        raise self.bad(value, at)


@dataclass(frozen=True)
class Str(Schema):
    rule = "a string"

    def decode(self, value: Any, at: str, ctx: Context) -> str:
        if not isinstance(value, str):
            raise self.bad(value, at)
        return value


@dataclass(frozen=True)
class Bool(Schema):
    rule = "true or false"

    def decode(self, value: Any, at: str, ctx: Context) -> bool:
        if not isinstance(value, bool):
            raise self.bad(value, at)
        return value


@dataclass(frozen=True)
class Null(Schema):
    rule = "null"

    def decode(self, value: Any, at: str, ctx: Context) -> None:
        if value is not None:
            raise self.bad(value, at)


@dataclass(frozen=True)
class Tensor(Schema):
    """``{"$tensor": name}`` of a tensor the file holds."""

    rule = "a tensor of the file"

    def decode(self, value: Any, at: str, ctx: Context) -> Any:
        tag = _tag(value)
        if tag is None or tag[0] != "$tensor" or not isinstance(tag[1], str) or tag[1] not in ctx.tensors:
            raise self.bad(value, at)
        ctx.used.add(tag[1])
        return ctx.tensors[tag[1]]


@dataclass(frozen=True)
class List(Schema):
    """A JSON list of ``item``s (of ``length`` items when given)."""

    item: Schema
    length: int | None = None

    @property
    def rule(self) -> str:  # type: ignore[override]
        return "a list" + ("" if self.length is None else f" of {self.length}")

    def decode(self, value: Any, at: str, ctx: Context) -> list:
        if not isinstance(value, list) or (self.length is not None and len(value) != self.length):
            raise self.bad(value, at)
        return [self.item.decode(v, f"{at}[{i}]", ctx) for i, v in enumerate(value)]


@dataclass(frozen=True)
class Tuple(Schema):
    """``{"$tuple": [...]}`` of the ``items`` in order, or of any number of ``rest`` items."""

    items: tuple[Schema, ...] = ()
    rest: Schema | None = None

    rule = "a tuple"

    def decode(self, value: Any, at: str, ctx: Context) -> tuple:
        tag = _tag(value)
        if tag is None or tag[0] != "$tuple" or not isinstance(tag[1], list):
            raise self.bad(value, at)
        entries = tag[1]
        if len(entries) < len(self.items) or (self.rest is None and len(entries) > len(self.items)):
            raise self.bad(value, at, f"a tuple of {len(self.items)}" + (" or more" if self.rest else ""))
        out = [s.decode(v, f"{at}[{i}]", ctx) for i, (s, v) in enumerate(zip(self.items, entries))]
        if self.rest is not None:
            start = len(self.items)
            out += [self.rest.decode(v, f"{at}[{start + i}]", ctx) for i, v in enumerate(entries[start:])]
        return tuple(out)


@dataclass(frozen=True)
class Mapping(Schema):
    """A dict: a JSON object of string keys, or ``{"$dict": [[key, value], ...]}``; keys decoded by ``key``."""

    key: Schema
    value: Schema

    rule = "an object"

    def decode(self, value: Any, at: str, ctx: Context) -> dict:
        tag = _tag(value)
        if tag is not None and tag[0] == "$dict":
            pairs = tag[1]
            if not (isinstance(pairs, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs)):
                raise self.bad(value, at, "a list of [key, value] pairs")
            out = {}
            for i, (k, v) in enumerate(pairs):
                key = self.key.decode(k, f"{at} key {i}", ctx)
                out[key] = self.value.decode(v, f"{at}[{key!r}]", ctx)
            return out
        if not isinstance(value, dict) or tag is not None or any(k.startswith("$") for k in value):
            raise self.bad(value, at)
        return {
            self.key.decode(k, f"{at} key", ctx): self.value.decode(v, _join(at, k), ctx)
            for k, v in value.items()
        }


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key


@dataclass(frozen=True)
class Record(Schema):
    """A JSON object with the ``fields`` (``optional`` ones may be absent); other keys decode by ``rest``.

    Without ``rest`` other keys are refused.
    """

    fields: dict[str, Schema]
    optional: dict[str, Schema] = field(default_factory=dict)
    rest: Schema | None = None

    rule = "an object"

    def decode(self, value: Any, at: str, ctx: Context) -> dict:
        if not isinstance(value, dict) or _tag(value) is not None:
            raise self.bad(value, at)
        missing = [k for k in self.fields if k not in value]
        if missing:
            raise SkeletonError(f"{at or 'the skeleton'} has no {', '.join(missing)}")
        out = {}
        for key, v in value.items():
            schema = self.fields.get(key) or self.optional.get(key) or self.rest
            if schema is None or key.startswith("$"):
                raise SkeletonError(f"{at or 'the skeleton'} has an unexpected entry {key[:40]!r}")
            out[key] = schema.decode(v, _join(at, key), ctx)
        return out


@dataclass(frozen=True)
class OneOf(Schema):
    """The first of ``options`` that decodes the value."""

    options: tuple[Schema, ...]

    @property
    def rule(self) -> str:  # type: ignore[override]
        return " or ".join(s.rule for s in self.options)

    def decode(self, value: Any, at: str, ctx: Context) -> Any:
        for schema in self.options:
            used = set(ctx.used)
            try:
                return schema.decode(value, at, ctx)
            except SkeletonError:
                ctx.used = used
        raise self.bad(value, at)


@dataclass(frozen=True)
class Where(Schema):
    """``schema``, and then ``check(decoded)`` must hold (``rule`` says what it asks)."""

    schema: Schema
    check: Callable[[Any], bool]
    what: str

    @property
    def rule(self) -> str:  # type: ignore[override]
        return self.what

    def decode(self, value: Any, at: str, ctx: Context) -> Any:
        decoded = self.schema.decode(value, at, ctx)
        if not self.check(decoded):
            raise self.bad(value, at)
        return decoded


class _Json(Schema):
    """Any value the encoder writes (the scalars, lists, tuples, tensors, dicts of scalar keys), recursively."""

    rule = "a checkpoint value"

    def decode(self, value: Any, at: str, ctx: Context) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return Int().decode(value, at, ctx)
        if isinstance(value, float):
            return value
        if isinstance(value, list):
            return List(self).decode(value, at, ctx)
        tag = _tag(value)
        if tag is None:
            return Mapping(Str(), self).decode(value, at, ctx)
        schema = {"$tensor": Tensor(), "$float": Float(), "$tuple": Tuple(rest=self), "$dict": _DICT}.get(
            tag[0]
        )
        if schema is None:
            raise SkeletonError(f"{at or 'the skeleton'} has an unknown tag {tag[0][:40]!r}")
        return schema.decode(value, at, ctx)


JSON = _Json()
# a dict key: a scalar, or a tuple of scalars (the encoder writes what a Python dict may hold)
_SCALAR = OneOf((Str(), Int(), Float(), Bool(), Null()))
_KEY = OneOf((_SCALAR, Tuple(rest=_SCALAR)))
_DICT = Mapping(_KEY, JSON)


def decode(skeleton: Any, schema: Schema, tensors: dict[str, Any]) -> tuple[Any, set[str]]:
    """``skeleton`` decoded by ``schema`` and the names of the tensors it used; raises :class:`SkeletonError`."""
    ctx = Context(tensors)
    return schema.decode(skeleton, "", ctx), ctx.used
