"""Former home of the TT layers' shared helpers, now split by concern; the names below remain importable.

TODO(issue 15): remove once gpt2 and nn/_tensorize import from the modules named here
(``_cache``, ``_cores``, ``_factor``, ``_hf``, ``_init``; rank specs: ``tensornet._checks.parse_ranks``).
"""

from __future__ import annotations

from typing import Any

from tensornet import _checks

from ._cache import DenseCache, linear_compute_dtype
from ._cores import TTCoresModule
from ._factor import RankClipWarning, clip_ranks, core_shapes, padded_factorization, resolve_shapes
from ._hf import conv1d_class
from ._init import GPT2_STD, INIT_NAMES, Init, InitName, check_init, init_cores, target_std

__all__ = [
    "GPT2_STD",
    "INIT_NAMES",
    "DenseCache",
    "Init",
    "InitName",
    "RankClipWarning",
    "TTCoresModule",
    "check_features",
    "check_init",
    "check_ncores",
    "check_rank",
    "check_shape",
    "clip_ranks",
    "conv1d_class",
    "core_shapes",
    "init_cores",
    "linear_compute_dtype",
    "padded_factorization",
    "resolve_shapes",
    "target_std",
]


def check_features(fn: str, name: str, value: Any) -> int:
    """TODO(issue 15): remove once gpt2 uses ``tensornet._checks.check_count``."""
    return int(_checks.check_count(fn, name, value))


def check_ncores(fn: str, ncores: Any) -> int:
    """TODO(issue 15): remove once gpt2 uses ``tensornet._checks.check_count``."""
    return int(_checks.check_count(fn, "ncores", ncores))


def check_shape(fn: str, name: str, shape: Any) -> tuple[int, ...]:
    """TODO(issue 15): remove once gpt2 uses ``tensornet._checks.check_shape``."""
    return _checks.check_shape(fn, name, shape)


def check_rank(fn: str, rank: Any, d: int) -> tuple[int, ...]:
    """TODO(issue 15): remove once gpt2 uses ``tensornet._checks.parse_ranks``."""
    return _checks.parse_ranks(fn, "rank", rank, d, owner="layer")
