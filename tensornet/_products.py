"""Products of TTMs with trains and with dense arrays: ``A @ x``, ``A @ B`` and the layer product.

Re-exported by :mod:`tensornet.ops`; ``linear`` itself lives in :mod:`tensornet._linear`.
"""

from __future__ import annotations

from typing import Any

from . import _backend as B
from . import _checks, _linear, _pow2, _train_checks
from ._backend import Array
from ._einsum import einsum
from ._matvec_round import rounded_matvec
from ._truncation import RankCapWarning
from .decomp import RankSpec
from .decomp import round as round_train
from .tt import TT, TTM

__all__ = ["linear", "matmul", "matvec"]


@B.exact
def matvec(a: TTM, x: TT, *, eps: float | None = None, max_rank: RankSpec | None = None) -> TT:
    """``A @ x`` for a TTM ``A`` of shape (M, N) and a TT ``x`` of shape ``A.col_shape``, optionally rounded.

    Parameters
    ----------
    a : TTM
    x : TT
        Shape ``A.col_shape``, on A's backend, dtype and device.
    eps : float, optional
        Round the product: ``||A x - result||_F <= eps ||A x||_F`` (the guarantee of :func:`tensornet.round`);
        see the notes for when the product of rank ``r s`` is formed first.
    max_rank : int or sequence of int, optional
        Cap the result's ranks (a rank spec as for :func:`tensornet.round`); with eps, the cap wins and a
        :class:`tensornet.RankCapWarning` gives the error bound achieved.

    Returns
    -------
    TT
        Shape ``A.row_shape``; ranks ``r s`` (exact product) or as small as eps and max_rank allow.

    Raises
    ------
    TypeError
        ``A`` not a TTM, ``x`` not a TT, different backends or dtypes, a bad ``eps``/``max_rank`` type,
        half-precision cores with eps or max_rank.
    ValueError
        ``A.col_shape != x.shape``, different devices, negative/NaN eps, max_rank < 1.

    Notes
    -----
    ``Y_k[:, i, :] = sum_j A_k[:, i, j, :] (x) X_k[:, j, :]``. Rounded: where the product's cores fit in a
    quarter of the free memory it is formed and rounded by :func:`tensornet.round` (measured the fastest
    certified route); otherwise a randomised frame (sketch rank ``r_x + 8``), the exact projection of
    ``A x`` on it and a certified bound of the frame's error from the telescoping sum of
    ``||(I - U_k U_k^H) Ct_k (A x)_{>k}||`` (each piece formed before squaring), then :func:`tensornet.round`
    of the projection with the rest of ``eps``, never holding the product's cores
    (:mod:`tensornet._matvec_round`).

    Cost: ``O(d m n r^2 s^2)`` exact; rounded, that plus ``O(d m (r s)^3)`` (formed) or
    ``O(d (n s^2 r^3 + m n s^3 r^2 + m n s r l^2))`` for sketch rank l (sketched).
    """
    _check_operands("matvec", a, x, TT, ("x", "shape", x.shape if isinstance(x, TT) else ()))
    a, x = _train_checks.promoted(a, x)
    if eps is None and max_rank is None:
        return _exact_matvec(a, x)
    eps = _checks.check_eps("matvec", eps)
    _checks.check_precision("matvec", a.dtype)
    caps = _checks.rank_caps("matvec", max_rank, a.ncores)
    result, bound = rounded_matvec("matvec", a, x, eps, caps, round_train, _exact_matvec)
    if eps is not None and bound > eps and any(c is not None for c in caps):
        B.warn(
            f"matvec: max_rank kept the result from meeting eps={eps:g}; the achieved relative error bound is "
            f"{bound:.3g}. Raise max_rank to meet eps.",
            RankCapWarning,
        )
    return result


def _exact_matvec(a: TTM, x: TT) -> TT:
    """The product's cores ``(r s, m, r' s')`` (no checks)."""
    xp = B.namespace(*a.cores)
    columns = [xp.reshape(c, (int(c.shape[0]), int(c.shape[1]), 1, int(c.shape[2]))) for c in x.cores]
    cores = _pow2.scaled_product("matvec", a.cores, columns, _product_cores)
    return TT._trusted([xp.reshape(c, (int(c.shape[0]), int(c.shape[1]), int(c.shape[3]))) for c in cores])


@B.exact
def matmul(a: TTM, b: TTM) -> TTM:
    """``A @ B`` for TTMs with ``A.col_shape == B.row_shape``.

    Returns
    -------
    TTM
        Row shape ``A.row_shape``, column shape ``B.col_shape``, ranks ``r s``.

    Raises
    ------
    TypeError
        Not two TTMs of one backend and dtype.
    ValueError
        ``A.col_shape != B.row_shape``, different devices.

    Notes
    -----
    ``C_k[:, i, j, :] = sum_l A_k[:, i, l, :] (x) B_k[:, l, j, :]``.

    Cost: ``O(d m k n r^2 s^2)``.
    """
    _check_operands("matmul", a, b, TTM, ("B", "row_shape", b.row_shape if isinstance(b, TTM) else ()))
    a, b = _train_checks.promoted(a, b)
    return TTM._trusted(_pow2.scaled_product("matmul", a.cores, b.cores, _product_cores))


def _check_operands(fn: str, a: Any, b: Any, kind: type, modes: tuple[str, str, tuple[int, ...]]) -> None:
    """Raise unless ``a`` is a TTM and ``b`` a ``kind`` of one storage whose ``modes`` match ``A.col_shape``."""
    name, what, shape = modes
    _checks.check_type(fn, a, TTM, "A")
    _checks.check_type(fn, b, kind, name)
    _train_checks.check_same_storage(fn, a, b)
    if a.col_shape != shape:
        raise ValueError(
            f"{fn}: A has col_shape {a.col_shape} but {name} has {what} {shape}; they must match core by core"
        )


def _product_cores(ca: list[Array], cb: list[Array]) -> list[Array]:
    """``C_k[:, i, j, :] = sum_l A_k[:, i, l, :] (x) B_k[:, l, j, :]``: the cores of the TTM product."""
    xp = B.namespace(*ca)
    cores = []
    for p, q in zip(ca, cb):
        ra, m, _, ra2 = (int(s) for s in p.shape)
        rb, _, n, rb2 = (int(s) for s in q.shape)
        cores.append(xp.reshape(einsum("amkb,ckne->acmnbe", p, q), (ra * rb, m, n, ra2 * rb2)))
    return cores


def linear(x: Array, w: TTM, bias: Array | None = None, *, save_weight: bool = False) -> Array:
    """``x @ W.full().T (+ bias)`` for dense ``x`` of shape ``(..., N)`` and a TTM ``W`` of shape (M, N).

    Parameters
    ----------
    x : array of shape ``(..., N)``
        Any number of leading dimensions.
    w : TTM
        The weight, stored like ``torch.nn.Linear.weight``: ``(out_features, in_features)``.
    bias : array of shape ``(M,)``, optional
    save_weight : bool
        Torch only (numpy has no backward). A forward that rebuilds W, with a backward planned from the
        dense W (both are the plans for many tokens), keeps W (if x needs a gradient) and the halves of
        its product (if the cores do) instead of saving only ``x`` and the cores: one rebuild less per
        step for up to ``M N`` more saved entries per call.

    Returns
    -------
    array of shape ``(..., M)``

    Raises
    ------
    TypeError
        ``W`` not a TTM, ``x`` not an array, backend or dtype mismatch (dtypes may differ under torch
        autocast), ``save_weight`` not a bool.
    ValueError
        ``x.shape[-1] != N``, a bias that is not ``(M,)``, devices that differ.

    Notes
    -----
    The contraction is planned per shape bucket by :func:`tensornet.contract.plan_linear` (rebuild W
    then one GEMM, or a factorised core-by-core sweep; see :func:`tensornet.contract.explain`). With
    torch tensors the product is a ``torch.autograd.Function`` that saves only ``x`` and the cores
    (activation memory no more than a dense layer's) and whose backward uses
    :func:`tensornet.adjoint.linear`'s kernels; it works under autocast and ``torch.compile``; double
    backward (``create_graph=True``: gradient penalties, Hessian-vector products) is exact, through a
    differentiable rebuild of W in that pass. Under ``torch.compile`` the default saves at most ``x`` and
    the cores too; with ``save_weight`` the compiler may keep W and chooses what else to keep.

    Cost: ``min(2 B M N + O(M N r), O(B (M + N) d r^2 max(m, n)))`` for B rows, as planned.
    """
    if not isinstance(w, TTM):
        raise TypeError(f"linear: W must be a tensornet TTM, got {type(w).__name__}")
    if B.is_complex(w.cores[0]) or (B.is_array(x) and B.is_complex(x)):
        raise TypeError(
            "linear: complex operands are not supported by the layer product (its planned kernels and "
            "custom backward are real); for a complex TTM times a complex train use tn.matvec(W, x), or "
            "split into real and imaginary parts (tn.real, tn.imag)"
        )
    return _linear.linear(x, w.cores, bias, save_weight=save_weight)
