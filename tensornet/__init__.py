"""tensornet: tensor-train (TT) and TT-matrix (TTM) algebra on any array backend.

The public API is re-exported here; ``tensornet.linalg`` (solvers), ``tensornet.nn`` (PyTorch layers),
``tensornet.gpt2`` (the GPT-2 adapter), ``tensornet.riemannian`` (tangent spaces of fixed-rank trains),
``tensornet.interop`` (converters to and from the peer libraries) and ``tensornet.testing`` (hypothesis
strategies) are imported on first attribute access, so ``import tensornet`` imports neither torch nor
hypothesis.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import contract, shapes
from ._cross import ConvergenceWarning, EvalCapWarning, apply, cross
from ._files import load, save
from ._report import BondReport, plot_spectra, report
from .construct import delta, eye, laplacian, ones, qft, zeros
from .decomp import RankCapWarning, orthogonalize, round, round_sum, tt_svd, ttm_svd
from .learn import argmax, argmin, complete, sample
from .ops import (
    add,
    conj,
    dot,
    full,
    gather,
    hadamard,
    imag,
    kron,
    linear,
    matmul,
    matvec,
    norm,
    real,
    scale,
    sum,
    transpose,
)
from .random import random_tt, random_ttm
from .structure import reshape
from .tt import TT, TTM

__version__ = "0.1.0"

__all__ = [
    "TT",
    "TTM",
    "BondReport",
    "ConvergenceWarning",
    "EvalCapWarning",
    "RankCapWarning",
    "add",
    "apply",
    "argmax",
    "argmin",
    "complete",
    "conj",
    "contract",
    "cross",
    "delta",
    "dot",
    "eye",
    "full",
    "gather",
    "hadamard",
    "imag",
    "kron",
    "laplacian",
    "linear",
    "load",
    "matmul",
    "matvec",
    "norm",
    "ones",
    "orthogonalize",
    "plot_spectra",
    "qft",
    "random_tt",
    "random_ttm",
    "real",
    "report",
    "reshape",
    "round",
    "round_sum",
    "sample",
    "save",
    "scale",
    "shapes",
    "sum",
    "transpose",
    "tt_svd",
    "ttm_svd",
    "zeros",
]

_LAZY = ("adjoint", "interop", "linalg", "nn", "gpt2", "riemannian", "testing")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'tensornet' has no attribute {name!r}")
