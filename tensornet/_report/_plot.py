"""Pictures of a bond report (matplotlib, imported when a picture is asked for)."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .._checks import check_eps
from ..tt import TT, TTM
from ._spectra import BondReport, report


def _pyplot() -> Any:
    try:
        return importlib.import_module("matplotlib.pyplot")
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "tn.plot_spectra: drawing needs matplotlib (pip install matplotlib, or the 'notebooks' extra); "
            "tn.report(t) gives the same numbers without it"
        ) from None


def plot_spectra(t: Any, *, eps: float | None = None, axes: Any = None) -> Any:
    """Draw the singular values at every bond of a train, and its ranks.

    Parameters
    ----------
    t : TT, TTM or BondReport
        A train (its :func:`tensornet.report` is computed) or a report.
    eps : float, optional
        Mark where :func:`tensornet.round` would cut at this accuracy: kept values filled, dropped ones
        hollow, and the ranks after the cut beside the current ones. Default: the report's ``eps``.
    axes : pair of matplotlib Axes, optional
        Where to draw (spectra, ranks); default: a new figure with two panels.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    TypeError
        ``t`` is not a TT, TTM or BondReport; a bad ``eps``.
    ValueError
        As :func:`tensornet.report`; ``axes`` is not two Axes.
    ModuleNotFoundError
        matplotlib is not installed.

    Notes
    -----
    Left: the singular values of bond k divided by the norm, at x = k on a log scale (exact zeros are
    not drawn). Right: the rank of each bond, and with ``eps`` the rank :meth:`BondReport.cut` gives.
    The figure is made with pyplot, so ``plt.show()`` shows it; in a notebook, a bare ``t.plot()`` as the
    last line of a cell shows it twice (once as a pyplot figure, once as the value): end it with ``;``.

    Cost: that of :func:`tensornet.report` (``O(d n r^3)``) and drawing ``sum_k r_k`` points.
    """
    if isinstance(t, (TT, TTM)):
        r = report(t, eps=eps)
    elif isinstance(t, BondReport):
        r = t
    else:
        raise TypeError(f"tn.plot_spectra: t must be a TT, TTM or BondReport, got {type(t).__name__}")
    eps = check_eps("tn.plot_spectra", eps if eps is not None else r.eps)
    plt = _pyplot()
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    elif len(axes) != 2:
        raise ValueError(
            f"tn.plot_spectra: axes must be two matplotlib Axes (spectra, ranks), got {len(axes)}"
        )
    spectra, ranks = axes
    fig = spectra.figure
    cuts = r.cut(eps) if eps is not None else None
    _draw_spectra(spectra, r, cuts)
    bonds = np.arange(1, len(r.ranks) - 1)
    ranks.plot(bonds, r.ranks[1:-1], "o-", color="C0", label="rank")
    if cuts is not None:
        ranks.plot(bonds, cuts[1:-1], "s--", color="C3", label=f"rank at eps={eps:g}")
    ranks.set_xlabel("bond k")
    ranks.set_ylabel("r_k")
    ranks.set_title("ranks")
    ranks.legend(loc="best", fontsize=8)
    spectra.set_title(f"{r.kind} of {len(r.ranks) - 1} cores: singular values at each bond")
    fig.tight_layout()
    return fig


def _draw_spectra(ax: Any, r: BondReport, cuts: tuple[int, ...] | None) -> None:
    for k, rel in enumerate(r.relative, start=1):
        shown = rel > 0
        x = np.full(rel.shape, k, dtype=float)
        if cuts is None:
            ax.plot(x[shown], rel[shown], "_", color="C0", markersize=10)
            continue
        kept = np.arange(rel.size) < cuts[k]
        ax.plot(
            x[shown & kept],
            rel[shown & kept],
            "o",
            color="C0",
            markersize=4,
            label="kept" if k == 1 else None,
        )
        ax.plot(
            x[shown & ~kept],
            rel[shown & ~kept],
            "o",
            markerfacecolor="none",
            color="C3",
            markersize=4,
            label="dropped" if k == 1 else None,
        )
    ax.set_yscale("log")
    ax.set_xlabel("bond k")
    ax.set_ylabel("s / ||x||")
    if cuts is not None:
        ax.legend(loc="best", fontsize=8)
