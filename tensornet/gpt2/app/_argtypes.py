"""The command line's value types: each flag's range, checked while parsing (argparse ``type=`` callables).

No torch at import (``--device`` imports it when the flag is given).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

from .. import LAYER_GROUPS
from ._config import MAX_SIZE, MAX_STEPS, MAX_TOKENS, Range

SHAPE_KEYS = (*(key for keys in LAYER_GROUPS.values() for key in keys), "wte")  # `shapes` keys


# ------------------------------------------------------------------------------------------ value parsers
def _int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in ``[lo, hi]``."""
    return Range(lo, hi, integer=True).parser()


def _float(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False):
    """An argparse ``type=``: a finite number in the interval from ``lo`` to ``hi`` (open ends as flagged)."""
    return Range(lo, hi, lo_open, hi_open).parser()


def _is_pairs(pairs: object) -> bool:
    return (
        isinstance(pairs, list)
        and bool(pairs)
        and all(
            isinstance(p, list)
            and len(p) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in p)
            for p in pairs
        )
    )


def _shapes(value: str):
    """``--shapes``: 'auto', 'paper', 'balanced' or a JSON object of (out_k, in_k) pairs per layer name."""
    if value in ("auto", "paper", "balanced"):
        return value
    try:
        shapes = json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto', 'paper', 'balanced' or a JSON object, got {value!r} (not valid JSON)"
        ) from None
    if not isinstance(shapes, dict) or not shapes:
        raise argparse.ArgumentTypeError(
            f"JSON must be a non-empty object mapping layer names to lists of [out_k, in_k] pairs, got {value!r}"
        )
    for key, pairs in shapes.items():
        if key not in SHAPE_KEYS:
            raise argparse.ArgumentTypeError(f"unknown layer {key!r}; the keys are among {list(SHAPE_KEYS)}")
        if not _is_pairs(pairs):
            raise argparse.ArgumentTypeError(
                f"{key!r} must be a non-empty list of [out_k, in_k] pairs of positive integers, got {pairs!r}"
            )
    return shapes


def _layers(value: str) -> tuple[str, ...]:
    layers = tuple(s.strip() for s in value.split(",") if s.strip())
    bad = [s for s in layers if s not in LAYER_GROUPS]
    if bad or not layers:
        raise argparse.ArgumentTypeError(
            f"must be a comma-separated subset of {sorted(LAYER_GROUPS)}, got {value!r}"
        )
    return layers


def _device(value: str) -> str:
    """``--device``: a torch device string this machine has."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {value!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{value!r} asks for CUDA, but torch sees no CUDA device here")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(
                f"{value!r}: this machine has {count} CUDA device(s), 0 to {count - 1}"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{value!r}: the MPS backend is not available here")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {value!r}; use cpu, cuda or cuda:N")
    return value


def _path(text: str) -> str:
    """An argparse ``type=`` for paths: not empty (``""`` would silently mean the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("the path is empty; give a file or folder")
    return text


_path.__name__ = "path"

# upper bounds of the size flags: far above what fits a machine today (the memory check refuses sooner), low
# enough that no flag overflows an integer or builds a model for hours before failing
MAX_LAYERS, MAX_WIDTH, MAX_HEADS = 1024, 65536, 4096
MAX_BLOCK = MAX_BATCH = MAX_SIZE
MAX_RANK, MAX_NCORES, MAX_THREADS = 65536, 64, 1024
MAX_CHARS = MAX_TOKENS
_STEPS, _NONNEG_STEPS = _int(1, MAX_STEPS), _int(0, MAX_STEPS)
_LAYERS, _WIDTH, _HEADS = _int(1, MAX_LAYERS), _int(1, MAX_WIDTH), _int(1, MAX_HEADS)
_BLOCK, _BATCH = _int(1, MAX_BLOCK), _int(1, MAX_BATCH)
_RANK, _RANK0, _NCORES = _int(1, MAX_RANK), _int(0, MAX_RANK), _int(1, MAX_NCORES)
_CHARS, _TOKENS, _THREADS = _int(1, MAX_CHARS), _int(0, MAX_TOKENS), _int(1, MAX_THREADS)
_SEED = _int(0, 2**32 - 1)
_VOCAB = _int(257, 2**31 - 1)
_BETA = _float(0, 1, hi_open=True)  # [0, 1)
_EPS = _float(0, 1, lo_open=True, hi_open=True)
