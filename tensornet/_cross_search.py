"""The search of TT-cross (:func:`tensornet.cross`): half-sweeps until the validation error meets eps, then rounding.

On the host in float64 numpy: :func:`search` runs the half-sweeps of :mod:`tensornet._cross_sweeps` and
judges each complete train on the validation indices; :func:`rounded` rounds the result to eps / 2 and the
rank caps, keeping the unrounded train where rounding would lose eps.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from . import _orthogonal, _pow2
from ._cross_cache import Budget, Evaluations
from ._cross_sweeps import Sweeps, host_gather, relative_error
from ._truncation import ErrorLog

__all__ = ["rounded", "search"]

_STALL_LIMIT = 4  # half-sweeps in a row without halving the best validation error end the search
_FLOOR = 1e-16  # the truncation threshold is never tightened below float64's resolution


def search(
    evaluations: Evaluations,
    rows: np.ndarray,
    exact: np.ndarray,
    eps: float,
    caps: list[int | None],
    rng: Any,
) -> tuple[list[np.ndarray], float, str | None]:
    """Half-sweeps until the validation error is at most eps / 2 or the search stops.

    Returns the last complete TT, its validation error and why it stopped (None: converged).
    """
    sweeps = Sweeps(evaluations, eps, caps, rng)
    scale = math.sqrt(rows.shape[0]) * float(np.max(np.abs(exact), initial=0.0))
    best, stalls = math.inf, 0
    state: tuple[list[np.ndarray], float] | None = None
    for half in itertools.count():
        sweeps.cap_reached = False
        try:
            sweeps.half_sweep(forward=half % 2 == 0)
        except Budget:
            if state is None:
                raise ValueError(
                    f"cross: max_evals={evaluations.max_evals} ran out during the first half-sweep, after "
                    f"{evaluations.count} evaluations ({rows.shape[0]} of them for validation); a first "
                    f"half-sweep of shape {evaluations.shape} needs at least "
                    f"{sum(evaluations.shape)} more. Raise max_evals"
                ) from None
            return state[0], state[1], "evals"
        cores = list(sweeps.cores)
        scale = scale or math.sqrt(rows.shape[0]) * float(np.max(np.abs(evaluations.values), initial=0.0))
        error = relative_error(host_gather(cores, rows), exact, scale)
        state = (cores, error)
        if error <= eps / 2:
            return cores, error, None
        if error <= best / 2:
            best, stalls = error, 0
            sweeps.explore = False
            continue
        stalls += 1
        sweeps.delta = max(sweeps.delta / 10, _FLOOR)
        sweeps.explore = True
        if stalls >= _STALL_LIMIT:
            return cores, error, "rank" if sweeps.cap_reached else "stall"
    raise AssertionError("unreachable")


def _round_host(cores: list[np.ndarray], eps: float, caps: list[int | None]) -> list[np.ndarray]:
    """TT rounding of host float64 cores with the rule of :func:`tensornet.round`, from the right.

    A cross ends with its own values in the first core, so the QR sweep runs left to right and the SVDs
    right to left (starting where the values are leaves less round-off): the differentiable sweep of
    :mod:`tensornet._round` applied to the reversed train (cores transposed, caps reversed).
    """
    if len(cores) == 1:
        return cores
    log = ErrorLog("cross", eps)
    log.spread(eps, len(cores) - 1)
    mirrored = [np.ascontiguousarray(c.transpose(2, 1, 0)) for c in reversed(cores)]
    swept, exponent = _orthogonal.differentiable_sweep(mirrored, caps[::-1], log)
    swept = _pow2.restore(swept, exponent, at=-1)
    return [np.ascontiguousarray(c.transpose(2, 1, 0)) for c in reversed(swept)]


def rounded(
    cores: list[np.ndarray],
    rows: np.ndarray,
    exact: np.ndarray,
    eps: float,
    error: float,
    evaluations: Evaluations,
    caps: list[int | None],
) -> tuple[list[np.ndarray], float]:
    """The cores rounded with eps / 2 (and to the caps), and their validation error.

    The unrounded ones are kept if rounding would take a train that meets eps and the caps above eps.
    """
    result = _round_host(cores, eps / 2, caps)
    scale = math.sqrt(rows.shape[0]) * float(np.max(np.abs(evaluations.values), initial=0.0))
    rounded_error = relative_error(host_gather(result, rows), exact, scale)
    within = all(cap is None or int(c.shape[2]) <= cap for c, cap in zip(cores, caps))
    if rounded_error > eps >= error and within:
        return cores, error
    return result, rounded_error
