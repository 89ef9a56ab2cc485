"""quimb (``quimb.tensor.MatrixProductState`` / ``MatrixProductOperator``)."""

from __future__ import annotations

from typing import Any

from ..tt import TT, TTM, Train
from ._common import check_train, peer


def _lrp(core: Any, k: int, d: int, xp_permute: Any) -> Any:
    """A TT core (r, n, r') in quimb's 'lrp' order, without the boundary bonds of the end sites."""
    arr = xp_permute(core, (0, 2, 1))  # (l, r, p)
    if k == d - 1:
        arr = arr[:, 0]  # (l, p)
    if k == 0:
        arr = arr[0]  # (r, p) or (p,) for one site
    return arr


def _permute(backend: str) -> Any:
    if backend == "torch":
        return lambda a, axes: a.permute(*axes).clone()
    return lambda a, axes: a.transpose(axes).copy()


def to_quimb(t: Train) -> Any:
    """A quimb ``MatrixProductState`` (for a TT) or ``MatrixProductOperator`` (for a TTM), copied.

    Parameters
    ----------
    t : TT or TTM
        numpy or torch cores (quimb holds either); the arrays are copies in quimb's order.

    Returns
    -------
    quimb.tensor.MatrixProductState or quimb.tensor.MatrixProductOperator

    Raises
    ------
    TypeError
        ``t`` is not a TT or TTM.
    ModuleNotFoundError
        quimb is not installed.

    Notes
    -----
    quimb orders a site tensor's indices by name, not position; the arrays are built in its ``'lrp'``
    (left bond, right bond, physical) and ``'lrud'`` (left, right, upper, lower) shapes, the first site
    without its left bond and the last without its right one. tensornet's TT core ``(r_{k-1}, n_k, r_k)``
    is ``(l, p, r)``; a TTM core ``(r_{k-1}, m_k, n_k, r_k)`` is ``(l, u, d, r)``: the upper (``k{}``)
    indices are the rows, the lower (``b{}``) the columns, so ``to_dense()`` of the MPO is ``tn.full(t)``
    and ``mpo.apply(mps)`` is ``t @ x``. The MPS's ``to_dense()`` is ``tn.full(t)`` as a column
    ``(prod n, 1)``. quimb supports complex arrays throughout.

    Cost: a copy of the cores, ``O(nparams)``.

    Examples
    --------
    >>> import numpy as np
    >>> import tensornet as tn
    >>> from tensornet import interop
    >>> a = tn.random_ttm((2, 3), (4, 5), 2, seed=0)
    >>> mpo = interop.to_quimb(a)
    >>> [tuple(x.shape) for x in mpo.arrays]
    [(2, 2, 4), (2, 3, 5)]
    >>> bool(np.allclose(mpo.to_dense(), tn.full(a)))
    True
    """
    check_train("to_quimb", t)
    qtn = peer("to_quimb", "quimb.tensor")
    permute = _permute(t.backend)
    d = t.ncores
    if isinstance(t, TT):
        return qtn.MatrixProductState([_lrp(c, k, d, permute) for k, c in enumerate(t.cores)], shape="lrp")
    arrays = []
    for k, core in enumerate(t.cores):
        arr = permute(core, (0, 3, 1, 2))  # (l, r, u, d)
        if k == d - 1:
            arr = arr[:, 0]
        if k == 0:
            arr = arr[0]
        arrays.append(arr)
    return qtn.MatrixProductOperator(arrays, shape="lrud")


def from_quimb(x: Any) -> Train:
    """A TT from a quimb ``MatrixProductState``, or a TTM from a ``MatrixProductOperator``.

    Parameters
    ----------
    x : quimb.tensor.MatrixProductState or quimb.tensor.MatrixProductOperator
        Open boundaries, one tensor per site, numpy or torch arrays.

    Returns
    -------
    TT or TTM
        Cores ``(l, p, r)`` / ``(l, u, d, r)`` read from the tensors by index name (whatever order quimb
        keeps them in), so the MPO's upper indices become the rows.

    Raises
    ------
    TypeError
        ``x`` is neither.
    ValueError
        A cyclic (periodic) MPS/MPO, or a site with more than one tensor.

    Cost: a copy of the cores, ``O(nparams)``.
    """
    qtn = peer("from_quimb", "quimb.tensor")
    if not isinstance(x, (qtn.MatrixProductState, qtn.MatrixProductOperator)):
        raise TypeError(
            f"from_quimb: expected a quimb MatrixProductState or MatrixProductOperator, got {type(x).__name__}"
        )
    if x.cyclic:
        raise ValueError("from_quimb: x has periodic boundaries (cyclic); a TT has open ones (r_0 = r_d = 1)")
    operator = isinstance(x, qtn.MatrixProductOperator)
    cores = [_site_core(x, k, operator) for k in range(x.L)]
    return TTM(cores) if operator else TT(cores)


def _site_core(x: Any, k: int, operator: bool) -> Any:
    """Site k's tensor as a core (l, p, r) or (l, u, d, r), with size-1 bonds at the ends."""
    tensors = x.select_tensors(x.site_tag(k))
    if len(tensors) != 1:
        raise ValueError(f"from_quimb: site {k} has {len(tensors)} tensors; one per site is needed")
    tensor = tensors[0]
    left = [x.bond(k - 1, k)] if k > 0 else []
    right = [x.bond(k, k + 1)] if k < x.L - 1 else []
    middle = [x.upper_ind(k), x.lower_ind(k)] if operator else [x.site_ind(k)]
    order = [*left, *middle, *right]
    if set(order) != set(tensor.inds):
        raise ValueError(f"from_quimb: site {k} has indices {tensor.inds}; expected {tuple(order)}")
    data = tensor.transpose(*order).data
    shape = [int(n) for n in data.shape]
    full = ([] if left else [1]) + shape + ([] if right else [1])
    return data.reshape(full)
