"""teneva (a TT is a plain list of numpy cores)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tt import TT
from ._common import check_train, numpy_cores, peer


def to_teneva(t: TT) -> list[np.ndarray]:
    """A TT as teneva's format: a list of writable numpy cores ``(r_{k-1}, n_k, r_k)`` (a copy).

    Parameters
    ----------
    t : TT
        Any backend; torch cores are detached and copied to the host.

    Returns
    -------
    list of numpy.ndarray

    Raises
    ------
    TypeError
        ``t`` is not a TT (teneva has no TT-matrix type: its operators are TTs of merged ``m_k n_k``
        modes, which ``tn.TT([c.reshape(r, m * n, s) for c in A.cores])`` gives).
    ModuleNotFoundError
        teneva is not installed (checked so that a missing peer is found here, not later).

    Notes
    -----
    teneva's TT is tensornet's TT layout as a list. teneva's ``full`` and arithmetic work on complex
    cores, but its ``truncate`` (rounding), ``als`` and ``cross`` assume real data and give wrong results
    on complex ones: convert complex trains for storage or evaluation only.

    Cost: a copy of the cores, ``O(nparams)``.

    Examples
    --------
    >>> import numpy as np, teneva
    >>> import tensornet as tn
    >>> from tensornet import interop
    >>> t = tn.random_tt((4, 5, 6), 3, seed=0)
    >>> y = interop.to_teneva(t)
    >>> [c.shape for c in y]
    [(1, 4, 3), (3, 5, 3), (3, 6, 1)]
    >>> bool(np.allclose(teneva.full(y), tn.full(t)))
    True
    >>> bool(tn.norm(interop.from_teneva(y) - t) < 1e-12)
    True
    """
    check_train("to_teneva", t, (TT,))
    peer("to_teneva", "teneva")
    return numpy_cores(t)


def from_teneva(y: Any) -> TT:
    """A TT from teneva's format (a list of 3-D numpy cores; copied, as :class:`tensornet.TT` copies).

    Parameters
    ----------
    y : list of numpy.ndarray
        Cores ``(r_{k-1}, n_k, r_k)``.

    Returns
    -------
    TT

    Raises
    ------
    TypeError
        ``y`` is not a list or tuple of numpy arrays.
    ValueError
        The cores do not make a valid TT (see :class:`tensornet.TT`).

    Cost: a copy of the cores, ``O(nparams)``.
    """
    if not isinstance(y, (list, tuple)) or not all(isinstance(c, np.ndarray) for c in y):
        raise TypeError(f"from_teneva: expected a list of numpy arrays (teneva's TT), got {type(y).__name__}")
    return TT(list(y))
