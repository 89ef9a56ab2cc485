"""What every converter needs: the peer imported on call, trains checked, cores copied for their new owner."""

from __future__ import annotations

import importlib
from typing import Any, cast

import numpy as np

from ..tt import TT, TTM, Train

# the pip name of each peer, for the message when it is missing
_PIP = {
    "torchtt": "torchTT",
    "tntorch": "tntorch",
    "teneva": "teneva",
    "tensorly": "tensorly",
    "quimb": "quimb",
}


def peer(fn: str, module: str) -> Any:
    """Import a peer library (or one of its modules) when a converter is called.

    Raises
    ------
    ModuleNotFoundError
        The peer is not installed (the message names the pip package and the ``interop`` extra).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        top = module.split(".")[0]
        raise ModuleNotFoundError(
            f"{fn}: needs {_PIP.get(top, top)}, which is not installed; pip install {_PIP.get(top, top)} "
            "(or tensornet's 'interop' extra)"
        ) from None


def check_train(fn: str, t: Any, kinds: tuple[type, ...] = (TT, TTM)) -> Train:
    """``t`` if it is one of ``kinds`` (TT and TTM by default), else a TypeError naming ``fn``."""
    if not isinstance(t, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise TypeError(f"{fn}: expected a tensornet {names}, got {type(t).__name__}")
    return cast(Train, t)


def torch_cores(t: Train) -> list[Any]:
    """The cores as torch tensors the peer owns (copies; torch cores are cloned, so gradients flow back)."""
    if t.backend == "torch":
        return [c.clone() for c in t.cores]
    return list(t.to("torch").cores)


def numpy_cores(t: Train) -> list[np.ndarray]:
    """The cores as writable numpy arrays the peer owns (torch cores detached and copied to the host)."""
    return [np.array(c, copy=True) for c in t.to("numpy").cores]


def own(fn: str, cores: Any) -> list[Any]:
    """The peer's cores as a list of arrays tensornet may wrap (numpy arrays are copied by :class:`TT`)."""
    if not isinstance(cores, (list, tuple)):
        raise TypeError(f"{fn}: expected a list of cores, got {type(cores).__name__}")
    return list(cores)


def wrap(fn: str, cores: list[Any]) -> Train:
    """A TT (3-D cores) or TTM (4-D cores), validated as any train is."""
    ndims = {int(getattr(c, "ndim", -1)) for c in cores}
    if ndims == {3}:
        return TT(cores)
    if ndims == {4}:
        return TTM(cores)
    raise ValueError(
        f"{fn}: the cores have {sorted(ndims)} dimensions; a TT has 3-D cores (r, n, r') and a TTM 4-D cores "
        "(r, m, n, r')"
    )
