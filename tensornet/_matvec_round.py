"""``A @ x`` rounded to ``eps`` without forming and rounding the product of rank ``R r`` (:func:`tensornet.matvec`).

Route (every step contracts A's and x's cores separately; the product's cores are never stored):

1. **Frame** by randomised sketching (randomise-then-orthogonalise, Al Daas, Ballard, Cazeaux et al., "Randomized
   algorithms for rounding in the tensor-train format", SISC 45 (2023)): right sketches
   ``S_k = <Omega_{>k}, (A x)_{>k}>`` with a Gaussian train Omega of rank l, then left to right the orthonormal
   frame ``U_k = orth(C_k (x) A_k (x) x_k S_{k+1})`` with ``C_k = <U_{<k}, (A x)_{<k}>``; the last core is the
   exact projection ``U_{<d}^H (A x)``, so ``y = P (A x)`` with P the orthogonal projector on the frame.
2. **Certificate**: ``I - P`` telescopes into mutually orthogonal pieces, so
   ``||A x - y||^2 = sum_k ||(I - U_k U_k^H) Ct_k (A x)_{>k}||^2 = sum_k tr(E_k G_k E_k^H)``, where
   ``Ct_k = C_k (x) A_k (x) x_k`` is the projected product core, ``E_k = (I - U_k U_k^H) Ct_k`` is formed
   explicitly (before any squaring: no cancellation) and ``G_k`` is the Gram matrix of the product's right part,
   built right to left from A's and x's cores. The sum plus an allowance for the rounding of E_k and G_k is an
   upper bound on the error of y.
3. **Truncation**: y's rounding (:func:`tensornet.round`) stays in the frame's span, so its error is orthogonal to
   ``A x - y`` and the two add in squares: y is rounded with what remains of ``eps ||A x||``.

Which route: forming the product and rounding it by the certified two-sweep algorithm of :func:`tensornet.round`
was measured 1.3x-2.9x *faster* than the sketch on every case tried (operator ranks 5 to 9, vector ranks 3 to 55;
``benchmarks/results/solvers.md``): the certificate's Gram chain alone costs about as much as that rounding, whose
Gram and noise-dropping kernels are fast. So the product is formed wherever its cores fit in a quarter of the free
memory, and the sketch route, which never holds more than one bond's ``(R r)^2`` Gram matrix and sketches, is taken
where they would not. The sketch rank is ``r_x + 8`` (``max_rank + 8`` with a cap); where that is half the
product's rank or more, or the certified bound misses eps (the result needs a larger rank, or the rounding
allowance of an ill-conditioned product at tiny eps is too large), the product is formed after all. Either way
``||A x - result|| <= eps ||A x||``, as for ``round``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from . import _backend as B
from . import _pow2
from ._backend import Array
from ._einsum import einsum
from ._truncation import RankCapWarning
from .tt import TT, TTM

OVERSAMPLE = 8  # extra sketch columns over the rank the caller expects


def _conj(x: Array) -> Array:
    return B.namespace(x).conj(x) if B.is_complex(x) else x


def _normalized(x: Array) -> tuple[Array, int]:
    """``x / 2^e`` with its largest entry near 1, and e (a Python int; 0 for a zero array)."""
    top = B.max_abs(x)
    if not (top > 0.0 and math.isfinite(top)):
        return x, 0
    e = math.frexp(top)[1]
    return B.scale_pow2(x, -e), e


def _grams(a: list[Array], x: list[Array]) -> tuple[list[Array], list[int]]:
    """``G_k`` (R_k, r_k, R_k, r_k): Gram matrix of ``(A x)_{>k}`` over bond k, scaled by ``2^-e_k``.

    ``G[d]`` is the (1, 1, 1, 1) identity; ``G[0]``'s left bond is the boundary, so it holds ``||A x||^2``.
    """
    d = len(a)
    xp = B.namespace(*a, *x)
    one = xp.ones((1, 1, 1, 1), dtype=a[0].dtype, device=B.device(a[0]))
    grams: list[Any] = [None] * d + [one]
    exps = [0] * (d + 1)
    for k in range(d - 1, -1, -1):
        g = einsum("aijb,cjd,bdBD,AiJB,CJD->acAC", a[k], x[k], grams[k + 1], _conj(a[k]), _conj(x[k]))
        grams[k], e = _normalized(g)
        exps[k] = exps[k + 1] + e
    return grams, exps


def _sketches(a: list[Array], x: list[Array], rank: int, seed: int) -> list[Array]:
    """Right sketches ``S_k`` (l, R_{k-1}, r_{k-1}) of ``(A x)_{>=k}`` by a Gaussian train (each normalised)."""
    d = len(a)
    xp = B.namespace(*a, *x)
    rng = np.random.default_rng(seed)
    like = a[0]
    out: list[Any] = [None] * (d + 1)
    out[d] = xp.ones((1, 1, 1), dtype=like.dtype, device=B.device(like))
    for k in range(d - 1, 0, -1):
        m = int(a[k].shape[1])
        right = int(out[k + 1].shape[0])
        omega = B.asarray_like(rng.standard_normal((rank, m, right)), like)
        out[k], _ = _normalized(einsum("pix,aijb,cjd,xbd->pac", omega, a[k], x[k], out[k + 1]))
    return out


def rounded_matvec(
    fn: str, a: TTM, x: TT, eps: float | None, caps: list[int | None], round_fn: Any, exact_fn: Any
) -> tuple[TT, float]:
    """``round(A @ x, eps, max_rank)`` by the route of the module notes; returns it and the error bound."""
    spec = None if all(c is None for c in caps) else caps  # rank_caps gives all ints or all None
    ac, ea = _pow2.normalize_cores(fn, list(a.cores))
    xc, ex = _pow2.normalize_cores(fn, list(x.cores))
    product_rank = max(int(p.shape[0]) * int(q.shape[0]) for p, q in zip(ac, xc))
    cap = max((c or 0) for c in caps) if spec is not None else 0
    rank = min(product_rank, max(x.largest_rank, cap) + OVERSAMPLE)
    if 2 * rank >= product_rank or (SKETCH_ONLY_IF_TOO_LARGE and _fits(ac, xc)):
        # measured faster wherever the product fits in memory (module notes), and certified
        return _formed(fn, ac, xc, ea + ex, eps, spec, round_fn, exact_fn)
    grams, gexp = _grams(ac, xc)
    norm2 = float(np.real(B.to_backend(grams[0], "numpy")).reshape(-1)[0])
    if not norm2 > 0.0:  # A x = 0
        zero = exact_fn(TTM._trusted(ac), TT._trusted(xc))
        return round_fn(zero, eps=None, max_rank=1), 0.0
    budget = (eps or 0.0) ** 2  # relative squared error allowed
    cores, error2, allowance2 = _frame(ac, xc, grams, gexp, rank)
    bound2 = (error2 + allowance2) / norm2
    if eps is not None and bound2 > 0.25 * budget:
        # the frame misses eps (the result needs a larger rank, or rounding hides an error of eps): form the
        # product and round it with the certified two sweeps; one sketch is all this route risks
        return _formed(fn, ac, xc, ea + ex, eps, spec, round_fn, exact_fn)
    y = TT._trusted(cores)
    # the rounding's error lies in the frame's span, orthogonal to A x - y: the two add in squares
    remaining = math.sqrt(max(budget - bound2, 0.0)) if eps is not None else None
    ny2 = max(1.0 - bound2, 0.0)  # ||y||^2 / ||A x||^2
    relative = remaining / math.sqrt(ny2) if remaining is not None and ny2 > 0 else remaining
    with warnings.catch_warnings():  # a binding max_rank is reported by matvec with the whole bound
        warnings.simplefilter("ignore", RankCapWarning)
        result, rounding = round_fn(y, eps=relative, max_rank=spec, return_error=True)
    bound = math.sqrt(bound2 + (rounding**2) * ny2)
    return TT._trusted(_pow2.restore(list(result.cores), ea + ex, at=-1)), bound


MEMORY_SHARE = (
    0.25  # the product is formed when its cores (and its rounding) take at most this share of free memory
)
SKETCH_ONLY_IF_TOO_LARGE = True  # tests switch it off to exercise the sketch route on small problems


def _fits(ac: list[Array], xc: list[Array]) -> bool:
    """Whether the product's cores, with room for their rounding, fit in the memory free now."""
    entries = sum(
        int(p.shape[0]) * int(q.shape[0]) * int(p.shape[1]) * int(p.shape[3]) * int(q.shape[2])
        for p, q in zip(ac, xc)
    )
    memory = B.available_memory()
    return memory is None or 3 * entries * int(ac[0].itemsize) <= MEMORY_SHARE * memory


def _formed(
    fn: str,
    ac: list[Array],
    xc: list[Array],
    shift: int,
    eps: float | None,
    spec: Any,
    round_fn: Any,
    exact_fn: Any,
) -> tuple[TT, float]:
    """The product formed and rounded by the certified two-sweep algorithm (scale ``2^shift`` put back)."""
    exact = exact_fn(TTM._trusted(ac), TT._trusted(xc))
    with warnings.catch_warnings():  # a binding max_rank is reported by matvec with the whole bound
        warnings.simplefilter("ignore", RankCapWarning)
        result, bound = round_fn(exact, eps=eps, max_rank=spec, return_error=True)
    return TT._trusted(_pow2.restore(list(result.cores), shift, at=-1)), bound


def _frame(
    a: list[Array], x: list[Array], grams: list[Array], gexp: list[int], rank: int
) -> tuple[list[Array], float, float]:
    """The frame cores of sketch rank ``rank`` with the exact last core; the certified error and its allowance.

    Both are squared and on the scale of ``grams[0]`` (that of ``||A x||^2``).
    """
    d = len(a)
    xp = B.namespace(*a, *x)
    u = B.finfo_eps(a[0])
    sketches = _sketches(a, x, rank, seed=12345 + rank)
    env = xp.ones((1, 1, 1), dtype=a[0].dtype, device=B.device(a[0]))
    e_env = 0  # C_k's power-of-two scale
    cores, error2, allowance2 = [], 0.0, 0.0
    for k in range(d):
        projected = einsum("qac,aijb,cjd->qibd", env, a[k], x[k])  # Ct_k
        q_, m, big_r, r = (int(s) for s in projected.shape)
        mat = xp.reshape(projected, (q_ * m, big_r * r))
        if k == d - 1:
            cores.append(B.scale_pow2(xp.reshape(mat, (q_, m, 1)), e_env))
            break
        sketch = xp.matmul(mat, xp.reshape(xp.permute_dims(sketches[k + 1], (1, 2, 0)), (big_r * r, -1)))
        basis, _ = xp.linalg.qr(sketch)
        coef = xp.matmul(_conj(xp.permute_dims(basis, (1, 0))), mat)
        rest = mat - xp.matmul(basis, coef)  # E_k, formed before squaring
        gram = xp.reshape(grams[k + 1], (big_r * r, big_r * r))
        term = einsum("qx,xy,qy->", rest, gram, _conj(rest))
        scale = 2.0 ** (2 * e_env + gexp[k + 1] - gexp[0])
        size_c, size_e = B.to_float(xp.linalg.vector_norm(mat)), B.to_float(xp.linalg.vector_norm(rest))
        size_g = B.to_float(xp.linalg.vector_norm(gram))
        slack = 10.0 * math.sqrt(q_ * m + big_r * r) * u
        error2 += max(B.to_float(xp.real(term)), 0.0) * scale
        allowance2 += (
            (2 * slack * size_c * size_e + (slack * size_c) ** 2 + 4 * d * u * size_e**2) * size_g * scale
        )
        cores.append(xp.reshape(basis, (q_, m, int(basis.shape[1]))))
        env, e = _normalized(xp.reshape(coef, (int(basis.shape[1]), big_r, r)))
        e_env += e
    return cores, error2, allowance2
