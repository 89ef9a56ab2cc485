"""Argument checks, core shapes, rank clipping and initialisation shared by the TT layers."""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

import tensornet as tn
from tensornet import shapes as _shapes
from tensornet._linear.autograd import compute_dtype

__all__ = ["RankClipWarning"]

InitName = Literal["gpt2", "glorot", "kaiming"]
Init = InitName | float
INIT_NAMES = ("gpt2", "glorot", "kaiming")
GPT2_STD = 0.02


class RankClipWarning(UserWarning):
    """A requested TT rank exceeded its useful maximum and was lowered; the message gives both."""


def check_features(fn: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{fn}: {name} must be >= 1, got {value}")
    return int(value)


def check_shape(fn: str, name: str, shape: Any) -> tuple[int, ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) == 0:
        raise TypeError(f"{fn}: {name} must be a non-empty tuple of positive ints, got {shape!r}")
    for k, n in enumerate(shape):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise TypeError(f"{fn}: {name}[{k}] must be an int, got {type(n).__name__} {n!r}")
        if n < 1:
            raise ValueError(f"{fn}: {name}[{k}] = {n}; every factor must be >= 1 (use 1 to pad)")
    return tuple(int(n) for n in shape)


def check_ncores(fn: str, ncores: Any) -> int:
    if isinstance(ncores, bool) or not isinstance(ncores, numbers.Integral):
        raise TypeError(f"{fn}: ncores must be an int, got {type(ncores).__name__} {ncores!r}")
    if ncores < 1:
        raise ValueError(f"{fn}: ncores must be >= 1, got {ncores}")
    return int(ncores)


def resolve_shapes(
    fn: str,
    rows: int,
    cols: int,
    row_shape: Any,
    col_shape: Any,
    ncores: int,
    names: tuple[str, str, str, str],
    *,
    pad_rows: bool = False,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(row_shape, col_shape)`` for a ``(rows, cols)`` matrix: given shapes are checked, missing ones
    factorised with :func:`tensornet.shapes.factorize` into as many cores as the given one (or ``ncores``).

    ``names`` = (row feature name, col feature name, row shape name, col shape name) for messages.
    ``pad_rows``: the row shape may multiply to more than ``rows`` (an embedding's padded vocabulary).
    """
    row_feat, col_feat, row_name, col_name = names
    if row_shape is not None:
        row_shape = check_shape(fn, row_name, row_shape)
    if col_shape is not None:
        col_shape = check_shape(fn, col_name, col_shape)
    d = len(row_shape) if row_shape is not None else len(col_shape) if col_shape is not None else ncores
    if row_shape is None:
        row_shape = padded_factorization(rows, d) if pad_rows else _shapes.factorize(rows, d)
    if col_shape is None:
        col_shape = _shapes.factorize(cols, d)
    if len(row_shape) != len(col_shape):
        raise ValueError(
            f"{fn}: {row_name} {row_shape} has {len(row_shape)} factors but {col_name} {col_shape} has "
            f"{len(col_shape)}; both need one factor per core (pad the shorter with 1s)"
        )
    if pad_rows:
        if math.prod(row_shape) < rows:
            raise ValueError(
                f"{fn}: {row_name} {row_shape} multiplies to {math.prod(row_shape)} < {row_feat} = {rows}; "
                f"it must cover every row (a larger product pads the table)"
            )
    elif math.prod(row_shape) != rows:
        raise ValueError(
            f"{fn}: {row_name} {row_shape} multiplies to {math.prod(row_shape)} but {row_feat} = {rows}; "
            f"the factors must multiply to {row_feat}"
        )
    if math.prod(col_shape) != cols:
        raise ValueError(
            f"{fn}: {col_name} {col_shape} multiplies to {math.prod(col_shape)} but {col_feat} = {cols}; "
            f"the factors must multiply to {col_feat}"
        )
    return row_shape, col_shape


def padded_factorization(n: int, d: int) -> tuple[int, ...]:
    """The smallest ``n' >= n`` (and its factors) whose :func:`factorize` into ``d`` factors is balanced:
    no factor above ``1.25 * n^(1/d)``. GPT-2's 50,257 tokens become 50,310 = 30 x 39 x 43 for d = 3.

    Cost: ``O(sqrt(n))`` per candidate; the gap to the next balanced size is small (a few hundred at most).
    """
    if d == 1:
        return (n,)
    bound = max(2, math.ceil(1.25 * n ** (1.0 / d)))
    candidate = n
    while True:
        factors = _shapes.factorize(candidate, d)
        if max(factors) <= bound:
            return factors
        candidate += 1


def check_rank(fn: str, rank: Any, d: int) -> tuple[int, ...]:
    """Bond ranks ``(r_1..r_{d-1})`` from an int, ``d - 1`` bond ranks, or ``d + 1`` ranks with boundary 1s."""
    if isinstance(rank, numbers.Integral) and not isinstance(rank, bool):
        values: list[Any] = [int(rank)] * (d - 1)
        if rank < 1:
            raise ValueError(f"{fn}: rank must be >= 1, got {rank}")
    elif isinstance(rank, Sequence) and not isinstance(rank, (str, bytes)):
        values = list(rank)
        if len(values) == d + 1:
            if values[0] != 1 or values[-1] != 1:
                raise ValueError(
                    f"{fn}: rank {tuple(rank)} has d + 1 = {d + 1} entries, so its boundary ranks must be 1"
                )
            values = values[1:-1]
        elif len(values) != d - 1:
            raise ValueError(
                f"{fn}: rank has {len(values)} entries but the layer has {d} cores; give an int, "
                f"d - 1 = {d - 1} bond ranks or d + 1 = {d + 1} ranks with the boundary 1s"
            )
    else:
        raise TypeError(f"{fn}: rank must be an int or a tuple of ints, got {type(rank).__name__} {rank!r}")
    for k, r in enumerate(values):
        if isinstance(r, bool) or not isinstance(r, numbers.Integral):
            raise TypeError(f"{fn}: rank of bond {k + 1} must be an int, got {type(r).__name__} {r!r}")
        if r < 1:
            raise ValueError(f"{fn}: rank of bond {k + 1} must be >= 1, got {r}")
    return tuple(int(r) for r in values)


def clip_ranks(
    fn: str,
    bonds: tuple[int, ...],
    row_shape: tuple[int, ...],
    col_shape: tuple[int, ...],
    *,
    stacklevel: int,
) -> tuple[int, ...]:
    """Lower each bond rank to its useful maximum ``min(prod_{j<=k} m_j n_j, prod_{j>k} m_j n_j)``."""
    useful = _shapes.max_ranks([m * n for m, n in zip(row_shape, col_shape)])
    clipped = tuple(min(r, u) for r, u in zip(bonds, useful))
    if clipped != bonds:
        where = ", ".join(
            f"bond {k + 1}: {r} -> {c}" for k, (r, c) in enumerate(zip(bonds, clipped)) if r != c
        )
        warnings.warn(
            f"{fn}: ranks {(1, *bonds, 1)} exceed their useful maximum {(1, *useful, 1)} for row_shape "
            f"{row_shape} x col_shape {col_shape} (larger ranks add parameters, not expressiveness); "
            f"clipped ({where}). Pass clip_rank=False to keep them.",
            RankClipWarning,
            stacklevel=stacklevel,
        )
    return clipped


def core_shapes(
    row_shape: tuple[int, ...], col_shape: tuple[int, ...], bonds: tuple[int, ...]
) -> list[tuple[int, int, int, int]]:
    ranks = (1, *bonds, 1)
    return [(ranks[k], m, n, ranks[k + 1]) for k, (m, n) in enumerate(zip(row_shape, col_shape))]


def check_init(fn: str, init: Any) -> Init:
    if isinstance(init, str):
        if init not in INIT_NAMES:
            raise ValueError(f"{fn}: init must be one of {INIT_NAMES} or a float std, got {init!r}")
        return init  # type: ignore[return-value]
    if isinstance(init, bool) or not isinstance(init, numbers.Real):
        raise TypeError(f"{fn}: init must be one of {INIT_NAMES} or a float std, got {type(init).__name__}")
    if not math.isfinite(init) or init < 0:
        raise ValueError(f"{fn}: init as a std must be finite and >= 0, got {init!r}")
    return float(init)


def target_std(init: Init, fan_in: int, fan_out: int) -> float:
    """Entry std of the rebuilt matrix that ``init`` asks for (t3f's Glorot/He targets)."""
    if init == "gpt2":
        return GPT2_STD
    if init == "glorot":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "kaiming":
        return math.sqrt(2.0 / fan_in)
    return float(init)


@torch.no_grad()
def init_cores(shapes: list[tuple[int, int, int, int]], init: Init, fan_in: int, fan_out: int) -> list[Any]:
    """Random float64 CPU cores (drawn from torch's global generator) for ``init``.

    ``"gpt2"`` (the paper's recipe): core k ~ N(0, 1/r_{k-1}), the last core times 0.02, then a
    left-to-right QR sweep (cores 1..d-1 left-orthogonal, the norm in the last core). Other inits (the
    t3f rule): every core ~ N(0, s^2) with ``s = std^(1/d) * (r_1...r_{d-1})^(-1/(2d))``. Both give
    rebuilt entries of mean 0 and variance std^2 in expectation; a final scalar (on the last core for
    "gpt2", spread evenly as a d-th root otherwise) removes the sampling fluctuation of a single draw so
    the rebuilt matrix has entry RMS exactly ``std``. Cost: ``O(d n m r^3)``; the dense matrix is never built.
    """
    std = target_std(init, fan_in, fan_out)
    d = len(shapes)
    dtype = torch.float64
    if init == "gpt2":
        cores = [torch.randn(s, dtype=dtype) / math.sqrt(s[0]) for s in shapes]
        cores[-1] = cores[-1] * std
        for k in range(d - 1):
            r0, m, n, r1 = shapes[k]
            if r0 * m * n < r1:  # an unclipped rank: Q would have fewer columns than the bond
                continue
            q, r = torch.linalg.qr(cores[k].reshape(r0 * m * n, r1))
            cores[k] = q.reshape(shapes[k])
            cores[k + 1] = torch.einsum("ab,bmnc->amnc", r, cores[k + 1])
    else:
        scale = tn.random.core_std(std, [s[3] for s in shapes[:-1]])
        cores = [torch.randn(s, dtype=dtype) * scale for s in shapes]
    if std == 0.0:
        return [torch.zeros(s, dtype=dtype) for s in shapes]
    rows = math.prod(s[1] for s in shapes)
    cols = math.prod(s[2] for s in shapes)
    rms = float(tn.norm(tn.TTM(cores))) / math.sqrt(rows * cols)
    factor = std / rms
    if init == "gpt2":
        cores[-1] = cores[-1] * factor
    else:
        cores = [c * factor ** (1.0 / d) for c in cores]
    return cores


def conv1d_class() -> Any:
    """transformers' GPT-2 ``Conv1D`` if transformers is already imported (never imports it)."""
    module = sys.modules.get("transformers.pytorch_utils")
    return getattr(module, "Conv1D", None) if module is not None else None


class DenseCache:
    """The dense weight rebuilt from a layer's cores, reused while the cores are unchanged.

    Keyed by the cores' identities, storage pointers and in-place version counters (an optimizer step
    bumps ``_version``; ``.to()``/``load_state_dict`` replace or overwrite the tensors), with one matrix
    per compute dtype (a TT embedding tied to an LM head may need float32 rows and bf16 logits under
    autocast); a stale matrix is dropped before a new one is built. Used only when no gradient of the
    cores is needed and outside ``torch.compile``.
    """

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: dict[Any, tuple[tuple[Any, ...], Any]] = {}

    # a pickled or deep-copied module (torch.save(module), EMA copies) carries an empty cache, not the matrices
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.entries = {}

    def __deepcopy__(self, memo: dict[int, Any]) -> DenseCache:
        return DenseCache()

    def clear(self) -> None:
        self.entries = {}

    def lookup(self, packed: Any, device: Any, compute: Any, build: Any) -> Any:
        """The cached dense weight of the cores packed in ``packed``, in dtype ``compute`` (built by
        ``build(compute)`` on a miss), or None when the cache must not be used (a gradient of the cores is
        needed, compiling, the cores are on another device than ``device``)."""
        if torch.compiler.is_compiling():
            return None
        if torch.is_grad_enabled() and packed.requires_grad:
            self.entries = {}  # training: the cores are about to change, free the matrices now
            return None
        if device != packed.device or packed.is_inference():
            return None  # inference tensors have no version counter to key on
        key = (id(packed), packed.data_ptr(), packed._version)
        entry = self.entries.get(compute)
        if entry is not None and entry[0] == key:
            return entry[1]
        # free stale matrices (other cores' versions) before building the new one
        self.entries = {dt: e for dt, e in self.entries.items() if e[0] == key and dt != compute}
        # rebuilt in the cores' own precision, then cast once (not in bf16 under autocast); as a normal
        # tensor even under inference_mode, so a later call that needs the input's gradient may save it
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
            value = build(compute)
        self.entries[compute] = (key, value)
        return value


def linear_compute_dtype(x: Any, cores: list[Any]) -> Any:
    """The dtype a linear map of ``x`` runs in (the autocast dtype for what autocast casts), or None when
    ``x`` and the cores end up in different dtypes (the uncached path reports that with its own error)."""
    device_type = x.device.type
    dtype = compute_dtype(x.dtype, device_type)
    return dtype if dtype == compute_dtype(cores[0].dtype, device_type) else None


class TTCoresModule(nn.Module):
    """What :class:`TTMLinear` and :class:`TTEmbedding` share: the TT cores, their ranks and size, their
    initialisation and the dense-weight cache.

    The cores are stored as ONE parameter, :attr:`packed_cores` (every core flattened and concatenated in
    order), and :attr:`cores` gives views of it of shapes ``(r_{k-1}, rows_k, cols_k, r_k)``. One tensor per
    layer instead of d: an optimizer, gradient clipping and DDP handle one tensor (fewer per-parameter
    kernels and host reads each step), the layer's gradient is one tensor, and layers with equal core shapes
    can be stacked for a batched rebuild (:func:`tensornet.nn.materialize`). In-place writes to a view (under
    ``torch.no_grad()``) write the parameter; ``layer.packed_cores.grad`` holds every core's gradient
    (:attr:`core_grads` gives it per core).
    """

    packed_cores: nn.Parameter
    core_shapes: tuple[tuple[int, int, int, int], ...]
    init: Init
    conversion_error: float | None
    _dense_cache: DenseCache | None

    def _make_cores(
        self,
        fn: str,
        rows: tuple[int, ...],
        cols: tuple[int, ...],
        rank: int | tuple[int, ...],
        *,
        clip_rank: bool,
        init: Any,
        device: Any,
        dtype: Any,
    ) -> None:
        """Validate ``rank``/``init`` (clipping the rank with a warning if asked) and create empty cores."""
        bonds = check_rank(fn, rank, len(rows))
        if clip_rank:  # the warning points at the user's constructor call, two frames up
            bonds = clip_ranks(fn, bonds, rows, cols, stacklevel=4)
        self.init = check_init(fn, init)
        self.core_shapes = tuple(core_shapes(rows, cols, bonds))
        total = sum(math.prod(shape) for shape in self.core_shapes)
        self.packed_cores = nn.Parameter(torch.empty(total, device=device, dtype=dtype))
        self.conversion_error = None
        self._dense_cache = None

    @property
    def cores(self) -> tuple[torch.Tensor, ...]:
        """The cores ``(r_{k-1}, rows_k, cols_k, r_k)``: views of :attr:`packed_cores` (differentiable)."""
        sizes = [a * b * c * d for a, b, c, d in self.core_shapes]
        return tuple(v.view(s) for v, s in zip(self.packed_cores.split(sizes), self.core_shapes))

    @property
    def core_grads(self) -> tuple[torch.Tensor, ...] | None:
        """``packed_cores.grad`` as one view per core (None before a backward pass)."""
        grad = self.packed_cores.grad
        if grad is None:
            return None
        sizes = [a * b * c * d for a, b, c, d in self.core_shapes]
        return tuple(v.view(s) for v, s in zip(grad.split(sizes), self.core_shapes))

    def _draw_cores(self, fan_in: int, fan_out: int) -> None:
        """Fill the cores for ``self.init`` from torch's global generator (nothing on the meta device)."""
        if self.packed_cores.is_meta:
            return
        values = init_cores(list(self.core_shapes), self.init, fan_in, fan_out)
        with torch.no_grad():
            for core, value in zip(self.cores, values):
                core.copy_(value)

    @property
    def ranks(self) -> tuple[int, ...]:
        """TT ranks ``(1, r_1, ..., r_{d-1}, 1)``."""
        return (1, *(shape[-1] for shape in self.core_shapes))

    @property
    def tt_params(self) -> int:
        """Numbers stored in the cores (a bias not included)."""
        return self.packed_cores.numel()

    def cache_dense_weight(self, enabled: bool = True) -> Any:
        """Reuse the rebuilt dense weight across calls that need no gradient (inference, decoding).

        While enabled, a forward pass under ``torch.no_grad()``/``inference_mode()`` (or with cores that
        do not require grad) rebuilds the dense matrix once per (core values, compute dtype, device) and
        then runs the dense layer's kernel on it (``F.linear``, ``F.embedding``), so decoding costs what a
        dense layer costs. The cache is checked on every call against the cores' in-place version
        counters and identities: an optimizer step, ``load_state_dict`` or ``.to()`` invalidates it. It
        holds the dense matrix (the memory the TT format saves), is never saved in ``state_dict`` and is
        bypassed under ``torch.compile`` and whenever a gradient of the cores is needed.
        ``enabled=False`` frees it. See :func:`tensornet.nn.dense_weights` for a whole model. Returns
        ``self``. Writes through ``core.data`` bypass the version counter and are not seen: use in-place
        ops on the parameters (as optimizers do) or call this method again. A TT embedding's cached lookup
        returns the table's dtype under autocast, as ``nn.Embedding`` does.
        """
        self._dense_cache = DenseCache() if enabled else None
        return self

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # .to()/.float()/.cuda() may keep a core's identity and version counter while changing its values
        # (a round trip through another dtype), so a cached matrix is dropped whenever they are applied
        cache = getattr(self, "_dense_cache", None)
        if cache is not None:
            cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        cache = getattr(self, "_dense_cache", None)
        if cache is not None:
            cache.clear()
        # cores saved one tensor each (``cores.0``, ``cores.1``, ...: tensornet before packed cores)
        old = [f"{prefix}cores.{k}" for k in range(len(self.core_shapes))]
        if f"{prefix}packed_cores" not in state_dict and all(key in state_dict for key in old):
            for key, shape in zip(old, self.core_shapes):
                if tuple(state_dict[key].shape) != shape:
                    raise RuntimeError(
                        f"{type(self).__name__}: {key} has shape {tuple(state_dict[key].shape)} but this layer's "
                        f"core has shape {shape}; build the layer with the ranks and shapes it was saved with"
                    )
            state_dict[f"{prefix}packed_cores"] = torch.cat([state_dict.pop(key).reshape(-1) for key in old])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _cached_dense(self, device: Any, dtype: Any) -> torch.Tensor | None:
        """The cached dense matrix in ``dtype`` if the cache is on and usable here, else None."""
        cache = getattr(self, "_dense_cache", None)  # absent on modules pickled by older versions
        if cache is None:
            return None
        cores = list(self.cores)
        return cache.lookup(self.packed_cores, device, dtype, lambda dt: tn.full(tn.TTM(cores)).to(dt))
