"""torchTT (``torchtt.TT``): the same core layouts as tensornet, on torch."""

from __future__ import annotations

from typing import Any

from ..tt import Train
from ._common import check_train, own, peer, torch_cores, wrap


def to_torchtt(t: Train) -> Any:
    """A ``torchtt.TT`` holding a copy of a TT or TTM.

    Parameters
    ----------
    t : TT or TTM
        numpy cores become torch tensors; torch cores are cloned (differentiable), on their device.

    Returns
    -------
    torchtt.TT
        A TT, or a TT-matrix for a TTM (``is_ttm``).

    Raises
    ------
    TypeError
        ``t`` is not a TT or TTM.
    ModuleNotFoundError
        torchTT (or torch) is not installed.

    Notes
    -----
    torchTT's layouts are tensornet's: TT cores ``(r_{k-1}, n_k, r_k)``, TT-matrix cores
    ``(r_{k-1}, m_k, n_k, r_k)`` with the row (output) mode before the column (input) mode; its ``full()``
    of a TT-matrix is the tensor ``(m_1, ..., m_d, n_1, ..., n_d)``. torchTT supports complex cores.

    Cost: a copy of the cores, ``O(nparams)``.
    """
    check_train("to_torchtt", t)
    torchtt = peer("to_torchtt", "torchtt")
    return torchtt.TT(torch_cores(t))


def from_torchtt(x: Any) -> Train:
    """A TT (or TTM, for a TT-matrix) from a ``torchtt.TT``; the cores are torch tensors, shared.

    Parameters
    ----------
    x : torchtt.TT

    Returns
    -------
    TT or TTM

    Raises
    ------
    TypeError
        ``x`` is not a ``torchtt.TT``.
    ValueError
        Its cores do not make a valid train (see :class:`tensornet.TT`).

    Notes
    -----
    The torch cores are used as they are (tensornet never writes into them), so autograd sees through the
    conversion; ``.to(...)`` copies.

    Cost: ``O(d)``.
    """
    torchtt = peer("from_torchtt", "torchtt")
    if not isinstance(x, torchtt.TT):
        raise TypeError(f"from_torchtt: expected a torchtt.TT, got {type(x).__name__}")
    return wrap("from_torchtt", own("from_torchtt", x.cores))
