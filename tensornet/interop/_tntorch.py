"""tntorch (``tntorch.Tensor``, ``tntorch.TTMatrix``)."""

from __future__ import annotations

from typing import Any

from ..tt import TT, TTM, Train
from ._common import check_train, own, peer, torch_cores, wrap


def to_tntorch(t: Train) -> Any:
    """A ``tntorch.Tensor`` (for a TT) or ``tntorch.TTMatrix`` (for a TTM) holding a copy of the cores.

    Parameters
    ----------
    t : TT or TTM
        numpy cores become torch tensors; torch cores are cloned (differentiable), on their device.

    Returns
    -------
    tntorch.Tensor or tntorch.TTMatrix

    Raises
    ------
    TypeError
        ``t`` is not a TT or TTM.
    ModuleNotFoundError
        tntorch (or torch) is not installed.

    Notes
    -----
    A ``tntorch.Tensor`` in TT format has tensornet's TT cores ``(r_{k-1}, n_k, r_k)``. A
    ``tntorch.TTMatrix`` has cores ``(r_{k-1}, i_k, o_k, r_k)`` and stands for the matrix whose rows run
    over ``input_dims`` (``i``) and columns over ``output_dims`` (``o``): tntorch's "input" is tensornet's
    row mode ``m_k``, so the cores are the same and ``TTMatrix.torch()`` is ``tn.full(t)``. tntorch holds
    complex cores, but its rounding and several of its operations assume real data: use them on real
    trains.

    Cost: a copy of the cores, ``O(nparams)``.
    """
    check_train("to_tntorch", t)
    tntorch = peer("to_tntorch", "tntorch")
    cores = torch_cores(t)
    if isinstance(t, TT):
        return tntorch.Tensor(cores)
    assert isinstance(t, TTM)
    return tntorch.TTMatrix(
        cores, ranks=list(t.ranks[1:-1]), input_dims=list(t.row_shape), output_dims=list(t.col_shape)
    )


def from_tntorch(x: Any) -> Train:
    """A TT from a ``tntorch.Tensor``, or a TTM from a ``tntorch.TTMatrix``.

    Parameters
    ----------
    x : tntorch.Tensor or tntorch.TTMatrix
        Tucker factors are multiplied into the cores (tntorch's ``decompress_tucker_factors``); CP factors
        ``(n_k, R)`` become TT cores with diagonal slices, in the factors' dtype (tntorch's own ``tt()``
        builds them in torch's default dtype, float32, which would round float64 factors).

    Returns
    -------
    TT or TTM
        torch cores (those of ``x`` where it is pure TT, shared; tensornet never writes into them).

    Raises
    ------
    TypeError
        ``x`` is neither.
    ValueError
        A batched tntorch object (a batch of trains, not one), or cores that do not make a valid train.

    Cost: ``O(d)``; ``O(d n r^2)`` for Tucker factors or CP cores.
    """
    tntorch = peer("from_tntorch", "tntorch")
    if not isinstance(x, (tntorch.Tensor, tntorch.TTMatrix)):
        raise TypeError(
            f"from_tntorch: expected a tntorch.Tensor or tntorch.TTMatrix, got {type(x).__name__}"
        )
    if getattr(x, "batch", False):
        raise ValueError("from_tntorch: x is a batch of tntorch trains; convert them one at a time")
    if isinstance(x, tntorch.TTMatrix):
        cores = own("from_tntorch", x.cores)
        if any(int(c.ndim) != 4 for c in cores):
            raise ValueError("from_tntorch: a TTMatrix's cores must be 4-D (r, i, o, r')")
        return TTM(cores)
    pure = x if all(u is None for u in x.Us) else x.decompress_tucker_factors()
    cores = own("from_tntorch", pure.cores)
    return wrap("from_tntorch", [_tt_core(c, k, len(cores)) for k, c in enumerate(cores)])


def _tt_core(core: Any, k: int, d: int) -> Any:
    """A tntorch core as a TT core, in its own dtype and device.

    CP factors ``(n, R)`` become ``(1, n, R)``, ``(R, n, R)`` with diagonal slices, or ``(R, n, 1)`` (first,
    middle, last core); TT cores are returned as they are.
    """
    if int(core.ndim) != 2:
        return core
    if d == 1:
        return core.sum(dim=1).reshape(1, -1, 1)
    if k == 0:
        return core[None]
    if k == d - 1:
        return core.T[..., None]
    n, rank = (int(s) for s in core.shape)
    torch = peer("from_tntorch", "torch")
    diagonal = torch.zeros((rank, n, rank), dtype=core.dtype, device=core.device)
    index = torch.arange(rank, device=core.device)
    diagonal[index, :, index] = core.T  # slice i is diag(core[i, :])
    return diagonal
