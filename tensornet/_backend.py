"""Backend helpers: the array namespace is always taken from the arrays themselves.

Nothing here holds global state; every function receives the arrays it works on. numpy and torch
(CPU and CUDA, with or without ``requires_grad``) are supported through ``array_api_compat``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import array_api_compat
import numpy as np

Array = Any
"""An array of any supported library (numpy ``ndarray``, ``torch.Tensor``); the array API has no static
type that covers them all."""

_P = ParamSpec("_P")
_R = TypeVar("_R")


def namespace(*arrays: Array, where: str = "tensornet") -> Any:
    """Return the array-API namespace shared by ``arrays``; raise a clear error if they disagree."""
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as err:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in arrays})
        raise TypeError(
            f"{where}: arrays come from different or unsupported libraries ({', '.join(kinds)}); "
            "convert them to one backend first, e.g. with TT.to('numpy') or TT.to('torch')"
        ) from err


_NUMPY_ARRAY_API = int(np.__version__.split(".")[0]) >= 2


def fast_namespace(*arrays: Array) -> Any:
    """:func:`namespace`, or the library itself where it implements what sweeps over small matrices use.

    numpy >= 2 and torch implement it: the compat wrappers cost time on every call, which adds up in
    sweeps over small matrices. Callers use only ``matmul, reshape, concat, zeros, abs, max`` (whole array), ``linalg.qr``,
    ``linalg.svd``, ``linalg.vector_norm`` and the ``.T`` of 2-D arrays, which agree in both.
    """
    if _NUMPY_ARRAY_API and all(type(a) is np.ndarray for a in arrays):
        return np
    if arrays and all(array_api_compat.is_torch_array(a) for a in arrays):
        return importlib.import_module("torch")
    return namespace(*arrays)


def max_abs(x: Array) -> float:
    """``max |x|`` as a Python float (NaN if x has a NaN), without an |x|-sized temporary on torch."""
    if array_api_compat.is_torch_array(x):
        torch = importlib.import_module("torch")
        return to_float(torch.linalg.vector_norm(x.detach(), ord=float("inf")))
    xp = namespace(x)
    return to_float(xp.max(xp.abs(x)))


def magnitude(x: Array) -> float:
    """The largest absolute value of ``x``'s real and imaginary parts, as a Python float.

    ``max |x|`` for real ``x``; within a factor ``sqrt(2)`` of it for complex ``x`` (no square roots: what
    power-of-two normalisation needs, at a quarter of the cost of ``max |x|`` on complex arrays). NaN if
    ``x`` has a NaN. Cost: one pass over ``x``, no ``x``-sized temporary.
    """
    if array_api_compat.is_torch_array(x):
        torch = importlib.import_module("torch")
        parts = torch.view_as_real(x.detach().resolve_conj()) if x.is_complex() else x.detach()
        return to_float(torch.linalg.vector_norm(parts, ord=float("inf")))
    parts = np.asarray(x)
    if parts.dtype.kind == "c":
        parts = np.ascontiguousarray(parts).view(parts.real.dtype)
    if parts.size == 0:
        return 0.0
    return float(max(parts.max(), -parts.min()))


def is_array(x: object) -> bool:
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, complex, bool))


def backend_name(x: Array) -> str:
    """'numpy' or 'torch' (or the module name of another array-API library)."""
    if array_api_compat.is_numpy_array(x):
        return "numpy"
    if array_api_compat.is_torch_array(x):
        return "torch"
    return type(x).__module__.split(".")[0]


def device(x: Array) -> Any:
    return array_api_compat.device(x)


def _owns_frozen(x: np.ndarray) -> bool:
    """Whether no writeable array shares ``x``'s memory (every array in its base chain is read-only)."""
    base: Any = x
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return False
        base = base.base
    return base is None or isinstance(base, bytes)


def frozen(x: Array, *, copy: bool) -> Array:
    """``x`` as a read-only numpy array (other backends unchanged).

    With ``copy``, memory that a writeable array elsewhere can still change is copied first, so that no
    one can change the result in place; without it the result is a read-only view (for arrays the caller
    made itself). Cost: a view, or a copy of ``x``.
    """
    if not isinstance(x, np.ndarray):
        return x
    if copy and not _owns_frozen(x):
        x = np.array(x, copy=True)  # a plain ndarray: also drops subclasses such as np.matrix or memmap
    elif type(x) is not np.ndarray or x.flags.writeable:
        x = x.view(np.ndarray)
    x.flags.writeable = False
    return x


def copy(x: Array) -> Array:
    """A copy of ``x`` that shares no memory with it (differentiable on torch)."""
    if array_api_compat.is_torch_array(x):
        return x.clone()
    return np.array(x, copy=True)


def is_floating(x: Array) -> bool:
    if array_api_compat.is_torch_array(x):
        return bool(x.is_floating_point())
    return bool(np.issubdtype(np.dtype(x.dtype), np.floating))


def is_complex(x: Array) -> bool:
    if array_api_compat.is_torch_array(x):
        return bool(x.is_complex())
    return bool(np.issubdtype(np.dtype(x.dtype), np.complexfloating))


def real_dtype_name(dtype: Any) -> str:
    """The dtype of a complex dtype's parts ('complex64' -> 'float32'); a real dtype's own name."""
    name = dtype_name(dtype)
    return {"complex64": "float32", "complex128": "float64"}.get(name, name)


def complex_dtype_name(dtype: Any) -> str:
    """The complex dtype of a real dtype's precision ('float32' -> 'complex64'); a complex dtype's own name."""
    name = dtype_name(dtype)
    return {"float32": "complex64", "float64": "complex128"}.get(name, name)


def as_primal(grads: Sequence[Array], cores: Sequence[Array]) -> list[Array]:
    """Gradients in their cores' kind and dtype (torch's rule for real inputs: the real part for a real core).

    A complex64 core combined with a float64 one is computed in complex128 and gets a complex64 gradient.
    """
    out = []
    for g, c in zip(grads, cores):
        if is_complex(g) and not is_complex(c):
            g = namespace(g).real(g)
        if dtype_name(g.dtype) != dtype_name(c.dtype):
            g = to_backend(g, backend_name(g), dtype=dtype_name(c.dtype))
        out.append(g)
    return out


def conj(x: Array) -> Array:
    """The complex conjugate of ``x`` (``x`` itself when real: no copy)."""
    if not is_complex(x):
        return x
    if array_api_compat.is_torch_array(x):
        return x.conj_physical()  # not torch's lazy conj view, which .numpy() and some kernels refuse
    return np.conj(x)


def _flush_subnormals(x: Array) -> Array:
    """A torch complex ``x`` with its subnormal entries set to 0 (other arrays as they are).

    torch's complex QR kernels return NaN/inf for matrices holding subnormal numbers (numpy's do not);
    such entries are below ``tiny`` while tensornet's data are normalised near 1 first, so zeroing
    them changes nothing the eps guarantees see. Differentiable where the entries are kept.
    """
    if not (array_api_compat.is_torch_array(x) and x.is_complex()):
        return x
    torch = importlib.import_module("torch")
    tiny = torch.finfo(x.dtype).tiny
    return torch.where(x.abs() < tiny, torch.zeros_like(x), x)


def qr(x: Array) -> tuple[Array, Array]:
    """The reduced QR factorisation ``(Q, R)`` of a (stack of) matrix(es) on its own backend."""
    return namespace(x).linalg.qr(_flush_subnormals(x))


def qr_r(x: Array) -> Array:
    """The R factor of a (stack of) QR factorisation(s), Q not formed."""
    if array_api_compat.is_torch_array(x):
        torch = importlib.import_module("torch")
        return torch.linalg.qr(_flush_subnormals(x), mode="r")[1]
    return np.linalg.qr(x, mode="r")


def finfo_eps(x: Array) -> float:
    xp = namespace(x)
    return float(xp.finfo(x.dtype).eps)


def all_finite(x: Array) -> bool:
    xp = namespace(x)
    return bool(xp.all(xp.isfinite(x)))


def to_float(x: Array) -> float:
    """A 0-d array as a Python float (a host sync on GPU backends)."""
    if array_api_compat.is_torch_array(x):
        return float(x.detach().cpu().item())
    return float(x)


def to_backend(x: Array, backend: str, *, device: Any = None, dtype: Any = None, copy: bool = False) -> Array:
    """Convert one array to ``backend`` ('numpy' or 'torch'), keeping values (and dtype unless given).

    With ``copy`` the result never shares memory with ``x``; without it, it may (numpy -> torch always
    copies: a torch tensor must not write into a read-only numpy core). torch -> torch stays
    differentiable (torch -> numpy detaches).
    """
    if backend == "numpy":
        if array_api_compat.is_torch_array(x):
            x = x.detach().cpu().numpy()
        out = np.array(x, copy=True) if copy else np.asarray(x)
        if dtype is not None:
            out = out.astype(np.dtype(dtype_name(dtype)), copy=False)
        if device not in (None, "cpu"):
            raise ValueError(f"to: numpy arrays live on the CPU; device={device!r} is not possible")
        return out
    if backend == "torch":
        torch = importlib.import_module("torch")
        if dtype is not None:
            dtype = getattr(torch, dtype_name(dtype))
        if array_api_compat.is_torch_array(x):
            return x.to(device=device if device is not None else x.device, dtype=dtype or x.dtype, copy=copy)
        return torch.tensor(np.asarray(x), device=device, dtype=dtype)
    raise ValueError(f"to: unknown backend {backend!r}; use 'numpy' or 'torch'")


def dtype_name(dtype: Any) -> str:
    """'float32' for np.float32, torch.float32, 'float32' or np.dtype('float32')."""
    text = str(dtype)
    if text.startswith("torch."):
        return text[len("torch.") :]
    if text == "bfloat16":  # torch-only: numpy has no name for it
        return text
    return np.dtype(dtype).name


def asarray_like(values: Any, like: Array) -> Array:
    """``values`` (numpy or Python data) as an array of ``like``'s backend, dtype and device."""
    xp = namespace(like)
    if array_api_compat.is_torch_array(like):
        torch = importlib.import_module("torch")
        return torch.tensor(np.asarray(values), dtype=like.dtype, device=like.device)
    return xp.asarray(values, dtype=like.dtype)


# --- exact power-of-two scaling ------------------------------------------------------------------------
# Trains are renormalised by powers of two, never by their measured size: multiplying by 2^k is exact
# (unless the result itself over- or underflows), so a scale factor taken out and put back leaves no
# rounding behind, and a result that overflows saturates to inf instead of turning into inf/inf = NaN.
def exponent(size: Array) -> Array:
    """The power of two to divide by so that ``size`` lands near 1.

    An integer 0-d array ``e`` with ``2^(e-2) <= size < 2^(e+1)`` for a finite ``size > 0`` (0 for zero
    or non-finite ``size``).
    """
    xp = namespace(size)
    usable = xp.logical_and(size > 0, xp.isfinite(size))
    safe = xp.where(usable, size, xp.ones_like(size))
    if array_api_compat.is_numpy_array(size) or isinstance(size, np.generic):
        return np.asarray(np.frexp(safe)[1], dtype=np.int64)
    # log2 of a float is within an ulp, so the floor is the exponent or one off: any nearby power of two
    # serves, as only exactness of the scaling matters
    return xp.astype(xp.floor(xp.log2(safe)), xp.int64) + 1


def _pow2_torch(e: Array, like: Array) -> Array:
    """``2.0**e`` built from its bit pattern (exact on every device), ``e`` within the normal range."""
    torch = importlib.import_module("torch")
    # a complex array is scaled by a real factor of its parts' dtype
    real = {torch.complex128: torch.float64, torch.complex64: torch.float32}.get(like.dtype, like.dtype)
    bits = {
        torch.float64: (1023, 52, torch.int64),
        torch.float32: (127, 23, torch.int32),
        torch.float16: (15, 10, torch.int16),
        torch.bfloat16: (127, 7, torch.int16),
    }.get(real)
    if bits is None:
        return torch.pow(torch.tensor(2.0, dtype=real, device=like.device), e.to(real))
    bias, mantissa, integer = bits
    return torch.bitwise_left_shift((e + bias).to(integer), mantissa).view(real)


def _pow2_steps(dtype: Any) -> tuple[int, int]:
    """``(step, count)``: ``count`` steps of ``2^step`` span the whole range of ``dtype``.

    2^step and 2^-step are normal numbers of ``dtype``; any non-zero finite value times 2^(count step)
    overflows, times 2^-(count step) underflows.
    """
    finfo = np.finfo(np.float64) if "float64" in str(dtype) or "complex128" in str(dtype) else None
    if finfo is None:
        torch = importlib.import_module("torch") if str(dtype).startswith("torch.") else None
        finfo = torch.finfo(dtype) if torch is not None else np.finfo(dtype)
    top = int(np.ceil(np.log2(float(finfo.max))))  # 2^top overflows
    bottom = int(np.floor(np.log2(float(finfo.smallest_normal) * float(finfo.eps))))  # smallest subnormal
    step = top - 2
    return step, -(-(top - bottom + 1) // step)


def scale_pow2(x: Array, e: Any) -> Array:
    """``x * 2^e`` exactly, up to the final over- or underflow (inf or 0, never NaN).

    ``e`` is an int or an integer 0-d array of any size. Differentiable in ``x`` (the factors are
    constants).
    """
    if array_api_compat.is_numpy_array(x) or isinstance(x, np.generic):
        e = np.clip(np.asarray(e, dtype=np.int64), -(2**20), 2**20)
        with np.errstate(over="ignore", under="ignore"):  # inf / 0 is the honest saturated answer
            if np.iscomplexobj(x):  # ldexp takes real arrays: scale both parts (each exactly)
                real, imag = np.ldexp(x.real, e), np.ldexp(x.imag, e)
                out = np.empty(np.broadcast_shapes(real.shape, imag.shape), dtype=x.dtype)
                out.real, out.imag = real, imag
                return out
            return np.ldexp(x, e)
    xp = namespace(x)
    if isinstance(e, int):
        e = xp.asarray(e, dtype=xp.int64, device=device(x))
    if is_complex(x):  # each part scaled by the real factor: a complex product would make inf * 0 = NaN
        real = scale_pow2(xp.real(x), e)
        imag = scale_pow2(xp.imag(x), e)
        if array_api_compat.is_torch_array(x):
            return importlib.import_module("torch").complex(real, imag)
        return real + 1j * imag
    step, count = _pow2_steps(x.dtype)
    e = xp.clip(e, -step * count, step * count)
    for _ in range(count):
        part = xp.clip(e, -step, step)
        x = x * (_pow2_torch(part, x) if array_api_compat.is_torch_array(x) else xp.pow(2.0, part))
        e = e - part
    return x


def normalized(x: Array) -> tuple[Array, Array]:
    """``(x / 2^e, e)`` with the largest magnitude of the result near 1 (``x`` unchanged if all zero)."""
    xp = namespace(x)
    if is_complex(x):  # the parts' largest magnitude: a power of two near |x| without the square roots
        e = exponent(xp.maximum(xp.max(xp.abs(xp.real(x))), xp.max(xp.abs(xp.imag(x)))))
    else:
        e = exponent(xp.max(xp.abs(x)))
    return scale_pow2(x, -e), e


def renormalized(x: Array, bound: int = 256) -> tuple[Array, int]:
    """``(x / 2^e, e)``, renormalised only when ``x``'s largest magnitude leaves ``[2^-bound, 2^bound]``.

    Otherwise ``(x, 0)``: one max over ``x``, no copy. For the running products of sweeps, which need
    renormalising only when they drift far from 1.
    """
    top = magnitude(x)
    if 2.0**-bound < top < 2.0**bound or top == 0.0 or not math.isfinite(top):
        return x, 0
    e = math.frexp(top)[1]
    return scale_pow2(x, -e), e


def detach(x: Array) -> Array:
    """``x`` cut from autograd's graph (torch); other backends have no graph."""
    return x.detach() if hasattr(x, "detach") else x


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first caller outside tensornet (no hand-counted stacklevel).

    The frames of tensornet's own modules (public functions, their decorators and helpers) are skipped, so
    the warning names the user's line whatever path inside the package raised it (as Python 3.12's
    ``skip_file_prefixes`` does).
    """
    frame: Any = sys._getframe(1)
    level = 2  # stacklevel 2 is warn's caller
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def available_memory() -> int | None:
    """Host memory not in use now, in bytes (POSIX), or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_AVPHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def exact(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``fn`` with torch's autocast off (a decorator for tensornet's algebra).

    Autocast is for neural-network layers: under ``torch.autocast`` a product of float32 cores would run
    in bf16/fp16, mix dtypes between steps and break the accuracy the algebra promises. Decorated functions
    compute in the trains' own dtype whatever the autocast state (``tensornet.linear`` alone follows
    autocast, as ``nn.Linear`` does). Costs nothing when torch is not imported or autocast is off.
    """

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        torch = sys.modules.get("torch")
        if torch is None:
            return fn(*args, **kwargs)
        on = [device for device in ("cpu", "cuda") if torch.is_autocast_enabled(device)]
        if not on:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for device in on:
                stack.enter_context(torch.autocast(device, enabled=False))
            return fn(*args, **kwargs)

    return wrapper
