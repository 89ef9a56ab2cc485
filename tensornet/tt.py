"""The tensor-train datatypes :class:`TT` and :class:`TTM`.

Both are immutable lists of cores, validated once at construction; every operation returns a new
object. The array library (numpy, torch, ...) is whatever the cores are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from . import _backend as B
from . import ops as _ops
from ._einsum import einsum

__all__ = ["TT", "TTM"]


def _validate(kind: str, cores: Any, core_ndim: int) -> tuple[Any, ...]:
    if B.is_array(cores) or not isinstance(cores, Sequence):
        raise TypeError(
            f"{kind}: cores must be a list or tuple of arrays, got {type(cores).__name__}; "
            f"wrap a single core as [core]"
        )
    cores = tuple(cores)
    if not cores:
        raise ValueError(f"{kind}: needs at least one core, got an empty list")
    layout = "(r_{k-1}, n_k, r_k)" if core_ndim == 3 else "(r_{k-1}, m_k, n_k, r_k)"
    for k, core in enumerate(cores):
        if not B.is_array(core):
            raise TypeError(f"{kind}: core {k} is a {type(core).__name__}, not an array")
        if core.ndim != core_ndim:
            raise ValueError(
                f"{kind}: core {k} has shape {tuple(core.shape)} ({core.ndim}-D) but {kind} cores are "
                f"{core_ndim}-D {layout}"
            )
        if any(int(n) == 0 for n in core.shape):
            raise ValueError(f"{kind}: core {k} has shape {tuple(core.shape)} with a zero-size dimension")
        if B.is_complex(core):
            raise TypeError(
                f"{kind}: core {k} is complex ({core.dtype}); tensornet supports real floats only"
            )
        if not B.is_floating(core):
            raise TypeError(
                f"{kind}: core {k} has dtype {core.dtype}; cores must be floating point (float32/float64), "
                "convert with .astype / .to(dtype)"
            )
    B.namespace(*cores, where=kind)
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
    return cores


class _Train:
    """Shared behaviour of TT and TTM (not public)."""

    __slots__ = ("_cores",)
    _core_ndim = 0
    __array_ufunc__ = None  # numpy scalars defer to our reflected operators instead of densifying

    _cores: tuple[Any, ...]

    def __init__(self, cores: Sequence[Any]) -> None:
        object.__setattr__(self, "_cores", _validate(type(self).__name__, cores, self._core_ndim))

    @classmethod
    def _trusted(cls, cores: Sequence[Any]) -> Any:
        """Wrap cores that are valid by construction (results of tensornet's own kernels)."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "_cores", tuple(cores))
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; operations return new objects")

    def __reduce__(self) -> Any:
        return (type(self), (list(self._cores),))

    # --- structure -------------------------------------------------------------------------------
    @property
    def cores(self) -> tuple[Any, ...]:
        """The cores, a tuple of arrays (do not modify them in place)."""
        return self._cores

    @property
    def ndim(self) -> int:
        """Number of cores d."""
        return len(self._cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """TT ranks ``(1, r_1, ..., r_{d-1}, 1)``, length d + 1."""
        return (1, *(int(c.shape[-1]) for c in self._cores))

    @property
    def max_rank(self) -> int:
        return max(self.ranks)

    @property
    def dtype(self) -> Any:
        return self._cores[0].dtype

    @property
    def device(self) -> Any:
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
    def compression(self) -> float:
        """Dense size divided by ``nparams``."""
        return math.prod(self._dense_shape()) / self.nparams

    def _dense_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def to(self, backend: str | None = None, *, device: Any = None, dtype: Any = None) -> Any:
        """A copy on another backend ('numpy'/'torch'), device ('cpu'/'cuda') or dtype."""
        backend = backend or self.backend
        return type(self)([B.to_backend(c, backend, device=device, dtype=dtype) for c in self._cores])

    def numpy(self) -> Any:
        """The same train with numpy cores (detached, on the CPU)."""
        return self.to("numpy")

    def _describe(self) -> str:
        dev = "" if self.backend == "numpy" else f" on {self.device}"
        dtype = B.dtype_name(self.dtype)
        return f"ranks={self.ranks}, {self.backend} {dtype}{dev}, {self.nparams} params"

    # --- arithmetic sugar over tensornet.ops ----------------------------------------------------
    def full(self) -> Any:
        """The dense array (memory ``prod(shape)``; use only for small trains)."""
        return _ops.full(self)

    def __add__(self, other: Any) -> Any:
        if isinstance(other, _Train):
            return _ops.add(self, other)
        return _ops.add_scalar(self, other) if _ops.is_scalar(other) else NotImplemented

    def __radd__(self, other: Any) -> Any:
        return _ops.add_scalar(self, other) if _ops.is_scalar(other) else NotImplemented

    def __sub__(self, other: Any) -> Any:
        if isinstance(other, _Train):
            return _ops.add(self, _ops.scale(other, -1.0))
        return _ops.add_scalar(self, -other) if _ops.is_scalar(other) else NotImplemented

    def __rsub__(self, other: Any) -> Any:
        return _ops.add_scalar(-self, other) if _ops.is_scalar(other) else NotImplemented

    def __pow__(self, exponent: Any) -> Any:
        return _ops.power(self, exponent)

    def __neg__(self) -> Any:
        return _ops.scale(self, -1.0)

    def __pos__(self) -> Any:
        return self

    def __mul__(self, other: Any) -> Any:
        if isinstance(other, _Train):
            return _ops.hadamard(self, other)
        if _ops.is_scalar(other):
            return _ops.scale(self, other)
        return NotImplemented

    def __rmul__(self, other: Any) -> Any:
        return _ops.scale(self, other) if _ops.is_scalar(other) else NotImplemented

    def __truediv__(self, other: Any) -> Any:
        if not _ops.is_scalar(other):
            return NotImplemented
        other = _ops._scalar_like("/", self, other)
        if not isinstance(other, float) and not getattr(other, "requires_grad", False):
            other = float(other)  # no graph to keep: a host number, checked below like any other
        if isinstance(other, float) and other == 0.0:
            raise ZeroDivisionError(f"{type(self).__name__} / 0: division of a train by zero")
        return _ops.scale(self, 1.0 / other)


class TT(_Train):
    """A tensor in tensor-train format.

    Core ``k`` has shape ``(r_{k-1}, n_k, r_k)`` with boundary ranks ``r_0 = r_d = 1``; the tensor is
    ``x[i_1, ..., i_d] = G_1[:, i_1, :] @ G_2[:, i_2, :] @ ... @ G_d[:, i_d, :]``.

    Parameters
    ----------
    cores : sequence of arrays
        d >= 1 arrays of one backend, dtype and device, real floating point.

    Raises
    ------
    TypeError, ValueError
        Cores that are not 3-D arrays, ranks that do not chain, boundary ranks other than 1,
        mixed backends, dtypes or devices, zero-size dimensions, integer or complex dtypes.
    """

    __slots__ = ()
    _core_ndim = 3

    @property
    def shape(self) -> tuple[int, ...]:
        """Mode sizes ``(n_1, ..., n_d)``."""
        return tuple(int(c.shape[1]) for c in self._cores)

    def _dense_shape(self) -> tuple[int, ...]:
        return self.shape

    def __repr__(self) -> str:
        return f"TT(shape={self.shape}, {self._describe()})"

    def __getitem__(self, index: Any) -> Any:
        return _ops.getitem(self, index)

    def __rmatmul__(self, other: Any) -> Any:
        return _ops.matvec(other, self) if isinstance(other, TTM) else NotImplemented

    def sum(self, axis: Any = None) -> Any:
        return _ops.sum(self, axis=axis)

    def norm(self) -> Any:
        return _ops.norm(self)


class TTM(_Train):
    """A matrix in tensor-train-matrix (TT-matrix, MPO) format.

    Core ``k`` has shape ``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_d = 1``; the TTM is the matrix
    of shape ``(M, N) = (prod m, prod n)`` whose row index is the C-order multi-index ``(i_1..i_d)``
    over ``row_shape = m`` and column index ``(j_1..j_d)`` over ``col_shape = n``:
    ``A[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]``.
    A layer weight is stored like ``torch.nn.Linear.weight``: ``(out_features, in_features)``.

    Raises
    ------
    TypeError, ValueError
        As :class:`TT`, for 4-D cores.
    """

    __slots__ = ()
    _core_ndim = 4

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(int(c.shape[1]) for c in self._cores)

    @property
    def col_shape(self) -> tuple[int, ...]:
        return tuple(int(c.shape[2]) for c in self._cores)

    @property
    def shape(self) -> tuple[int, int]:
        """The matrix shape ``(M, N)``."""
        return (math.prod(self.row_shape), math.prod(self.col_shape))

    def _dense_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def T(self) -> TTM:
        """The transpose (swaps row and column modes of every core)."""
        return _ops.transpose(self)

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

    def norm(self) -> Any:
        return _ops.norm(self)


def _full_tt(cores: Sequence[Any]) -> Any:
    """Dense tensor of TT cores, contracted left to right (one GEMM per core)."""
    xp = B.namespace(*cores)
    result = cores[0]
    shape = [int(result.shape[1])]
    result = xp.reshape(result, (shape[0], int(result.shape[2])))
    for core in cores[1:]:
        result = einsum("ar,rbs->abs", result, core)
        shape.append(int(core.shape[1]))
        result = xp.reshape(result, (-1, int(core.shape[2])))
    return xp.reshape(result, tuple(shape))


def _full_ttm(cores: Sequence[Any]) -> Any:
    xp = B.namespace(*cores)
    rows, cols = 1, 1
    result = xp.reshape(cores[0], tuple(int(n) for n in cores[0].shape[1:]))  # (m, n, r)
    rows, cols = int(cores[0].shape[1]), int(cores[0].shape[2])
    for core in cores[1:]:
        m, n = int(core.shape[1]), int(core.shape[2])
        result = einsum("MNr,rmns->MmNns", result, core)
        rows, cols = rows * m, cols * n
        result = xp.reshape(result, (rows, cols, int(core.shape[3])))
    return xp.reshape(result, (rows, cols))
