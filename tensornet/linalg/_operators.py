"""Operators to explore with: the Heisenberg spin chain and the inverse of the 1-D Dirichlet Laplacian."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .. import _checks
from .._place import place
from ..decomp import round as round_train
from ..ops import add
from ..tt import TTM


def _real(fn: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(float(value)):
        raise TypeError(f"{fn}: {name} must be a finite real number, got {value!r}")
    return float(value)


def heisenberg(
    sites: int,
    *,
    coupling: float = 1.0,
    anisotropy: float = 1.0,
    field: float = 0.0,
    like: Any = None,
    dtype: Any = None,
) -> TTM:
    """The open spin-1/2 XXZ chain ``H = J sum_i (Sx Sx + Sy Sy + Delta Sz Sz)_{i,i+1} - h sum_i Sz_i`` as a TTM.

    Parameters
    ----------
    sites : int
        Chain length L >= 2; ``row_shape = col_shape = (2,) * L`` (state 0 is spin up, ``Sz = +1/2``).
    coupling : float
        J (J > 0 antiferromagnetic). The default ``coupling=1, anisotropy=1, field=0`` is the isotropic
        Heisenberg (XXX) chain, whose ground energy is -6.911737146 for L = 16 and -13.997315618 for L = 32.
    anisotropy : float
        Delta (1: XXX, 0: XX).
    field : float
        h, a uniform field along z.
    like, dtype
        As :func:`tensornet.zeros` (backend, device and dtype of the cores).

    Returns
    -------
    TTM
        Of rank 5 (rank 1 at the ends): the standard matrix-product-operator form.

    Raises
    ------
    TypeError
        A non-integer ``sites``, non-real coefficients, a bad ``like`` or ``dtype``.
    ValueError
        ``sites < 2``.

    Notes
    -----
    With ``S+ S- + S- S+ = 2 (Sx Sx + Sy Sy)``, the bond term is ``J/2 (S+ S- + S- S+) + J Delta Sz Sz``. Bond
    state 0 means "nothing placed yet", states 1-3 "S+, S- or Sz placed on the previous site", state 4
    "the term is complete"; core k is ``[[I, S+, S-, Sz, -h Sz], [., ., ., ., J/2 S-], [., ., ., ., J/2 S+],
    [., ., ., ., J Delta Sz], [., ., ., ., I]]`` between the first row and the last column.

    Cost: ``O(L)``.
    """
    fn = "heisenberg"
    sites = _checks.check_count(fn, "sites", sites, minimum=2)
    j, delta, h = (
        _real(fn, n, v) for n, v in (("coupling", coupling), ("anisotropy", anisotropy), ("field", field))
    )
    eye = np.eye(2)
    sz = np.diag([0.5, -0.5])
    splus = np.array([[0.0, 1.0], [0.0, 0.0]])
    sminus = splus.T
    w = np.zeros((5, 2, 2, 5))
    for col, op in enumerate((eye, splus, sminus, sz, -h * sz)):
        w[0, :, :, col] = op
    w[1, :, :, 4] = 0.5 * j * sminus
    w[2, :, :, 4] = 0.5 * j * splus
    w[3, :, :, 4] = j * delta * sz
    w[4, :, :, 4] = eye
    cores = [w[:1]] + [w] * (sites - 2) + [w[..., 4:]]
    return TTM(place(fn, [np.array(c) for c in cores], like, dtype))


def laplacian_inverse(
    size: int, *, step: float = 1.0, qtt: bool = False, like: Any = None, dtype: Any = None
) -> TTM:
    """The inverse of the 1-D Dirichlet Laplacian ``tn.laplacian(size, step=step, qtt=qtt)``, in closed form.

    Parameters
    ----------
    size : int
        Number of grid points n (``qtt``: a power of two ``2^L``, L >= 1).
    step : float
        The grid spacing h, finite and > 0.
    qtt : bool
        Return the QTT form (``row_shape = col_shape = (2,) * L``, bits most significant first), of rank
        at most 5 (Kazeev & Khoromskij 2012); otherwise one dense core ``(1, n, n, 1)``.
    like, dtype
        As :func:`tensornet.zeros`.

    Returns
    -------
    TTM
        ``L^{-1}`` with the sign convention of :func:`tensornet.laplacian` (negative definite): ``-L^{-1}`` is
        the discrete Green's function of ``-u'' = f``, so the solution of ``-u'' = f`` is
        ``u = -laplacian_inverse(n, step=h) @ f``.

    Raises
    ------
    TypeError
        Non-integer size, a step that is not a real number, a bad ``like`` or ``dtype``.
    ValueError
        ``size < 1``, a non-positive step; with ``qtt``, a size that is not a power of two >= 2.

    Notes
    -----
    ``tridiag(-1, 2, -1)^{-1}`` has entries ``(min(p, q) + 1) (n - max(p, q)) / (n + 1)`` (0-based p, q), so
    ``L^{-1} = -h^2 / (n + 1) [a_p b_q [p <= q] + b_p a_q [p > q]]`` with ``a_p = p + 1``, ``b_q = n - q``.
    In QTT, a and b are affine in the bits (rank 2), the masks ``[p <= q]`` and ``[p > q]`` are two-state
    comparison automata over the bits from the most significant one (rank 2), so each term has rank 8; their
    sum is rounded at ``10 u`` (relative Frobenius), which leaves rank 5 or less. Applying it with
    :func:`tensornet.matvec` (``eps`` given) solves ``-u'' = f`` to working precision on grids far beyond what
    a residual-based solver reaches in floating point (the residual of the exact solution is ~``cond u``,
    ``cond ~ 0.4 n^2``).

    Cost: ``O(L)`` to build (the rounding of rank-16 cores).
    """
    fn = "laplacian_inverse"
    n = _checks.check_count(fn, "size", size)
    h = _real(fn, "step", step)
    if h <= 0.0:
        raise ValueError(f"{fn}: step must be > 0 (the grid spacing), got {step}")
    if not _checks.check_flag(fn, "qtt", qtt):
        p = np.arange(n)
        dense = np.minimum.outer(p, p) + 1.0
        dense = dense * (n - np.maximum.outer(p, p)) * (-(h**2) / (n + 1))
        return TTM(place(fn, [dense.reshape(1, n, n, 1)], like, dtype))
    level = n.bit_length() - 1
    if n < 2 or n != 1 << level:
        raise ValueError(f"{fn}: qtt=True needs a power of two >= 2, got size {n}")
    return _qtt_inverse(level, h, like, dtype)


def _affine(level: int, offset: float, slope: float) -> list[np.ndarray]:
    """QTT cores (rank 2) of ``offset + slope p`` over the bits of p, most significant first.

    The textbook cores ``[[1, w_j p_j], [0, 1]]`` (``w_j = slope 2^(L-1-j)``) differ in scale by ``2^L`` along the
    train, which underflows the rounding of long trains; the gauge ``diag(1, 1 / w_j)`` on bond j balances
    them to ``[[1, p_j], [0, 2]]``, the scale ``slope`` left on the last core.
    """
    if level == 1:
        return [np.array([offset, offset + slope]).reshape(1, 2, 1)]
    bits = np.arange(2.0)
    first_weight = slope * 2.0 ** (level - 1)
    cores = [np.stack([np.ones(2), (offset + first_weight * bits) / first_weight], axis=-1)[None]]
    for _ in range(1, level - 1):
        core = np.zeros((2, 2, 2))
        core[0, :, 0] = 1.0
        core[0, :, 1] = bits
        core[1, :, 1] = 2.0
        cores.append(core)
    cores.append(np.stack([slope * bits, np.full(2, 2.0 * slope)], axis=0)[..., None])
    return cores


def _mask(level: int, strict_greater: bool) -> list[np.ndarray]:
    """QTT-matrix cores (rank 2) of ``[p > q]`` (or ``[p <= q]``): states 'equal so far' and 'decided'."""
    eye, ones = np.eye(2), np.ones((2, 2))
    decide = np.array([[0.0, 0.0], [1.0, 0.0]]) if strict_greater else np.array([[0.0, 1.0], [0.0, 0.0]])
    final_equal = np.zeros((2, 2)) if strict_greater else eye
    cores = []
    for j in range(level):
        first, last = j == 0, j == level - 1
        core = np.zeros((1 if first else 2, 2, 2, 1 if last else 2))
        if last:
            core[0, :, :, 0] = (final_equal + decide) if first else final_equal
            if not first:
                core[0, :, :, 0] = final_equal + decide
                core[1, :, :, 0] = ones
        else:
            core[0, :, :, 0] = eye
            core[0, :, :, 1] = decide
            if not first:
                core[1, :, :, 1] = ones
        cores.append(core)
    return cores


def _outer(rows: list[np.ndarray], cols: list[np.ndarray]) -> list[np.ndarray]:
    """TTM cores of the outer product ``u_p v_q`` of two QTT vectors."""
    out = []
    for u, v in zip(rows, cols):
        ru, n, ru2 = u.shape
        rv, m, rv2 = v.shape
        out.append(np.einsum("aib,cjd->acijbd", u, v).reshape(ru * rv, n, m, ru2 * rv2))
    return out


def _hadamard(x: list[np.ndarray], y: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for p, q in zip(x, y):
        r1, n, m, r2 = p.shape
        s1, _, _, s2 = q.shape
        out.append(np.einsum("aijb,cijd->acijbd", p, q).reshape(r1 * s1, n, m, r2 * s2))
    return out


def _qtt_inverse(level: int, h: float, like: Any, dtype: Any) -> TTM:
    n = 2**level
    a, b = _affine(level, 1.0, 1.0), _affine(level, float(n), -1.0)
    upper = _hadamard(_outer(a, b), _mask(level, strict_greater=False))
    lower = _hadamard(_outer(b, a), _mask(level, strict_greater=True))
    total = add(TTM(upper), TTM(lower))
    rounded = round_train(total, eps=10.0 * float(np.finfo(np.float64).eps))
    cores = [np.asarray(c) for c in rounded.cores]
    cores[0] = cores[0] * (-(h**2) / (n + 1))
    return TTM(place("laplacian_inverse", cores, like, dtype))
