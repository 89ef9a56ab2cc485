"""The bond report: the singular values of every unfolding of a train, from one orthogonalisation sweep."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _backend as B
from .. import _checks, _orthogonal, _pow2
from .._layout import tt_layout
from .._truncation import choose_rank
from ..tt import TT, TTM, Train

__all__ = ["BondReport", "report"]


@dataclass(frozen=True, eq=False)
class BondReport:
    """The ranks of a train and the singular values at each of its bonds (from :func:`report`).

    Bond k (``1 <= k <= d - 1``) sits between cores k and k + 1 (counted from 1); its singular values are
    those of the unfolding of the dense object with modes 1..k as rows (for a TTM, each core's row and
    column modes together), so their squares sum to ``norm**2`` at every bond.

    Attributes
    ----------
    kind : str
        'TT' or 'TTM'.
    modes : tuple
        Mode sizes per core: ``n_k`` for a TT, ``(m_k, n_k)`` for a TTM.
    ranks : tuple of int
        The train's ranks ``(1, r_1, ..., r_{d-1}, 1)``.
    norm : float
        The Frobenius norm ``||x||_F``.
    singular_values : tuple of numpy.ndarray
        ``d - 1`` float64 arrays, descending; array k - 1 (bond k) has at most ``r_k`` values (fewer where
        the bond's rank is larger than the unfolding's).
    dtype, backend : str
        Of the train's cores.
    nparams : int
        Numbers the cores store.
    eps : float or None
        The accuracy the report was asked about (None: none): its rendering shows :meth:`cut` for it.
    """

    kind: str
    modes: tuple[Any, ...]
    ranks: tuple[int, ...]
    norm: float
    singular_values: tuple[np.ndarray, ...]
    dtype: str
    backend: str
    nparams: int
    eps: float | None = None

    @property
    def relative(self) -> tuple[np.ndarray, ...]:
        """The singular values divided by ``norm`` (all zeros for the zero train)."""
        if not self.norm > 0.0:
            return tuple(np.zeros_like(s) for s in self.singular_values)
        return tuple(s / self.norm for s in self.singular_values)

    def cut(self, eps: float) -> tuple[int, ...]:
        """The ranks at which ``tn.round(t, eps=eps)``'s rule would cut each bond.

        Parameters
        ----------
        eps : float
            Relative accuracy, ``>= 0``.

        Returns
        -------
        tuple of int
            ``(1, c_1, ..., c_{d-1}, 1)``: at bond k, the fewest leading singular values whose discarded tail
            has norm at most ``eps / sqrt(d - 1) * norm`` (at least 1).

        Raises
        ------
        TypeError, ValueError
            ``eps`` is not a finite real number ``>= 0``.

        Notes
        -----
        This is the per-unfolding threshold rule of :func:`tensornet.round` and :func:`tensornet.tt_svd`
        applied to the unfoldings of the train itself. :func:`tensornet.round` truncates the bonds one after
        the other, each unfolding seen through the bonds already truncated, whose singular values are no
        larger (a projection does not increase them); so its ranks are at most these, and equal to them
        unless a cut falls between nearly equal values. Truncating every bond here discards at most
        ``eps * norm`` in all.
        """
        return (1, *(rank for rank, _ in self._cuts(eps)), 1)

    def discarded(self, eps: float) -> tuple[float, ...]:
        """Per bond, the norm of the singular values :meth:`cut` drops, relative to ``norm``.

        Raises
        ------
        TypeError, ValueError
            As :meth:`cut`.
        """
        return tuple(tail for _, tail in self._cuts(eps))

    def _cuts(self, eps: float) -> list[tuple[int, float]]:
        value = _checks.check_eps("BondReport.cut", eps)
        if value is None:
            raise TypeError("BondReport.cut: eps must be a real number >= 0, got None")
        threshold = value / math.sqrt(max(len(self.ranks) - 2, 1))
        out = []
        for s in self.relative:
            if s.size == 0 or not s[0] > 0.0:
                out.append((1, 0.0))
                continue
            rank, tail, _ = choose_rank(s, threshold, None)
            out.append((rank, tail))
        return out

    def __repr__(self) -> str:
        return _text(self)

    def _repr_html_(self) -> str:
        from ._html import report_html

        return report_html(self)

    def plot(self, *, eps: float | None = None, axes: Any = None) -> Any:
        """Draw the bond spectra and ranks (:func:`tensornet.plot_spectra`); returns the figure."""
        from ._plot import plot_spectra

        return plot_spectra(self, eps=eps, axes=axes)


def report(t: Train, *, eps: float | None = None) -> BondReport:
    """The bond report of a train: its ranks and the singular values at every bond.

    Parameters
    ----------
    t : TT or TTM
        Any backend, device and dtype a train holds; torch cores are detached (the report is numbers).
    eps : float, optional
        A relative accuracy to show where :func:`tensornet.round` would cut (see :meth:`BondReport.cut`).

    Returns
    -------
    BondReport
        Printed as a table; in a notebook as an HTML table; ``.plot()`` draws it.

    Raises
    ------
    TypeError
        ``t`` is not a TT or TTM; ``eps`` is not a real number.
    ValueError
        ``eps`` negative or not finite; NaN or inf in the cores.

    Notes
    -----
    One sweep: the train is right-orthogonalised (QR from the last core), then cores 1..d-1 are visited
    left to right; with the cores to the left left-orthonormal and those to the right right-orthonormal,
    the singular values of core k's unfolding ``(r_{k-1} n_k, r_k)`` are those of the k-th unfolding of
    the whole tensor, and ``S V^H`` moves on to the next core. The work is done on the host in float64
    (complex128 for complex trains), with the power-of-two rescaling of :func:`tensornet.round`, so the
    values are right at every finite scale.

    Cost: ``O(d n r^3)`` (n the largest mode size, ``m n`` for a TTM; r the largest rank), the cost of
    one orthogonalisation; never through the dense tensor.

    Examples
    --------
    >>> import numpy as np
    >>> import tensornet as tn
    >>> x = np.fromfunction(lambda *i: 1 / (1 + sum(i)), (8,) * 5)
    >>> r = tn.report(tn.tt_svd(x), eps=1e-6)
    >>> r.ranks, r.cut(1e-6)
    ((1, 8, 64, 64, 8, 1), (1, 6, 7, 7, 6, 1))
    >>> tn.round(tn.tt_svd(x), eps=1e-6).ranks
    (1, 6, 7, 7, 6, 1)
    >>> bool(np.isclose(np.sum(r.singular_values[1] ** 2), r.norm**2))
    True
    """
    if not isinstance(t, (TT, TTM)):
        raise TypeError(f"tn.report: t must be a TT or TTM, got {type(t).__name__}")
    eps = _checks.check_eps("tn.report", eps)
    host = [_host(c) for c in tt_layout(t.cores)]
    singular, norm = _bond_spectra(host)
    modes: tuple[Any, ...] = t.shape if isinstance(t, TT) else tuple(zip(t.row_shape, t.col_shape))
    return BondReport(
        kind=type(t).__name__,
        modes=modes,
        ranks=t.ranks,
        norm=norm,
        singular_values=singular,
        dtype=B.dtype_name(t.dtype),
        backend=t.backend,
        nparams=t.nparams,
        eps=eps,
    )


def _host(core: Any) -> np.ndarray:
    """A core as a float64 (complex128) numpy array: the report's precision whatever the train's."""
    if B.backend_name(core) == "torch":
        core = core.detach().cpu()
        if B.dtype_name(core.dtype) in ("float16", "bfloat16"):
            core = core.float()
        core = core.numpy()
    return np.asarray(core, dtype=np.complex128 if np.iscomplexobj(core) else np.float64)


def _bond_spectra(cores: Sequence[np.ndarray]) -> tuple[tuple[np.ndarray, ...], float]:
    """The singular values at every bond (absolute) and the norm, from host TT-layout cores."""
    scaled, shift = _pow2.normalize_cores("tn.report", list(cores))
    ortho, extra = _orthogonal.orthogonalized(scaled, 0)  # cores 2..d right-orthonormal; x = 2^e train
    exponent = shift + extra
    carry = ortho[0]
    values = []
    for k in range(len(ortho) - 1):
        r, n, rk = carry.shape
        _, s, vh = np.linalg.svd(carry.reshape(r * n, rk), full_matrices=False)
        values.append((s, exponent))
        nxt = ortho[k + 1]
        moved = (s[:, None] * vh) @ nxt.reshape(nxt.shape[0], -1)
        moved, e = B.renormalized(moved)
        exponent += e
        carry = moved.reshape(len(s), nxt.shape[1], nxt.shape[2])
    norm = _norm(carry, exponent)
    with np.errstate(over="ignore", under="ignore"):
        singular = tuple(np.ldexp(s, e) for s, e in values)
    return singular, norm


def _norm(core: np.ndarray, exponent: int) -> float:
    top = float(np.max(np.abs(core))) if core.size else 0.0
    if not top > 0.0:
        return 0.0
    with np.errstate(over="ignore", under="ignore"):
        return float(np.ldexp(top * float(np.linalg.norm(core / top)), exponent))


def _text(r: BondReport) -> str:
    """The report as a plain-text table (its ``repr``)."""
    d = len(r.ranks) - 1
    head = f"BondReport({r.kind}, {d} cores, modes={r.modes}, {r.backend} {r.dtype}, {r.nparams:,} params, "
    head += f"norm={r.norm:.6g})"
    cuts = r.cut(r.eps) if r.eps is not None else None
    cols = ["bond", "rank", "s_max/norm", "s_min/norm"] + ([f"rank at eps={r.eps:g}"] if cuts else [])
    rows = []
    for k, rel in enumerate(r.relative, start=1):
        row = [str(k), str(r.ranks[k]), _fmt(rel, 0), _fmt(rel, -1)]
        if cuts:
            row.append(str(cuts[k]))
        rows.append(row)
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _fmt(values: np.ndarray, index: int) -> str:
    return f"{float(values[index]):.3e}" if values.size else "-"
