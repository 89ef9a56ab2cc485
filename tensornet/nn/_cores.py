"""The base class of the TT layers, and the TT-SVD that converts a trained weight.

The base class, :class:`TTCoresModule`, holds the cores packed in one parameter, their shapes, initialisation
and dense-weight cache.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

import tensornet as tn
from tensornet import _checks
from tensornet._linear import binding

from ._cache import DenseCache
from ._factor import clip_ranks, core_shapes
from ._init import Init, check_init, init_cores
from ._source import WeightSource, choose_source
from ._state import check_loaded_shapes, shapes_state

__all__ = ["TTCoresModule", "check_dtype", "compress", "relative_error"]

# how a layer's messages name the operands of its product (x, W, bias)
_OPERANDS = ("the input", "the weight", "the bias")


# the dtypes the TT layers train in (torch's floating dtypes that randn, QR and GEMMs support)
LAYER_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_dtype(fn: str, dtype: Any, what: str = "dtype") -> None:
    """Raise ``TypeError`` unless ``dtype`` is None or one of :data:`LAYER_DTYPES`.

    Complex layers are not supported yet: refused with a message saying so (their gradients would need
    conjugated products). Integer and bool dtypes cannot hold trainable cores.
    """
    if dtype is None or dtype in LAYER_DTYPES:
        return
    names = ", ".join(str(d) for d in LAYER_DTYPES)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{fn}: {what} must be a torch.dtype ({names}), got {dtype!r}")
    if dtype.is_complex:
        raise TypeError(
            f"{fn}: {what} is {dtype}, but the TT layers do not support complex dtypes yet (planned); "
            f"use one of {names}"
        )
    raise TypeError(f"{fn}: {what} is {dtype}; the TT layers hold trainable cores in one of {names}")


def compress(
    dense: torch.Tensor,
    row_shape: tuple[int, ...],
    col_shape: tuple[int, ...],
    *,
    rank: tuple[int, ...] | None,
    eps: float | None,
    rows: int | None = None,
) -> tuple[tn.TTM, float]:
    """The TTM of a float64 CPU matrix by :func:`tensornet.ttm_svd`, and its measured relative error.

    ``rows``: the matrix is zero-padded to ``prod(row_shape)`` rows before the decomposition (an
    embedding's padded vocabulary) and the error is measured over the first ``rows`` rows.

    Cost: ``O(M N r)`` for the SVDs.
    """
    real = int(dense.shape[0]) if rows is None else rows
    padded = dense
    if math.prod(row_shape) != int(dense.shape[0]):
        padded = torch.zeros(math.prod(row_shape), int(dense.shape[1]), dtype=dense.dtype)
        padded[:real] = dense
    ttm = tn.ttm_svd(padded, row_shape, col_shape, eps=eps, max_rank=rank)
    return ttm, relative_error(tn.full(ttm)[:real], dense)


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approx - exact||_F / ||exact||_F`` at any finite scale of the dtype (0 when both are zero).

    Both are divided by the largest ``|exact|`` first: the sums of squares of entries near 1e300
    overflowed (an error of NaN) and of entries near 1e-300 underflowed to 0 (an error of 0 for any
    approximation).

    Cost: ``O(M N)``.
    """
    peak = exact.abs().max() if exact.numel() else exact.new_zeros(())
    if peak == 0:
        return 0.0 if not bool(approx.any()) else math.inf
    return float(
        torch.linalg.vector_norm(approx / peak - exact / peak) / torch.linalg.vector_norm(exact / peak)
    )


class TTCoresModule(nn.Module):
    """What :class:`TTMLinear` and :class:`TTEmbedding` share.

    The TT cores, their ranks and size, their initialisation and the dense-weight cache.

    The cores are stored as ONE parameter, :attr:`packed_cores` (every core flattened and concatenated in
    order), and :attr:`cores` gives views of it of shapes ``(r_{k-1}, rows_k, cols_k, r_k)``. One tensor per
    layer instead of d: an optimizer, gradient clipping and DDP handle one tensor (fewer per-parameter
    kernels and host reads each step), the layer's gradient is one tensor, and layers with equal core shapes
    can be stacked for a batched rebuild (:func:`tensornet.nn.materialize`). In-place writes to a view (under
    ``torch.no_grad()``) write the parameter; ``layer.packed_cores.grad`` holds every core's gradient
    (:attr:`core_grads` gives it per core).

    ``state_dict()`` holds ``packed_cores`` (and a bias) and ``_extra_state``: the core shapes, an int64
    ``(d, 4)`` tensor. ``load_state_dict`` (``strict=False`` too) refuses a state whose cores are
    factorised otherwise, naming both factorisations, before copying anything into the layer: one flat
    vector of the same size would otherwise load into another function. States saved without the shapes
    (tensornet before they were recorded) load as before, checked by size.
    """

    packed_cores: nn.Parameter
    core_shapes: tuple[tuple[int, int, int, int], ...]
    _SHAPE_NAMES: tuple[str, str] = ("rows", "cols")  # the constructor's names of the row and column shapes
    _columns: int
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
        """Validate ``rank``/``init``/``dtype`` (clipping the rank with a warning if asked); empty cores."""
        check_dtype(fn, dtype)
        bonds = _checks.parse_ranks(fn, "rank", rank, len(rows), owner="layer")
        if clip_rank:  # the warning points at the user's constructor call, two frames up
            bonds = clip_ranks(fn, bonds, rows, cols)
        self.init = check_init(fn, init)
        largest = torch.finfo(dtype if dtype is not None else torch.get_default_dtype()).max
        if isinstance(self.init, float) and self.init > largest:  # W's entries would overflow to inf
            raise ValueError(
                f"{fn}: init std {self.init:g} exceeds the largest finite value of the layer's dtype "
                f"({largest:g}); give a smaller std or a wider dtype"
            )
        self.core_shapes = tuple(core_shapes(rows, cols, bonds))
        self._columns = math.prod(cols)  # of the matrix W (its input size)
        total = sum(math.prod(shape) for shape in self.core_shapes)
        self.packed_cores = nn.Parameter(torch.empty(total, device=device, dtype=dtype))
        self.conversion_error = None
        self._dense_cache = None
        self._choose_weight_source()

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
    def ncores(self) -> int:
        """Number of cores d."""
        return len(self.core_shapes)

    @property
    def nparams(self) -> int:
        """Numbers stored in the cores (a bias not included)."""
        return self.packed_cores.numel()

    def _copy_cores(self, weight: tn.TTM) -> Any:
        """The layer (built on the meta device) materialised on ``weight``'s device with its cores."""
        layer = self.to_empty(device=weight.device)
        with torch.no_grad():
            for core, value in zip(layer.cores, weight.cores):
                core.copy_(value)
        return layer

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
        self._choose_weight_source()
        return self

    def _choose_weight_source(self) -> WeightSource:
        """Choose where :meth:`_product` takes W from, for the layer's present state (see :mod:`._source`).

        Called when that state changes: :meth:`cache_dense_weight`, :func:`tensornet.nn.materialize`.
        """
        source = self.__dict__["_weight_source"] = choose_source(self)
        return source

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # .to()/.float()/.cuda() may keep a core's identity and version counter while changing its values
        # (a round trip through another dtype), so a cached matrix is dropped whenever they are applied
        cache = getattr(self, "_dense_cache", None)
        if cache is not None:
            cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def get_extra_state(self) -> torch.Tensor:
        """The core shapes, ``(d, 4)`` int64: a state dict says how its packed cores are factorised."""
        return shapes_state(self.core_shapes)

    def set_extra_state(self, state: Any) -> None:
        """Nothing to set: :meth:`_load_from_state_dict` has checked the shapes before any value was copied."""

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        cache = getattr(self, "_dense_cache", None)
        if cache is not None:
            cache.clear()
        packed = f"{prefix}packed_cores"
        # a state of another factorisation: its packed cores are not copied (torch does the same for a
        # parameter of another size), and the reason is raised with load_state_dict's other errors
        matches = check_loaded_shapes(
            type(self).__name__, self.core_shapes, self._SHAPE_NAMES, state_dict, prefix, error_msgs
        )
        if not matches:
            state_dict.pop(packed, None)
        # cores saved one tensor each (``cores.0``, ``cores.1``, ...: tensornet before packed cores)
        old = [f"{prefix}cores.{k}" for k in range(len(self.core_shapes))]
        if f"{prefix}packed_cores" not in state_dict and all(key in state_dict for key in old):
            for key, shape in zip(old, self.core_shapes):
                if tuple(state_dict[key].shape) != shape:
                    raise RuntimeError(
                        f"{type(self).__name__}: {key} has shape {tuple(state_dict[key].shape)} but this layer's "
                        f"core has shape {shape}; build the layer with the ranks and shapes it was saved with"
                    )
            state_dict[packed] = torch.cat([state_dict.pop(key).reshape(-1) for key in old])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # not missing: refused above; a state saved before the core shapes were recorded: checked by size
        absent = {f"{prefix}_extra_state"} | (set() if matches else {packed})
        missing_keys[:] = [key for key in missing_keys if key not in absent]

    def _cached_dense(self, device: Any, dtype: Any) -> torch.Tensor | None:
        """The cached dense matrix in ``dtype`` if the cache is on and usable here, else None."""
        cache = getattr(self, "_dense_cache", None)  # absent on modules pickled by older versions
        if cache is None:
            return None
        cores = list(self.cores)
        return cache.lookup(self.packed_cores, device, dtype, lambda dt: tn.full(tn.TTM(cores)).to(dt))

    def _product(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, *, save_weight: bool = False, owner: str = ""
    ) -> torch.Tensor:
        """``x @ W.T + bias`` for ``W`` the ``(prod rows, prod cols)`` matrix of the cores.

        The forward of :class:`TTMLinear` and of the tied LM head (:class:`TiedTTHead`), on the layer's
        weight source (:meth:`_choose_weight_source`): the cached dense matrix under
        :meth:`cache_dense_weight` when usable, else a :func:`tensornet.nn.materialize` group's rebuilt W,
        else the TTM product. The cores were validated at construction and ``load_state_dict``
        keeps their shapes, so the input and bias are checked here (shape, device; the torch binding checks
        dtypes) and go straight to the binding. ``owner`` names the calling layer in errors (default: this
        one).
        """
        fn = owner or type(self).__name__
        if not isinstance(x, torch.Tensor):  # as nn.Linear: a numpy array or list is not converted
            raise TypeError(
                f"{fn}: input must be a torch.Tensor, got {type(x).__module__}.{type(x).__name__}; convert it "
                "with torch.as_tensor(x, dtype=...)"
            )
        packed = self.packed_cores
        if packed.dtype not in LAYER_DTYPES:  # made so after construction, e.g. by .to(torch.complex64)
            check_dtype(fn, packed.dtype, "the cores' dtype")
        columns = self._columns
        if x.ndim < 1 or x.shape[-1] != columns:
            raise ValueError(
                f"{fn}: the input has shape {tuple(x.shape)} but the layer takes {columns} features; the "
                f"last dimension of the input must be {columns}"
            )
        if x.device != packed.device or (bias is not None and bias.device != packed.device):
            devices = {_OPERANDS[0]: x.device, _OPERANDS[1]: packed.device}
            if bias is not None:
                devices[_OPERANDS[2]] = bias.device
            raise ValueError(
                f"{fn}: {binding.operand_mismatch(devices, _OPERANDS[1], on=True)}; move the input "
                "(x.to(device)) or the layer (layer.to(device)) to one device"
            )
        # modules pickled before the sources were recorded choose theirs at their first call
        source = self.__dict__.get("_weight_source") or self._choose_weight_source()
        return source.product(self, x, bias, save_weight, (fn, *_OPERANDS))
