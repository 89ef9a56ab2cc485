"""Argument checks shared by every public function: shapes, rank specs, counts, flags, eps, indices.

One vocabulary for the whole package:

* a **shape** is a non-empty sequence of positive ints (a 1-D integer numpy array too); the core
  functions also take a bare int ``n`` for ``(n,)``;
* a **rank spec** (the ``rank`` of a constructor or layer, the ``max_rank`` cap of a decomposition) is an
  int (every bond), the ``d - 1`` bond ranks ``(r_1, ..., r_{d-1})``, or the ``d + 1`` ranks
  ``(1, r_1, ..., r_{d-1}, 1)`` with the boundary 1s, as a train's ``ranks`` property gives them.

Every message names the function, the argument and the sizes that disagree, with a hint. The checks of a
train argument need the train classes and live above :mod:`tensornet.tt` in :mod:`tensornet._train_checks`;
this module imports nothing above :mod:`tensornet._backend` (the scalar operand: :mod:`tensornet._scalars`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _backend as B
from ._backend import Array


def _integer_list(value: Any) -> list[Any] | None:
    """``value`` as a list when it is a sequence (not a string) or a 1-D integer numpy array, else None."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and np.issubdtype(value.dtype, np.integer):
        return [int(v) for v in value]
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return list(value)
    return None


def is_int(value: Any) -> bool:
    """An integral number that is not a bool (Python and numpy ints)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# --- shapes -----------------------------------------------------------------------------------------
def check_shape(fn: str, name: str, shape: Any, *, scalar: bool = False) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints.

    Parameters
    ----------
    fn, name : str
        The calling function and the argument's name, for messages.
    shape : sequence of int, 1-D integer numpy array, or (with ``scalar``) an int
        The shape to check.
    scalar : bool
        Accept a bare int ``n`` as ``(n,)`` (the core functions' ``shape``; a layer's factor shapes
        must be sequences).

    Returns
    -------
    tuple of int

    Raises
    ------
    TypeError
        Not a non-empty sequence, or an entry that is not an int.
    ValueError
        An entry below 1.
    """
    if scalar and is_int(shape):
        shape = (shape,)
    values = _integer_list(shape)
    if not values:
        raise TypeError(f"{fn}: {name} must be a non-empty sequence of positive ints, got {shape!r}")
    for k, n in enumerate(values):
        if not is_int(n):
            raise TypeError(
                f"{fn}: {name}[{k}] must be an int, got {type(n).__name__} {n!r} ({name} must be a "
                "sequence of positive ints)"
            )
        if n < 1:
            raise ValueError(f"{fn}: {name}[{k}] = {n}; every entry must be >= 1 (use 1 to pad)")
    return tuple(int(n) for n in values)


def check_same_length(fn: str, names: tuple[str, str], first: Sequence[int], second: Sequence[int]) -> None:
    """Raise ``ValueError`` unless two factor shapes have one entry per core each."""
    if len(first) != len(second):
        raise ValueError(
            f"{fn}: {names[0]} {tuple(first)} has {len(first)} factors but {names[1]} {tuple(second)} has "
            f"{len(second)}; they have different lengths: give one factor per core (pad the shorter with 1s)"
        )


def check_product(fn: str, name: str, shape: Sequence[int], size: int, what: str) -> None:
    """Raise ``ValueError`` unless ``prod(shape) == size``; ``what`` says whose size it is.

    E.g. ``what="in_features = 24"`` or ``"the matrix has 6 rows"``.
    """
    if math.prod(shape) != size:
        raise ValueError(
            f"{fn}: {name} {tuple(shape)} multiplies to {math.prod(shape)} but {what}; the factors must "
            f"multiply to {size}"
        )


# --- rank specs -------------------------------------------------------------------------------------
def parse_ranks(fn: str, name: str, rank: Any, ncores: int, *, owner: str = "train") -> tuple[int, ...]:
    """The bond ranks ``(r_1, ..., r_{d-1})`` of a rank spec for ``ncores = d`` cores.

    Parameters
    ----------
    fn, name : str
        The calling function and the argument's name (``"rank"``, ``"max_rank"``), for messages.
    rank : int or sequence of int
        An int (every bond), ``d - 1`` bond ranks, or ``d + 1`` ranks starting and ending with 1.
    ncores : int
        The number of cores d.
    owner : str
        What has the cores, for messages ("train", "layer").

    Returns
    -------
    tuple of int
        ``d - 1`` ranks, each at least 1.

    Raises
    ------
    TypeError
        Not an int or a sequence of ints.
    ValueError
        A wrong number of entries, boundary ranks other than 1 in the ``d + 1`` form, a rank below 1.
    """
    bonds = ncores - 1
    if is_int(rank):
        if rank < 1:
            raise ValueError(f"{fn}: {name} must be >= 1, got {rank}")
        return (int(rank),) * bonds
    values = _integer_list(rank)
    if values is None:
        raise TypeError(
            f"{fn}: {name} must be an int or a sequence of ints (one per bond), got {type(rank).__name__} "
            f"{rank!r}"
        )
    if len(values) == ncores + 1:
        if values[0] != 1 or values[-1] != 1:
            raise ValueError(
                f"{fn}: {name} {tuple(values)} has d + 1 = {ncores + 1} entries, so it must start and end "
                "with 1 (the boundary ranks must be 1)"
            )
        values = values[1:-1]
    elif len(values) != bonds:
        raise ValueError(
            f"{fn}: {name} has {len(values)} entries but the {owner} has {ncores} cores ({bonds} bonds); give "
            f"an int, d - 1 = {bonds} bond ranks or d + 1 = {ncores + 1} ranks with the boundary 1s"
        )
    for k, value in enumerate(values, start=1):
        if not is_int(value):
            raise TypeError(
                f"{fn}: {name} must be an int or a sequence of ints, got {type(value).__name__} {value!r} "
                f"for bond {k}"
            )
        if value < 1:
            raise ValueError(f"{fn}: {name} must be >= 1, got {value} for bond {k}")
    return tuple(int(v) for v in values)


def rank_caps(fn: str, max_rank: Any, ncores: int) -> list[int | None]:
    """Per-bond rank caps from a ``max_rank`` spec (:func:`parse_ranks`); None caps nothing."""
    if max_rank is None:
        return [None] * (ncores - 1)
    return list(parse_ranks(fn, "max_rank", max_rank, ncores))


# --- numbers and flags ------------------------------------------------------------------------------
def check_count(fn: str, name: str, value: Any, *, minimum: int = 1, optional: bool = False) -> Any:
    """``value`` as an int ``>= minimum`` (or None when ``optional``).

    Raises
    ------
    TypeError
        Not an int (a bool is not one).
    ValueError
        Below ``minimum``.
    """
    if optional and value is None:
        return None
    if not is_int(value):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{fn}: {name} must be {kind}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_flag(fn: str, name: str, value: Any) -> bool:
    """``value`` when it is a bool; ``TypeError`` otherwise (1 and "yes" are not flags)."""
    if not isinstance(value, bool):
        raise TypeError(f"{fn}: {name} must be True or False, got {value!r}")
    return value


def check_eps(fn: str, eps: Any) -> float | None:
    """A relative accuracy ``eps >= 0`` as a float, or None.

    Raises
    ------
    TypeError
        Not a real number.
    ValueError
        Negative, NaN or infinite.
    """
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"{fn}: eps must be a real number or None, got {type(eps).__name__}")
    value = float(eps)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{fn}: eps must be finite and >= 0 (a relative Frobenius error), got {eps}")
    return value


def check_precision(fn: str, dtype: Any) -> None:
    """Raise ``TypeError`` unless ``dtype`` is float32, float64, complex64 or complex128.

    The SVDs and QRs behind the decompositions exist in those precisions only.
    """
    name = B.dtype_name(dtype)
    if name not in ("float32", "float64", "complex64", "complex128"):
        raise TypeError(
            f"{fn}: dtype {name} is not supported (the SVDs and QRs behind it exist in float32/float64 and "
            f"complex64/complex128 only, and a result stored in another precision could not keep the eps "
            f"guarantee); convert with .astype('float32') / .to(torch.float32) or t.to(dtype='float32')"
        )


def rng(fn: str, seed: Any) -> np.random.Generator:
    """``numpy.random.default_rng(seed)``, with a message naming ``fn`` for a seed it does not take.

    Accepted: None, an int >= 0, a sequence of such ints, a ``Generator``, ``BitGenerator`` or
    ``SeedSequence``.

    Raises
    ------
    TypeError
        A seed of another type (a float, a string, a bool).
    ValueError
        A negative int.
    """
    if isinstance(seed, (bool, np.bool_, float, complex, str, bytes)):
        raise TypeError(
            f"{fn}: seed must be None, an int >= 0, a sequence of such ints or a numpy Generator, got "
            f"{type(seed).__name__} {seed!r}"
        )
    try:
        return np.random.default_rng(seed)
    except TypeError:
        raise TypeError(
            f"{fn}: seed must be None, an int >= 0, a sequence of such ints or a numpy Generator, got "
            f"{type(seed).__name__} {seed!r:.60}"
        ) from None
    except ValueError:
        raise ValueError(
            f"{fn}: seed must be >= 0 (numpy's generators take no negative seeds), got {seed!r:.60}"
        ) from None


# --- indices ----------------------------------------------------------------------------------------
def index_rows(fn: str, index: Any, shape: Sequence[int], name: str = "index") -> np.ndarray:
    """``index`` (a ``(k, d)`` integer array or nested sequence) as host int64 rows within ``shape``.

    Negative entries count from the end of their mode. Every entry is range-checked in its own integer
    type before any cast (an unsigned 2^64 - 1 or a Python int beyond int64 is out of range, never
    wrapped).

    Raises
    ------
    TypeError
        Not an integer array or sequence (bools, floats, a masked array).
    ValueError
        Not of shape ``(k, d)``, or ragged rows.
    IndexError
        An entry outside its mode.
    """
    rows = _host_rows(fn, index, name)
    d = len(shape)
    if rows.ndim != 2 or int(rows.shape[1]) != d:
        raise ValueError(
            f"{fn}: {name} has shape {tuple(rows.shape)} but must be (k, {d}): one row (i_1, ..., i_{d}) "
            f"per entry of the shape-{tuple(shape)} train (wrap a single index as [index])"
        )
    if rows.dtype.kind == "u":  # compared unsigned: a cast to int64 first would wrap 2^64 - 1 to -1
        sizes: Any = np.asarray(shape, dtype=rows.dtype)
        bad = np.argwhere(rows >= sizes)
    else:  # signed ints, or Python ints of any size (object dtype) compared exactly
        sizes = np.asarray(shape, dtype=np.int64 if rows.dtype.kind == "i" else object)
        bad = np.argwhere((rows < -sizes) | (rows >= sizes))
    if bad.size:
        j, k = (int(v) for v in bad[0])
        raise IndexError(
            f"{fn}: {name} row {j} has {int(rows[j, k])} in mode {k}, which has size {int(shape[k])} "
            f"(valid: {-int(shape[k])} .. {int(shape[k]) - 1})"
        )
    rows = rows.astype(np.int64)
    sizes = np.asarray(shape, dtype=np.int64)
    return np.where(rows < 0, rows + sizes, rows)


def _host_rows(fn: str, index: Any, name: str) -> np.ndarray:
    """``index`` as a host numpy array of an integer dtype (or object dtype holding Python ints)."""
    if B.is_array(index):
        check_unmasked(fn, name, index)
        if B.is_complex(index) or B.is_floating(index) or str(index.dtype) in ("bool", "torch.bool"):
            raise TypeError(f"{fn}: {name} must hold integers, got dtype {index.dtype}")
        return np.asarray(B.to_backend(index, "numpy"))
    if not isinstance(index, Sequence) or isinstance(index, (str, bytes)):
        raise TypeError(f"{fn}: {name} must be a (k, d) integer array, got {type(index).__name__}")
    nested = [isinstance(row, Sequence) and not isinstance(row, (str, bytes)) for row in index]
    if any(nested) and not all(nested):
        j = nested.index(not nested[0])
        raise ValueError(
            f"{fn}: {name} mixes rows and single values (entry 0 is {'a row' if nested[0] else 'a value'}, "
            f"entry {j} is not); give a (k, d) array, one multi-index of d entries per row"
        )
    lengths = sorted({len(row) for row in index}) if all(nested) else []
    if len(lengths) > 1:
        raise ValueError(
            f"{fn}: {name} is ragged: its rows have lengths {lengths}; give a (k, d) array, one multi-index "
            "of d entries per row"
        )
    try:
        rows = np.asarray(index)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{fn}: {name} is not a (k, d) array of integers ({err})") from None
    if rows.size and rows.dtype.kind not in "iu":
        # numpy promotes mixed integer types (np.uint64 with int) to float64, and ints beyond int64 to
        # object: look at the entries themselves, exactly
        rows = np.asarray(index, dtype=object)
        for v in rows.reshape(-1).tolist():
            if not is_int(v):
                raise TypeError(f"{fn}: {name} must hold integers, got {type(v).__name__} {v!r}")
    return rows


def check_axes(fn: str, axis: Any, ndim: int) -> tuple[int, ...]:
    """``axis`` (an int or a sequence of ints, negative from the end) as sorted distinct modes.

    Raises
    ------
    TypeError
        Not an int or a sequence of ints.
    ValueError
        A mode out of range or repeated.
    """
    items = [axis] if isinstance(axis, numbers.Integral) else axis
    if isinstance(axis, bool) or not isinstance(items, Sequence) or isinstance(items, str):
        raise TypeError(f"{fn}: axis must be an int or a sequence of ints, got {axis!r}")
    axes = []
    for a in items:
        if not is_int(a):
            raise TypeError(f"{fn}: axis entries must be ints, got {a!r}")
        if not -ndim <= int(a) < ndim:
            raise ValueError(f"{fn}: axis {a} is out of range for a TT with {ndim} modes")
        axes.append(int(a) % ndim)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{fn}: axis {tuple(items)} repeats a mode")
    return tuple(sorted(axes))


# --- dense arrays -----------------------------------------------------------------------------------
def check_unmasked(fn: str, name: str, x: Any) -> None:
    """Raise ``TypeError`` for a numpy masked array: its masked entries have no value to decompose."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{fn}: {name} is a numpy masked array; tensornet needs a value for every entry. Fill the masked "
            "entries (x.filled(value)) or pass x.data to use the stored values as they are"
        )


def check_dense(fn: str, x: Any) -> Array:
    """Raise unless ``x`` is a float32/64 or complex64/128 array with at least one dimension, none of size 0.

    Raises
    ------
    TypeError
        Not an array, or not of those dtypes.
    ValueError
        A 0-d array or a zero-size dimension.
    """
    if not B.is_array(x):
        raise TypeError(f"{fn}: expected a numpy array or torch tensor, got {type(x).__name__}")
    check_unmasked(fn, "the array", x)
    if x.ndim < 1:
        raise ValueError(f"{fn}: expected an array with at least one dimension, got a 0-d array")
    if any(int(n) == 0 for n in x.shape):
        raise ValueError(f"{fn}: the array has a zero-size dimension (shape {tuple(x.shape)})")
    if not (B.is_complex(x) or B.is_floating(x)):
        raise TypeError(
            f"{fn}: dtype {x.dtype} is not supported; use float32/float64 or complex64/complex128"
        )
    check_precision(fn, x.dtype)
    return x


# --- an argument of a given class ------------------------------------------------------------------
def check_type(fn: str, x: Any, cls: type, name: str) -> None:
    """Raise ``TypeError`` unless ``x`` is a ``cls`` (TT or TTM)."""
    if not isinstance(x, cls):
        raise TypeError(f"{fn}: {name} must be a tensornet {cls.__name__}, got {type(x).__name__}")
