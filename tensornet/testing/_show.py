"""How hypothesis prints trains in a falsifying example: compactly, with the cores only when they are small.

``repr`` of a train already names its shape, ranks, backend, dtype and parameter count; a failing example
of a few entries is easier to read (and to copy into a regression test) with its cores, so hypothesis's
printer shows them, rounded, up to :data:`SMALL` parameters. ``repr`` itself is unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import _backend as B
from ..tt import TT, TTM

SMALL = 32
"""Trains with at most this many parameters are printed with their cores."""


def _core_text(core: Any) -> str:
    array = np.asarray(B.to_backend(core, "numpy"))
    text = np.array2string(array, precision=4, separator=", ", max_line_width=10**6, threshold=10**6)
    return " ".join(text.split())


def describe(train: TT | TTM) -> str:
    """``repr(train)``, with ``cores=[...]`` (4 significant digits) when it has at most :data:`SMALL` parameters."""
    text = repr(train)
    if train.nparams > SMALL:
        return text
    return f"{text[:-1]}, cores=[{', '.join(_core_text(c) for c in train.cores)}])"


def _print(obj: Any, printer: Any, cycle: bool) -> None:
    printer.text(describe(obj))


def register() -> None:
    """Make hypothesis's printer use :func:`describe` for TT and TTM (``repr`` everywhere else is unchanged)."""
    # the printer hypothesis vendors from IPython; for_type_by_name has been its registration hook throughout
    from hypothesis.vendor.pretty import for_type_by_name

    for cls in (TT, TTM):
        for_type_by_name(cls.__module__, cls.__name__, _print)
