"""tensorly (``tensorly.tt_tensor.TTTensor``, ``tensorly.tt_matrix.TTMatrix``)."""

from __future__ import annotations

from typing import Any

from ..tt import TT, Train
from ._common import check_train, own, peer, wrap


def to_tensorly(t: Train) -> Any:
    """A ``TTTensor`` (for a TT) or ``TTMatrix`` (for a TTM) holding copies of the cores.

    Parameters
    ----------
    t : TT or TTM
        numpy or torch cores; the factors keep the train's backend (torch cores are cloned, differentiable).

    Returns
    -------
    tensorly.tt_tensor.TTTensor or tensorly.tt_matrix.TTMatrix

    Raises
    ------
    TypeError
        ``t`` is not a TT or TTM.
    ModuleNotFoundError
        tensorly is not installed.

    Notes
    -----
    tensorly's factors have tensornet's layouts: ``(r_{k-1}, n_k, r_k)``, and for a TT-matrix
    ``(r_{k-1}, m_k, n_k, r_k)`` with the matrix ``(prod m, prod n)`` (``tt_matrix_to_matrix``).
    tensorly computes with its global backend (``tensorly.set_backend``): set it to the train's
    (``'numpy'`` or ``'pytorch'``) before calling tensorly functions on the result. Complex factors are
    held; tensorly's reconstructions handle them.

    Cost: a copy of the cores, ``O(nparams)``.
    """
    check_train("to_tensorly", t)
    cores = [c.clone() for c in t.cores] if t.backend == "torch" else [c.copy() for c in t.cores]
    if isinstance(t, TT):
        return peer("to_tensorly", "tensorly.tt_tensor").TTTensor(cores)
    return peer("to_tensorly", "tensorly.tt_matrix").TTMatrix(cores)


def from_tensorly(x: Any) -> Train:
    """A TT from a ``TTTensor`` (or a list of 3-D factors), a TTM from a ``TTMatrix`` (or 4-D factors).

    Parameters
    ----------
    x : TTTensor, TTMatrix, or list of arrays
        numpy or torch factors (those of tensorly's numpy or pytorch backends).

    Returns
    -------
    TT or TTM

    Raises
    ------
    TypeError
        ``x`` is none of these.
    ValueError
        The factors do not make a valid train (see :class:`tensornet.TT`).

    Cost: ``O(d)`` (numpy factors are copied, ``O(nparams)``).
    """
    tt_tensor = peer("from_tensorly", "tensorly.tt_tensor")
    tt_matrix = peer("from_tensorly", "tensorly.tt_matrix")
    if isinstance(x, (tt_tensor.TTTensor, tt_matrix.TTMatrix)):
        return wrap("from_tensorly", own("from_tensorly", x.factors))
    if isinstance(x, (list, tuple)):
        return wrap("from_tensorly", list(x))
    raise TypeError(
        f"from_tensorly: expected a TTTensor, TTMatrix or list of factors, got {type(x).__name__}"
    )
