"""Trains written down from their definition: zeros, ones, a delta, the identity, the Laplacian and the QFT.

Each has exact cores of rank 1 (the Laplacian: rank 2), built as float64 on the host and placed like
:func:`tensornet.random_tt` places its cores: ``like`` (an array, TT or TTM) gives the backend, device and
dtype; ``dtype`` overrides the dtype (default float64 on numpy).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _backend as B
from . import _checks
from ._place import check_memory, place, reference, target_itemsize
from .decomp import round as _round
from .tt import TT, TTM

__all__ = ["delta", "eye", "laplacian", "ones", "qft", "zeros"]


def zeros(shape: int | Sequence[int], *, like: Any = None, dtype: Any = None) -> TT:
    """The zero tensor of ``shape`` as a TT of rank 1.

    Parameters
    ----------
    shape : int or sequence of int
        Mode sizes ``(n_1, ..., n_d)``.
    like : array, TT or TTM, optional
        Whose backend and device (and dtype, unless ``dtype`` is given) the cores get.
    dtype : optional
        The cores' dtype (default: ``like``'s, or float64).

    Returns
    -------
    TT

    Raises
    ------
    TypeError
        A shape that is not a non-empty sequence of ints, a ``like`` that is not an array/TT/TTM, a
        dtype that is not real floating point.
    ValueError
        Sizes below 1.

    Cost: ``O(d n)``.
    """
    shape = _checks.check_shape("zeros", "shape", shape, scalar=True)
    _check_memory("zeros", list(shape), like, dtype)
    return TT(place("zeros", [np.zeros((1, n, 1)) for n in shape], like, dtype))


def ones(shape: int | Sequence[int], *, like: Any = None, dtype: Any = None) -> TT:
    """The all-ones tensor of ``shape`` as a TT of rank 1 (every core all ones).

    Parameters, returns and errors as :func:`zeros`. Cost: ``O(d n)``.
    """
    shape = _checks.check_shape("ones", "shape", shape, scalar=True)
    _check_memory("ones", list(shape), like, dtype)
    return TT(place("ones", [np.ones((1, n, 1)) for n in shape], like, dtype))


def delta(shape: int | Sequence[int], index: Sequence[int], *, like: Any = None, dtype: Any = None) -> TT:
    """The tensor that is 1 at ``index`` and 0 elsewhere, as a TT of rank 1.

    Parameters
    ----------
    shape, like, dtype
        As :func:`zeros`.
    index : sequence of int
        One entry per mode; negative entries count from the end, as in numpy.

    Returns
    -------
    TT

    Raises
    ------
    TypeError
        An index that is not a sequence of ints; and as :func:`zeros`.
    ValueError
        An index of the wrong length or out of range; and as :func:`zeros`.

    Notes
    -----
    ``delta[i_1..i_d] = prod_k [i_k = index_k]``, so core k is the unit vector ``e_{index_k}``.

    Cost: ``O(d n)``.
    """
    shape = _checks.check_shape("delta", "shape", shape, scalar=True)
    _check_memory("delta", list(shape), like, dtype)
    if B.is_array(index) or not isinstance(index, Sequence) or isinstance(index, str):
        raise TypeError(f"delta: index must be a tuple of {len(shape)} ints, got {type(index).__name__}")
    if len(index) != len(shape):
        raise ValueError(
            f"delta: index {tuple(index)} has {len(index)} entries but shape {shape} has {len(shape)} modes"
        )
    cores: list[np.ndarray] = []
    for k, (i, n) in enumerate(zip(index, shape)):
        if isinstance(i, bool) or not isinstance(i, numbers.Integral):
            raise TypeError(f"delta: index[{k}] = {i!r} is not an int")
        if not -n <= int(i) < n:
            raise ValueError(f"delta: index[{k}] = {i} is out of range for mode {k} of size {n}")
        core = np.zeros((1, n, 1))
        core[0, int(i) % n, 0] = 1.0
        cores.append(core)
    return TT(place("delta", cores, like, dtype))


def eye(shape: int | Sequence[int], *, like: Any = None, dtype: Any = None) -> TTM:
    """The identity matrix of size ``prod(shape)`` as a TTM of rank 1 (``row_shape = col_shape = shape``).

    Parameters, returns and errors as :func:`zeros` (a TTM).

    Notes
    -----
    ``I = I_{n_1} (x) ... (x) I_{n_d}``: core k is the identity of size ``n_k``.

    Cost: ``O(d n^2)``.
    """
    shape = _checks.check_shape("eye", "shape", shape, scalar=True)
    _check_memory("eye", [n * n for n in shape], like, dtype)
    return TTM(place("eye", [np.eye(n).reshape(1, n, n, 1) for n in shape], like, dtype))


def _check_memory(fn: str, sizes: list[int], like: Any, dtype: Any, temporaries: int = 1) -> None:
    """Refuse shapes whose cores (``sizes`` entries each) cannot be built in the memory available."""
    check_memory(fn, sizes, target_itemsize(fn, like, dtype), temporaries=temporaries)


def _check_step(step: Any, d: int) -> list[float]:
    values = list(step) if isinstance(step, Sequence) and not isinstance(step, str) else [step] * d
    if len(values) != d:
        raise ValueError(f"laplacian: step has {len(values)} entries but the grid has {d} modes")
    for k, h in enumerate(values):
        if isinstance(h, bool) or not isinstance(h, numbers.Real):
            raise TypeError(f"laplacian: step[{k}] = {h!r} is not a real number")
        if not (math.isfinite(h) and float(h) > 0):
            raise ValueError(f"laplacian: step[{k}] = {h} must be finite and > 0 (the grid spacing)")
    return [float(h) for h in values]


def _inverse_square(h: float, k: int) -> float:
    """``1 / h^2`` formed as ``1 / h / h`` (a Python float ``h**2`` raises OverflowError for h > 1e154).

    Raises
    ------
    ValueError
        ``1 / h^2`` outside float64's normal range (the operator could not be stored).
    """
    scale = 1.0 / h / h
    if not np.finfo(np.float64).tiny <= scale <= np.finfo(np.float64).max / 4:
        raise ValueError(
            f"laplacian: step[{k}] = {h} gives entries of size 1 / h^2 = {scale:.3g}, outside float64's "
            "normal range; build it with step=1 and scale by 1 / h^2 where the values stay representable "
            "(e.g. multiply the right-hand side by h^2 instead)"
        )
    return scale


def laplacian(
    shape: int | Sequence[int],
    *,
    step: float | Sequence[float] = 1.0,
    qtt: bool = False,
    like: Any = None,
    dtype: Any = None,
) -> TTM:
    """The d-dimensional second-difference operator with Dirichlet boundaries, as a TTM of rank 2.

    Parameters
    ----------
    shape, like, dtype
        As :func:`zeros`; ``row_shape = col_shape = shape``.
    step : float or sequence of float
        The grid spacing ``h_k`` of each mode (one for all, or one per mode), finite and > 0.
    qtt : bool
        Return the same matrix in quantized form: every mode size must be a power of two ``2^L_k`` and
        each mode becomes ``L_k`` binary cores (``row_shape = col_shape = (2,) * sum(L_k)``, the modes'
        bits in C order, most significant first), of rank 3 for one mode and at most 5 for several.

    Returns
    -------
    TTM

    Raises
    ------
    TypeError
        A step that is not a real number; and as :func:`zeros`.
    ValueError
        A step that is not positive and finite, or not one per mode; with ``qtt``, a mode size that is not
        a power of two >= 2; and as :func:`zeros`.

    Notes
    -----
    Sign convention: the *negative* semi-definite operator ``u'' ~ (u_{i-1} - 2 u_i + u_{i+1}) / h^2``
    (eigenvalues ``-(4 / h^2) sin^2(j pi / (2 (n + 1)))``); ``-L`` is the positive-definite matrix of
    ``-u'' = f``, which is what :func:`tensornet.linalg.solve` and CG-type methods expect.

    ``L = sum_k I (x) ... (x) D_k (x) ... (x) I`` with ``D_k = tridiag(1, -2, 1) / h_k^2`` of size
    ``n_k`` (``h_k = step[k]``): ``(L u)[i] = sum_k (u[i - e_k] - 2 u[i] + u[i + e_k]) / h_k^2`` with
    ``u = 0`` outside the grid, the standard finite-difference Laplacian on the interior points of a
    box (negative definite; ``-L`` is the positive-definite form TT-Toolbox's ``tt_qlaplace_dd`` uses).
    Its TT rank is 2 (Kazeev & Khoromskij 2012, "Low-rank explicit QTT representation of the Laplace
    operator and its inverse"): bond state 1 means "no ``D`` placed yet", state 0 "``D`` placed", so
    core k is ``[[I, 0], [D_k, I]]`` between the first ``[D_1, I]`` and the last ``[I; D_d]``.
    One mode gives ``D_1`` (rank 1).

    QTT form (Kazeev & Khoromskij 2012): on ``2^L`` points ``D = S + S^T - 2 I`` with S the shift
    ``(S u)_i = u_{i+1}``. In binary, ``i -> i + 1`` flips the lowest 0 bit to 1 and the 1s below it to 0,
    so with ``J = [[0, 1], [0, 0]]`` (row bit 0, column bit 1) the bits above the flip carry I, the flip J
    and the bits below ``J^T``: three bond states (no flip yet, flip of S, flip of S^T) give rank 3,
    ``[I J J^T]``, ``[[I, J, J^T], [0, J^T, 0], [0, 0, J]]``, ``[-2I + J + J^T; J^T; J] / h^2``. For several
    modes each bond inside mode k also carries "D placed in an earlier mode" and "not yet" (identity),
    so ranks are at most 5 (2 between modes).

    Cost: ``O(d n^2)``; with ``qtt``, ``O(sum_k L_k)``.
    """
    shape = _checks.check_shape("laplacian", "shape", shape, scalar=True)
    steps = _check_step(step, len(shape))
    if _checks.check_flag("laplacian", "qtt", qtt):
        return TTM(place("laplacian", _qtt_laplacian(shape, steps), like, dtype))
    d = len(shape)
    # 4 n^2 per inner core, and the tridiagonal and identity temporaries of n^2 each
    _check_memory("laplacian", [4 * n * n for n in shape], like, dtype, temporaries=2)
    cores = []
    for k, (n, h) in enumerate(zip(shape, steps)):
        scale = _inverse_square(h, k)
        second = (
            np.diag(np.full(n - 1, 1.0), -1) - 2.0 * np.eye(n) + np.diag(np.full(n - 1, 1.0), 1)
        ) * scale
        identity = np.eye(n)
        if d == 1:
            cores.append(second.reshape(1, n, n, 1))
        elif k == 0:
            cores.append(np.stack([second, identity], axis=-1)[None])
        elif k == d - 1:
            cores.append(np.stack([identity, second], axis=0)[..., None])
        else:
            core = np.zeros((2, n, n, 2))
            core[0, :, :, 0] = identity
            core[1, :, :, 0] = second
            core[1, :, :, 1] = identity
            cores.append(core)
    return TTM(place("laplacian", cores, like, dtype))


def _qtt_levels(shape: tuple[int, ...]) -> list[int]:
    levels = []
    for k, n in enumerate(shape):
        level = n.bit_length() - 1
        if n < 2 or n != 1 << level:
            raise ValueError(
                f"laplacian: qtt=True needs every mode size to be a power of two >= 2, but mode {k} has size {n}"
            )
        levels.append(level)
    return levels


def _qtt_laplacian(shape: tuple[int, ...], steps: list[float]) -> list[np.ndarray]:
    """The cores of the QTT Laplacian (see :func:`laplacian`), bond states (done, D's 3 states, later)."""
    eye, jump = np.eye(2), np.array([[0.0, 1.0], [0.0, 0.0]])
    first = [eye, jump, jump.T]  # entering D's states from "later" (D not placed yet)
    middle = [[eye, jump, jump.T], [None, jump.T, None], [None, None, jump]]
    last = [-2.0 * eye + jump + jump.T, jump.T, jump]  # D's states to "done"
    d = len(shape)
    cores = []
    for k, (level, h) in enumerate(zip(_qtt_levels(shape), steps)):
        done = ["done"] if k > 0 else []
        later = ["later"] if k < d - 1 else []
        inside = [*done, "s0", "s1", "s2", *later]
        for bit in range(level):
            rows = [*done, "later"] if bit == 0 else inside
            cols = ["done", *later] if bit == level - 1 else inside
            core = np.zeros((len(rows), 2, 2, len(cols)))
            for a, row in enumerate(rows):
                for b, col in enumerate(cols):
                    block = _qtt_block(row, col, bit, level, (first, middle, last), _inverse_square(h, k))
                    if block is not None:
                        core[a, :, :, b] = block
            cores.append(core)
    return cores


def _qtt_block(row: str, col: str, bit: int, level: int, parts: Any, scale: float) -> Any:
    """The 2 x 2 block of one bit's core from bond state ``row`` to ``col`` (None: zero); ``scale = 1 / h^2``."""
    first, middle, last = parts
    if row == col and row in ("done", "later"):
        return np.eye(2)
    d_row = row.startswith("s")
    d_col = col.startswith("s")
    if level == 1:
        return (last[0] * scale) if (row == "later" and col == "done") else None
    if row == "later" and d_col and bit == 0:
        return first[int(col[1])]
    if d_row and d_col and 0 < bit < level - 1:
        return middle[int(row[1])][int(col[1])]
    if d_row and col == "done" and bit == level - 1:
        return last[int(row[1])] * scale
    return None


def _qft_layer(a: int, d: int, sign: float) -> list[np.ndarray]:
    """The TTM cores of one layer of the QFT circuit: a Hadamard on qubit ``a``, then its controlled phases.

    The bond carries qubit ``a``'s new value to every later qubit ``b``, which takes the phase
    ``exp(sign 2 pi i x_a x_b / 2^(b - a + 1))``; rank 2 after qubit ``a``, 1 before it.
    """
    hadamard = np.array([[1.0, 1.0], [1.0, -1.0]]) / math.sqrt(2.0)
    cores = []
    for b in range(d):
        last = b == d - 1
        if b < a:
            cores.append(np.eye(2, dtype=complex).reshape(1, 2, 2, 1))
        elif b == a:
            core = np.zeros((1, 2, 2, 1 if last else 2), dtype=complex)
            for x in range(2):
                core[0, x, :, 0 if last else x] = hadamard[x]
            cores.append(core)
        else:
            core = np.zeros((2, 2, 2, 1 if last else 2), dtype=complex)
            for s in range(2):
                for x in range(2):
                    core[s, x, x, 0 if last else s] = np.exp(sign * 2j * math.pi * s * x / 2 ** (b - a + 1))
            cores.append(core)
    return cores


def qft(d: int, *, eps: float = 1e-12, inverse: bool = False, like: Any = None, dtype: Any = None) -> TTM:
    """The unitary discrete Fourier transform on ``2^d`` points as a QTT matrix, output bits reversed.

    Parameters
    ----------
    d : int
        Number of binary modes (qubits): the transform acts on vectors of length ``N = 2^d``, given as
        QTT trains of shape ``(2,) * d`` (C order: mode 0 is the most significant bit of the index).
    eps : float
        Relative Frobenius accuracy of the result, > 0 (the exact transform has ranks up to ``2^(d / 2)``;
        ``1e-15`` is float64's resolution).
    inverse : bool
        The inverse transform (numpy's ``ifft``, sign ``+``) instead of the forward one.
    like, dtype : optional
        As :func:`zeros`; the dtype must be complex (default complex128).

    Returns
    -------
    TTM
        ``Q`` with ``row_shape = col_shape = (2,) * d``: for the QTT ``x`` of a vector ``v``, ``Q @ x``
        is the QTT of ``numpy.fft.fft(v, norm="ortho")`` with its index bits reversed,
        ``(Q @ x)[i_1, ..., i_d] = fft(v)[i_1 + 2 i_2 + ... + 2^(d-1) i_d]``; ``(Q @ x).T`` (modes
        reversed) is the spectrum in natural order. ``||Q - F P||_F <= eps ||Q||_F`` (``F`` the DFT, ``P``
        the bit reversal), and ``Q`` is unitary to that accuracy.

    Raises
    ------
    TypeError
        ``d`` not an int, a real ``dtype``, a bad ``eps``, ``like`` or ``inverse``.
    ValueError
        ``d < 1``, ``eps`` not positive and finite.

    Notes
    -----
    Built from its circuit (Coppersmith 1994; Nielsen & Chuang, section 5.1): for each qubit ``a`` a
    Hadamard and the controlled phases ``exp(-2 pi i / 2^(b - a + 1))`` with the later qubits ``b``, one
    rank-2 TTM per qubit (:func:`_qft_layer`); the circuit without its final swaps outputs the bits
    reversed. The layers are multiplied one by one and the product rounded after each to ``eps / d``
    (unitary layers keep each rounding error, so the total is at most ``eps``). The QFT has small
    entanglement, so its ranks stay bounded as ``d`` grows for a fixed accuracy (Chen, Stoudenmire &
    White 2023, "Quantum Fourier transform has small entanglement"; the QTT "superfast Fourier
    transform" of Dolgov, Khoromskij & Savostyanov 2012): about 13 at ``eps = 1e-12`` for every d >= 8.
    The sign is numpy's (``exp(-2 pi i j k / N)``), the conjugate of the quantum-computing convention.

    Cost: ``O(d^2 r^3)`` for ranks r (about a second for d = 40).
    """
    if isinstance(d, bool) or not isinstance(d, numbers.Integral):
        raise TypeError(f"qft: d must be an int (the number of binary modes), got {type(d).__name__} {d!r}")
    if d < 1:
        raise ValueError(f"qft: d must be >= 1, got {d}")
    eps_value = _checks.check_eps("qft", eps)
    if not eps_value:
        raise ValueError("qft: eps must be > 0 (the exact transform has ranks up to 2^(d/2)); e.g. 1e-15")
    _checks.check_flag("qft", "inverse", inverse)
    found = reference("qft", like)
    target = dtype if dtype is not None else found.dtype if found is not None else "complex128"
    if B.dtype_name(target) not in ("complex64", "complex128"):
        raise TypeError(
            f"qft: the Fourier transform is complex; dtype {B.dtype_name(target)} is real, use complex128"
        )
    sign = 1.0 if inverse else -1.0
    result = TTM(_qft_layer(0, d, sign))
    for a in range(1, d):
        result = _round(TTM(_qft_layer(a, d, sign)) @ result, eps=eps_value / d)
    return TTM(place("qft", [np.asarray(c) for c in result.cores], like, target))
