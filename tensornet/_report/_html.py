"""HTML tables for notebooks: a train's ``_repr_html_`` and a :class:`BondReport`'s."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from .. import _backend as B
from ..tt import TTM

if TYPE_CHECKING:
    from ..tt import Train
    from ._spectra import BondReport

_STYLE = "border-collapse:collapse;font-family:monospace;font-size:12px"
_CELL = "padding:1px 8px;text-align:left"


def _table(caption: str, rows: list[tuple[str, Any]]) -> str:
    body = "".join(
        f'<tr><th style="{_CELL}">{html.escape(name)}</th><td style="{_CELL}">{html.escape(str(value))}</td></tr>'
        for name, value in rows
    )
    return f'<table style="{_STYLE}"><caption style="text-align:left"><b>{html.escape(caption)}</b></caption>{body}</table>'


def train_html(t: Train) -> str:
    """A compact table of a TT or TTM: shape, ranks, dtype, backend and device, parameters."""
    rows: list[tuple[str, Any]] = [("shape", t.shape)]
    if isinstance(t, TTM):
        rows += [("row_shape", t.row_shape), ("col_shape", t.col_shape)]
    device = "" if t.backend == "numpy" else f" on {t.device}"
    rows += [
        ("ranks", t.ranks),
        ("dtype", B.dtype_name(t.dtype)),
        ("backend", f"{t.backend}{device}"),
        ("parameters", f"{t.nparams:,} ({t.compression:,.3g}x fewer than dense)"),
    ]
    return _table(type(t).__name__, rows)


def report_html(r: BondReport) -> str:
    """A :class:`BondReport` as an HTML table, one row per bond."""
    cuts = r.cut(r.eps) if r.eps is not None else None
    cols = ["bond", "rank", "s_max / norm", "s_min / norm"] + ([f"rank at eps={r.eps:g}"] if cuts else [])
    head = "".join(f'<th style="{_CELL}">{html.escape(c)}</th>' for c in cols)
    body = []
    for k, rel in enumerate(r.relative, start=1):
        cells = [str(k), str(r.ranks[k]), _fmt(rel, 0), _fmt(rel, -1)] + ([str(cuts[k])] if cuts else [])
        body.append("<tr>" + "".join(f'<td style="{_CELL}">{html.escape(c)}</td>' for c in cells) + "</tr>")
    caption = (
        f"BondReport: {r.kind}, {len(r.ranks) - 1} cores, {r.backend} {r.dtype}, "
        f"{r.nparams:,} params, norm {r.norm:.6g}"
    )
    return (
        f'<table style="{_STYLE}"><caption style="text-align:left"><b>{html.escape(caption)}</b></caption>'
        f"<tr>{head}</tr>{''.join(body)}</table>"
    )


def _fmt(values: Any, index: int) -> str:
    return f"{float(values[index]):.3e}" if values.size else "-"
