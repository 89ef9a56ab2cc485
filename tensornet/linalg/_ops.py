"""The few array operations the sweeps run in their inner loops, bound once per call to numpy or torch.

The sweeps call a handful of kernels thousands of times on small matrices, where the ``array_api_compat``
wrappers cost more than the arithmetic; :class:`Ops` binds numpy's or torch's own functions once (any
other array-API library goes through its compat namespace). Conjugation is skipped for real dtypes (a
no-op that would still copy on numpy), so the same code serves real and complex cores.
"""

from __future__ import annotations

import importlib
from typing import Any

import array_api_compat
import numpy as np

from .. import _backend as B
from .._backend import Array


class Ops:
    """Kernels on one backend, dtype and device (taken from ``like``)."""

    def __init__(self, like: Array) -> None:
        self.like = like
        self.dtype = like.dtype
        self.device = B.device(like)
        self.is_torch = bool(array_api_compat.is_torch_array(like))
        self.complex = B.is_complex(like)
        self.eps = B.finfo_eps(like)
        if self.is_torch:
            self.lib = importlib.import_module("torch")
        elif array_api_compat.is_numpy_array(like) and B._NUMPY_ARRAY_API:
            self.lib = np
        else:
            self.lib = B.namespace(like)
        self.xp = B.namespace(like)

    # --- shapes ----------------------------------------------------------------------------------
    def permute(self, x: Array, axes: tuple[int, ...]) -> Array:
        if self.is_torch:
            return x.permute(*axes)
        if self.lib is np:
            return np.transpose(x, axes)
        return self.xp.permute_dims(x, axes)

    def reshape(self, x: Array, shape: tuple[int, ...]) -> Array:
        return self.lib.reshape(x, shape)

    def concat(self, arrays: list[Array], axis: int) -> Array:
        if self.is_torch:
            return self.lib.cat(arrays, dim=axis)
        return self.lib.concat(arrays, axis=axis)

    def H(self, x: Array) -> Array:
        """Conjugate transpose of a matrix."""
        t = x.mT if self.is_torch else (x.T if self.lib is np else self.xp.matrix_transpose(x))
        return self.conj(t)

    def conj(self, x: Array) -> Array:
        return self.lib.conj(x) if self.complex else x

    # --- creation --------------------------------------------------------------------------------
    def zeros(self, shape: tuple[int, ...]) -> Array:
        return self.xp.zeros(shape, dtype=self.dtype, device=self.device)

    def eye(self, n: int) -> Array:
        return self.xp.eye(n, dtype=self.dtype, device=self.device)

    def asarray(self, values: Any) -> Array:
        """Host data (numpy or Python numbers) as an array of this backend, dtype and device."""
        return B.asarray_like(values, self.like)

    def real_asarray(self, values: Any) -> Array:
        """Host data as a real array of this backend (the real dtype matching ``dtype``)."""
        real = self.xp.real(self.zeros((1,))).dtype if self.complex else self.dtype
        if self.is_torch:
            return self.lib.as_tensor(np.asarray(values), dtype=real, device=self.device)
        return self.xp.asarray(np.asarray(values), dtype=real)

    def host(self, x: Array) -> np.ndarray:
        """A (small) array on the host as numpy (a device sync on GPUs)."""
        return np.asarray(B.to_backend(B.detach(x), "numpy"))

    # --- arithmetic ------------------------------------------------------------------------------
    def mm(self, a: Array, b: Array) -> Array:
        return self.lib.matmul(a, b)

    def norm(self, x: Array) -> float:
        """``||x||_F`` as a Python float (scaled: no overflow or underflow in the squares)."""
        if self.is_torch:
            return float(self.lib.linalg.vector_norm(x.detach()).cpu())
        if self.lib is np:
            return float(np.linalg.norm(x))
        return B.to_float(self.xp.linalg.vector_norm(x))

    def col_norms(self, x: Array) -> np.ndarray:
        """Euclidean norms of the columns of a 2-D array, on the host."""
        if self.is_torch:
            return self.host(self.lib.linalg.vector_norm(x, dim=0))
        return self.host(self.xp.linalg.vector_norm(x, axis=0))

    def inner(self, a: Array, b: Array) -> Array:
        """``a^H b`` for 2-D arrays (columns as vectors)."""
        return self.mm(self.H(a), b)

    # --- factorizations --------------------------------------------------------------------------
    def qr(self, x: Array) -> tuple[Array, Array]:
        return self.lib.linalg.qr(x) if self.is_torch or self.lib is np else self.xp.linalg.qr(x)

    def svd(self, x: Array) -> tuple[Array, Array, Array]:
        return self.lib.linalg.svd(x, full_matrices=False)

    def eigh(self, x: Array) -> tuple[Array, Array]:
        return self.lib.linalg.eigh(x)

    def solve(self, a: Array, b: Array) -> Array:
        return self.lib.linalg.solve(a, b)

    def lstsq_solve(self, a: Array, b: Array) -> Array:
        """``a^+ b`` for a small square ``a`` that may be singular (minimum-norm least squares)."""
        if self.is_torch:
            return self.lib.linalg.lstsq(a, b, driver="gelsd" if a.device.type == "cpu" else None).solution
        return np.linalg.lstsq(a, b, rcond=None)[0]
