"""Operators to explore with: the Heisenberg spin chain and the inverse of the 1-D Dirichlet Laplacian."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .. import _checks
from .._place import place
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
    j, delta, h = (_real(fn, n, v) for n, v in (("coupling", coupling), ("anisotropy", anisotropy), ("field", field)))
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
