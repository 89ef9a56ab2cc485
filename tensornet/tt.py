"""The tensor-train datatypes :class:`TT` and :class:`TTM`.

Both are immutable lists of cores, validated once at construction; every operation returns a new
object. The array library (numpy, torch, ...) is whatever the cores are.

Vocabulary shared by both classes and the whole package: ``ncores`` is the number of cores d, ``ranks``
the d + 1 TT ranks with the boundary 1s, ``largest_rank`` their maximum, ``nparams`` the numbers the
cores store; ``shape`` and ``ndim`` are those of the dense object (a tensor for TT, a matrix for TTM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import _backend as B
from . import _checks, _scalars
from ._backend import Array
from ._layout import tt_layout, ttm_layout

if TYPE_CHECKING:
    from typing import TypeAlias

__all__ = ["TT", "TTM", "Train", "TrainT"]

TrainT = TypeVar("TrainT", bound="_Train")
"""A TT or a TTM; functions annotated with it return the type they were given."""


def _validate(kind: str, cores: Any, core_ndim: int) -> tuple[Array, ...]:
    """The cores of a ``kind`` ("TT" or "TTM") as a tuple, validated (see :class:`tensornet.TT`).

    Raises
    ------
    TypeError
        Not a sequence of arrays; integer, bool or complex32 cores; mixed backends or dtypes.
    ValueError
        No cores, cores of the wrong dimension, zero-size dimensions, mixed devices, boundary ranks
        other than 1, ranks that do not chain.
    """
    if B.is_array(cores) or not isinstance(cores, Sequence):
        raise TypeError(
            f"{kind}: cores must be a list or tuple of arrays, got {type(cores).__name__}; "
            f"wrap a single core as [core]"
        )
    cores = tuple(cores)
    if not cores:
        raise ValueError(f"{kind}: needs at least one core, got an empty list")
    for k, core in enumerate(cores):
        _check_core(kind, k, core, core_ndim)
    B.namespace(*cores, where=kind)
    _check_storage(kind, cores)
    _check_chain(kind, cores)
    return tuple(B.frozen(c, copy=True) for c in cores)


def _check_core(kind: str, k: int, core: Any, core_ndim: int) -> None:
    layout = "(r_{k-1}, n_k, r_k)" if core_ndim == 3 else "(r_{k-1}, m_k, n_k, r_k)"
    if not B.is_array(core):
        raise TypeError(f"{kind}: core {k} is a {type(core).__name__}, not an array")
    _checks.check_unmasked(kind, f"core {k}", core)
    if core.ndim != core_ndim:
        raise ValueError(
            f"{kind}: core {k} has shape {tuple(core.shape)} ({core.ndim}-D) but {kind} cores are "
            f"{core_ndim}-D {layout}"
        )
    if any(int(n) == 0 for n in core.shape):
        raise ValueError(f"{kind}: core {k} has shape {tuple(core.shape)} with a zero-size dimension")
    if B.is_complex(core):
        if B.dtype_name(core.dtype) not in ("complex64", "complex128"):
            raise TypeError(
                f"{kind}: core {k} has dtype {core.dtype}; complex cores must be complex64 or complex128"
            )
    elif not B.is_floating(core):
        raise TypeError(
            f"{kind}: core {k} has dtype {core.dtype}; cores must be floating point (float32/float64, or "
            "complex64/complex128), convert with .astype / .to(dtype)"
        )


def _check_storage(kind: str, cores: tuple[Array, ...]) -> None:
    first = cores[0]
    for k, core in enumerate(cores[1:], start=1):
        if core.dtype != first.dtype:
            raise TypeError(
                f"{kind}: core {k} has dtype {core.dtype} but core 0 has {first.dtype}; use one dtype"
            )
        if B.device(core) != B.device(first):
            raise ValueError(
                f"{kind}: core {k} is on device {B.device(core)} but core 0 is on {B.device(first)}; "
                "move all cores to one device"
            )


def _check_chain(kind: str, cores: tuple[Array, ...]) -> None:
    if int(cores[0].shape[0]) != 1:
        raise ValueError(
            f"{kind}: core 0 has shape {tuple(cores[0].shape)}; its first (boundary) rank must be 1, "
            f"not {int(cores[0].shape[0])}"
        )
    if int(cores[-1].shape[-1]) != 1:
        raise ValueError(
            f"{kind}: core {len(cores) - 1} has shape {tuple(cores[-1].shape)}; its last (boundary) rank "
            f"must be 1, not {int(cores[-1].shape[-1])}"
        )
    for k in range(len(cores) - 1):
        left, right = int(cores[k].shape[-1]), int(cores[k + 1].shape[0])
        if left != right:
            raise ValueError(
                f"{kind}: core {k} has shape {tuple(cores[k].shape)} but core {k + 1} has shape "
                f"{tuple(cores[k + 1].shape)}; ranks must chain: the last size of core {k} ({left}) must "
                f"equal the first size of core {k + 1} ({right})"
            )


class _Train:
    """Shared behaviour of TT and TTM (not public)."""

    __slots__ = ("_cores",)
    _core_ndim = 0
    __array_ufunc__ = None  # numpy scalars defer to our reflected operators instead of densifying

    _cores: tuple[Array, ...]

    def __init__(self, cores: Sequence[Array]) -> None:
        object.__setattr__(self, "_cores", _validate(type(self).__name__, cores, self._core_ndim))

    @classmethod
    def _trusted(cls: type[TrainT], cores: Sequence[Array]) -> TrainT:
        """Wrap cores that are valid by construction (results of tensornet's own kernels)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "_cores", tuple(B.frozen(c, copy=False) for c in cores))
        return obj

    def _tt_layout(self) -> list[Array]:
        """The cores as TT cores ``(r, p, r')`` (a TTM's modes merged, ``p = m n``)."""
        return tt_layout(self._cores)

    def _from_tt_layout(self: TrainT, flat: Sequence[Array]) -> TrainT:
        """A train of this one's type and mode shapes from TT-layout cores (ranks may differ)."""
        raise NotImplementedError

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; operations return new objects")

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        # refused, not densified: np.asarray(t) would otherwise build a 0-d object array around the train
        raise TypeError(
            f"a {type(self).__name__} is not converted to a numpy array implicitly (its dense form has "
            f"{math.prod(self.shape):,} entries); use tn.full(t) for the dense array, or t.cores"
        )

    def __bool__(self) -> bool:
        raise TypeError(
            f"the truth value of a {type(self).__name__} is ambiguous (as numpy's for an array of many "
            "entries); compare a number instead, e.g. tn.norm(t) > 0"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (list(self._cores),))

    # --- structure -------------------------------------------------------------------------------
    @property
    def cores(self) -> tuple[Array, ...]:
        """The cores, a tuple of arrays (do not modify them in place)."""
        return self._cores

    @property
    def ncores(self) -> int:
        """Number of cores d."""
        return len(self._cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """TT ranks ``(1, r_1, ..., r_{d-1}, 1)``, length d + 1."""
        return (1, *(int(c.shape[-1]) for c in self._cores))

    @property
    def largest_rank(self) -> int:
        """The largest TT rank ``max_k r_k``."""
        return max(self.ranks)

    @property
    def dtype(self) -> Any:
        """The cores' dtype (a numpy dtype or a ``torch.dtype``)."""
        return self._cores[0].dtype

    @property
    def device(self) -> Any:
        """The cores' device ('cpu' for numpy)."""
        return B.device(self._cores[0])

    @property
    def backend(self) -> str:
        """'numpy' or 'torch'."""
        return B.backend_name(self._cores[0])

    @property
    def nparams(self) -> int:
        """Number of stored numbers (sum of core sizes)."""
        return sum(math.prod(int(n) for n in c.shape) for c in self._cores)

    @property
    def shape(self) -> tuple[int, ...]:
        """The dense shape (see the subclasses)."""
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        """Number of dimensions of the dense object, ``len(shape)``."""
        return len(self.shape)

    @property
    def compression(self) -> float:
        """Dense size divided by ``nparams``."""
        return math.prod(self.shape) / self.nparams

    def to(self: TrainT, backend: str | None = None, *, device: Any = None, dtype: Any = None) -> TrainT:
        """A copy on another backend ('numpy'/'torch'), device ('cpu'/'cuda') or dtype.

        Always a copy: the result shares no memory with this train, even when nothing changes (so a torch
        result can be trained in place without touching the original). torch -> torch keeps the autograd
        graph (the copy is differentiable); converting to numpy detaches.
        """
        backend = backend or self.backend
        cores = [B.to_backend(c, backend, device=device, dtype=dtype, copy=True) for c in self._cores]
        return type(self)._trusted(cores) if dtype is None else type(self)(cores)

    def numpy(self: TrainT) -> TrainT:
        """The same train with numpy cores (detached, on the CPU)."""
        return self.to("numpy")

    def _repr_html_(self) -> str:
        """A compact HTML table for notebooks: shape, ranks, dtype, backend, parameters."""
        return _report_html(cast("Train", self))

    def plot(self, *, eps: float | None = None, axes: Any = None) -> Any:
        """Draw the singular values at every bond and the ranks (:func:`tensornet.plot_spectra`)."""
        return _report.plot_spectra(self, eps=eps, axes=axes)

    def _describe(self) -> str:
        dev = "" if self.backend == "numpy" else f" on {self.device}"
        dtype = B.dtype_name(self.dtype)
        return f"ranks={self.ranks}, {self.backend} {dtype}{dev}, {self.nparams} params"

    # --- arithmetic sugar over tensornet.ops ----------------------------------------------------
    def full(self) -> Array:
        """The dense array (memory ``prod(shape)``; use only for small trains)."""
        return _ops.full(cast("Train", self))

    def norm(self) -> Array:
        """The Frobenius norm (:func:`tensornet.norm`)."""
        return _ops.norm(cast("Train", self))

    def conj(self: TrainT) -> TrainT:
        """The complex conjugate (:func:`tensornet.conj`)."""
        return _ops.conj(self)

    @property
    def real(self: TrainT) -> TrainT:
        """The real part (:func:`tensornet.real`)."""
        return _ops.real(self)

    @property
    def imag(self: TrainT) -> TrainT:
        """The imaginary part (:func:`tensornet.imag`)."""
        return _ops.imag(self)

    # the binary operators pass any train on: ops checks that the operands are of one type
    def __add__(self: TrainT, other: Any) -> TrainT:
        if isinstance(other, _Train):
            return _ops.add(self, cast(TrainT, other))
        return _ops.add_scalar(self, other) if _scalars.is_scalar(other) else NotImplemented

    def __radd__(self: TrainT, other: Any) -> TrainT:
        return _ops.add_scalar(self, other) if _scalars.is_scalar(other) else NotImplemented

    def __sub__(self: TrainT, other: Any) -> TrainT:
        if isinstance(other, _Train):
            return _ops.add(self, _ops.scale(cast(TrainT, other), -1.0))
        return _ops.add_scalar(self, -other) if _scalars.is_scalar(other) else NotImplemented

    def __rsub__(self: TrainT, other: Any) -> TrainT:
        return _ops.add_scalar(-self, other) if _scalars.is_scalar(other) else NotImplemented

    def __pow__(self: TrainT, exponent: int) -> TrainT:
        return _ops.power(self, exponent)

    def __neg__(self: TrainT) -> TrainT:
        return _ops.scale(self, -1.0)

    def __pos__(self: TrainT) -> TrainT:
        return self

    def __mul__(self: TrainT, other: Any) -> TrainT:
        if isinstance(other, _Train):
            return _ops.hadamard(self, cast(TrainT, other))
        if _scalars.is_scalar(other):
            return _ops.scale(self, other)
        return NotImplemented

    def __rmul__(self: TrainT, other: Any) -> TrainT:
        return _ops.scale(self, other) if _scalars.is_scalar(other) else NotImplemented

    def __truediv__(self: TrainT, other: Any) -> TrainT:
        if not _scalars.is_scalar(other):
            return NotImplemented
        other = _scalars.check_scalar("/", self, other)
        if not isinstance(other, (float, complex)) and not getattr(other, "requires_grad", False):
            # no graph to keep: a host number, checked below like any other
            other = complex(other) if B.is_complex(other) else float(other)
        if isinstance(other, (float, complex)) and other == 0.0:
            raise ZeroDivisionError(f"{type(self).__name__} / 0: division of a train by zero")
        return _ops.scale(self, 1.0 / other)


class TT(_Train):
    """A tensor in tensor-train format.

    Core ``k`` has shape ``(r_{k-1}, n_k, r_k)`` with boundary ranks ``r_0 = r_d = 1``; the tensor is
    ``x[i_1, ..., i_d] = G_1[:, i_1, :] @ G_2[:, i_2, :] @ ... @ G_d[:, i_d, :]``. ``shape`` is
    ``(n_1, ..., n_d)``, so ``ndim == ncores``.

    Parameters
    ----------
    cores : sequence of arrays
        d >= 1 arrays of one backend, dtype and device: real floating point or complex64/complex128.

    Raises
    ------
    TypeError, ValueError
        Cores that are not 3-D arrays, ranks that do not chain, boundary ranks other than 1,
        mixed backends, dtypes or devices, zero-size dimensions, integer, bool or complex32 dtypes.
    """

    __slots__ = ()
    _core_ndim = 3

    def _from_tt_layout(self, flat: Sequence[Array]) -> TT:
        return TT._trusted(flat)

    @property
    def shape(self) -> tuple[int, ...]:
        """Mode sizes ``(n_1, ..., n_d)``."""
        return tuple(int(c.shape[1]) for c in self._cores)

    def __repr__(self) -> str:
        return f"TT(shape={self.shape}, {self._describe()})"

    def __getitem__(self, index: Any) -> Any:
        return _ops.getitem(self, index)

    def __rmatmul__(self, other: Any) -> TT:
        return _ops.matvec(other, self) if isinstance(other, TTM) else NotImplemented

    @property
    def T(self) -> TT:
        """The tensor with its modes in reverse order, as numpy's ``x.T`` (:func:`tensornet.transpose`)."""
        return _ops.transpose(self)

    def sum(self, axis: int | Sequence[int] | None = None) -> Any:
        """Sum over all modes or over ``axis`` (:func:`tensornet.sum`)."""
        return _ops.sum(self, axis=axis)


class TTM(_Train):
    """A matrix in tensor-train-matrix (TT-matrix, MPO) format.

    Core ``k`` has shape ``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_d = 1``; the TTM is the matrix
    of shape ``(M, N) = (prod m, prod n)`` whose row index is the C-order multi-index ``(i_1..i_d)``
    over ``row_shape = m`` and column index ``(j_1..j_d)`` over ``col_shape = n``:
    ``A[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]``.
    A layer weight is stored like ``torch.nn.Linear.weight``: ``(out_features, in_features)``.
    ``shape`` is ``(M, N)``, so ``ndim == 2``; ``ncores`` counts the cores.

    The cores are checked as :class:`TT`'s are (same errors), for 4-D cores.
    """

    __slots__ = ()
    _core_ndim = 4

    def _from_tt_layout(self, flat: Sequence[Array]) -> TTM:
        return TTM._trusted(ttm_layout(flat, self.row_shape, self.col_shape))

    @property
    def row_shape(self) -> tuple[int, ...]:
        """Row mode sizes ``(m_1, ..., m_d)``."""
        return tuple(int(c.shape[1]) for c in self._cores)

    @property
    def col_shape(self) -> tuple[int, ...]:
        """Column mode sizes ``(n_1, ..., n_d)``."""
        return tuple(int(c.shape[2]) for c in self._cores)

    @property
    def shape(self) -> tuple[int, int]:
        """The matrix shape ``(M, N)``."""
        return (math.prod(self.row_shape), math.prod(self.col_shape))

    @property
    def T(self) -> TTM:
        """The transpose (swaps row and column modes of every core)."""
        return _ops.transpose(self)

    @property
    def H(self) -> TTM:
        """The conjugate transpose (Hermitian adjoint; the transpose of a real TTM)."""
        return _ops.transpose(self, conjugate=True)

    def __repr__(self) -> str:
        return (
            f"TTM(shape={self.shape}, row_shape={self.row_shape}, col_shape={self.col_shape}, "
            f"{self._describe()})"
        )

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, TT):
            return _ops.matvec(self, other)
        if isinstance(other, TTM):
            return _ops.matmul(self, other)
        return NotImplemented


Train: TypeAlias = "TT | TTM"
"""Either train type, for arguments that take both."""

# ops implements the operators and builds trains of these classes: imported once they exist, so that either
# module may be imported first
from . import _report  # noqa: E402
from . import ops as _ops  # noqa: E402
from ._report._html import train_html as _report_html  # noqa: E402
