"""The public solvers: :func:`solve` (AMEn) and :func:`eigsh` (block AMEn / DMRG)."""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np

from .. import _backend as B
from .. import _checks, _pow2
from .._backend import Array
from .._train_checks import promoted
from ..construct import zeros
from ..decomp import orthogonalize
from ..ops import norm, scale
from ..random import random_tt
from ..tt import TT, TTM
from . import _eig, _solve
from ._checks import asymmetry, check_square, check_tol, check_vector, symmetric_tolerance
from ._eig import EigInfo
from ._ops import Ops
from ._solve import SolveInfo

KICK = 4  # rank of the residual train Z and of each enrichment in solve (TT-Toolbox's kickrank)
EIG_KICK = 16  # eigsh: Z's rank and the largest enrichment (min(16, max(4, rank)) columns at a bond)


@overload
def solve(
    A: TTM,
    b: TT,
    *,
    tol: float = ...,
    x0: TT | None = ...,
    max_rank: int | None = ...,
    max_sweeps: int = ...,
    return_info: Literal[False] = ...,
) -> TT: ...
@overload
def solve(
    A: TTM,
    b: TT,
    *,
    tol: float = ...,
    x0: TT | None = ...,
    max_rank: int | None = ...,
    max_sweeps: int = ...,
    return_info: Literal[True],
) -> tuple[TT, SolveInfo]: ...
@B.exact
def solve(
    A: TTM,
    b: TT,
    *,
    tol: float = 1e-8,
    x0: TT | None = None,
    max_rank: int | None = None,
    max_sweeps: int = 50,
    return_info: bool = False,
) -> TT | tuple[TT, SolveInfo]:
    """Solve ``A x = b`` in TT form by AMEn (alternating minimal energy with residual enrichment).

    Parameters
    ----------
    A : TTM
        Square (``row_shape == col_shape``), symmetric or not, real or complex (float32/float64 and their
        complex kinds).
    b : TT
        Shape ``A.row_shape``, on A's backend and device, of A's precision. A real operand with a complex one
        is converted to the complex dtype (as the algebra promotes), and so is x.
    tol : float
        Relative residual to reach, ``0 < tol < 1``: ``||A x - b||_F <= tol ||b||_F``.
    x0 : TT, optional
        Initial guess (its ranks are the starting ranks); default a fixed random train of rank 2.
    max_rank : int, optional
        Cap on every rank of x (and of the enrichment).
    max_sweeps : int
        Most passes (one pass is one sweep over the cores in one direction).
    return_info : bool
        Also return a :class:`SolveInfo` (residual per pass, ranks, local solve counts, time).

    Returns
    -------
    TT, or (TT, SolveInfo) with ``return_info``

    Raises
    ------
    TypeError
        A not a TTM, b or x0 not a TT, different backends or precisions, bad option types.
    ValueError
        A not square, shapes that disagree, NaN/inf entries, ``tol`` outside (0, 1), ``max_rank`` or
        ``max_sweeps`` < 1.

    Warns
    -----
    ConvergenceWarning
        ``tol`` was not met; the message gives the residual reached and why: the residual stagnated
        (it fell less than 2x over 3 passes, typically because tol is below ``cond(A) u``, what rounding
        allows), ``max_rank`` capped the ranks, or ``max_sweeps`` ran out. The best iterate is returned.

    Notes
    -----
    Unless a :class:`~tensornet.ConvergenceWarning` is issued, ``||A x - b|| <= tol ||b||``, checked in TT form
    after every pass (``A x - b`` as a train of rank ``R r + r_b``, its norm by a QR sweep).

    Sweeps (Dolgov & Savostyanov 2014): with the cores left of core k left-orthonormal and those right of
    it right-orthonormal (frames ``X_{<k}, X_{>k}``), core k solves the Galerkin system
    ``(X_{!=k}^T A X_{!=k}) u = X_{!=k}^T b`` (the minimal-energy condition for SPD A). Its unfolding is
    truncated to the smallest rank whose local residual stays within ``tol / sqrt(d) ||b||`` (the rank is
    chosen by the residual, not by the Frobenius norm of u, so an ill-conditioned A keeps what it needs),
    then enriched with the residual projected on ``X_{<k}`` and the right frame of a rank-4 train Z that
    tracks the residual (refitted at every step); this lets ranks grow and avoids the stalls of ALS.
    Local systems of up to 400 unknowns (the measured crossover) are solved by LU on the assembled matrix; larger ones by CG
    (symmetric A: ``||A - A^T|| <= sqrt(u) ||A||``) or GMRES(40), the local operator applied in factored
    form (three GEMMs) and preconditioned by the inverse of its Kronecker-sum part (exact for
    Laplacian-like sums; see :mod:`tensornet.linalg`). Early passes solve loosely (to 5% of the current
    residual): the frames will change.

    Cost: per pass ``O(d (R r^3 n + R^2 r^2 n^2) k)`` for k Krylov iterations (``O(d r^6 n^3)`` for the
    dense local solves), plus ``O(d n (R r + r_b)^3)`` for the residual check.
    """
    fn = "solve"
    a = check_square(fn, A)
    b = check_vector(fn, "b", b, a)
    tol = check_tol(fn, tol)
    if x0 is not None:
        x0 = check_vector(fn, "x0", x0, a)
    max_rank = _checks.check_count(fn, "max_rank", max_rank, optional=True)
    max_sweeps = _checks.check_count(fn, "max_sweeps", max_sweeps)
    return_info = _checks.check_flag(fn, "return_info", return_info)
    # a real operand with a complex one: all in the complex dtype (the sweeps work in A's)
    a, b, *start = promoted(a, b, *([] if x0 is None else [x0]))
    x0 = start[0] if start else None
    if _needs_graph(*a.cores, *b.cores):
        holder: dict[str, SolveInfo] = {}

        def run(a_detached: TTM, b_detached: TT) -> TT:
            x, holder["info"] = _solve_scaled(
                a_detached, b_detached, _detached(x0), tol, max_rank, max_sweeps
            )
            return x

        x = importlib.import_module("tensornet.linalg._torch").solve(a, b, tol, run)
        info = holder["info"]
    else:
        x, info = _solve_scaled(a, b, x0, tol, max_rank, max_sweeps)
    _solve.warn_unconverged(info, tol, max_sweeps)
    return (x, info) if return_info else x


def _needs_graph(*cores: Array) -> bool:
    """Whether torch is recording and some core requires grad (then the autograd binding is used)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.is_grad_enabled():
        return False
    return any(bool(getattr(c, "requires_grad", False)) for c in cores)


def _detached(t: TT | None) -> TT | None:
    return None if t is None else TT._trusted([B.detach(c) for c in t.cores])


def _solve_scaled(
    a: TTM, b: TT, x0: TT | None, tol: float, max_rank: int | None, max_sweeps: int
) -> tuple[TT, SolveInfo]:
    """:func:`solve` on A and b divided by powers of two (exact), the scale put back on x."""
    fn = "solve"
    w, ea = _pow2.normalize_cores(fn, list(a.cores))
    bc, eb = _pow2.normalize_cores(fn, list(b.cores))
    a_hat, b_hat = TTM._trusted(w), TT._trusted(bc)
    ops = Ops(w[0])
    if B.max_abs(bc[0]) == 0.0 or any(B.max_abs(c) == 0.0 for c in bc):
        return zeros(a.col_shape, like=b), SolveInfo(residual=0.0, converged=True)
    symmetric = asymmetry(a_hat) <= symmetric_tolerance(a_hat)
    start = _initial(a_hat, b_hat, x0, eb - ea)
    z0 = orthogonalize(random_tt(a.col_shape, KICK, seed=1, like=b), center=0)
    x, info = _solve.run(
        ops, a_hat, b_hat, start, z0, tol=tol, max_rank=max_rank, max_sweeps=max_sweeps, symmetric=symmetric,
        kick=KICK,
    )  # fmt: skip
    return TT._trusted(_pow2.restore(list(x.cores), eb - ea, at=0)), info


def _initial(a: TTM, b: TT, x0: TT | None, shift: int) -> TT:
    """The starting train, right-orthonormal from core 1 on, on the scale of the normalised system."""
    if x0 is not None and all(B.max_abs(c) > 0.0 for c in x0.cores):
        cores = _pow2.restore(list(x0.cores), -shift, at=0) if shift else list(x0.cores)
        return orthogonalize(TT._trusted(cores), center=0)
    return orthogonalize(scale(random_tt(a.col_shape, 2, seed=0, like=b), 1.0), center=0)


@overload
def eigsh(
    A: TTM,
    k: int = ...,
    *,
    which: Literal["SA", "LA"] = ...,
    tol: float = ...,
    x0: TT | Sequence[TT] | None = ...,
    max_rank: int | None = ...,
    max_sweeps: int = ...,
    return_info: Literal[False] = ...,
) -> tuple[Array, list[TT]]: ...
@overload
def eigsh(
    A: TTM,
    k: int = ...,
    *,
    which: Literal["SA", "LA"] = ...,
    tol: float = ...,
    x0: TT | Sequence[TT] | None = ...,
    max_rank: int | None = ...,
    max_sweeps: int = ...,
    return_info: Literal[True],
) -> tuple[Array, list[TT], EigInfo]: ...
@B.exact
def eigsh(
    A: TTM,
    k: int = 1,
    *,
    which: Literal["SA", "LA"] = "SA",
    tol: float = 1e-10,
    x0: TT | Sequence[TT] | None = None,
    max_rank: int | None = None,
    max_sweeps: int = 50,
    return_info: bool = False,
) -> tuple[Array, list[TT]] | tuple[Array, list[TT], EigInfo]:
    """The k smallest (or largest) eigenpairs of a symmetric TTM by block AMEn (one-core DMRG with enrichment).

    Parameters
    ----------
    A : TTM
        Square and symmetric (``||A - A^T||_F <= sqrt(u) ||A||_F``), float32/float64.
    k : int
        Number of eigenpairs, ``1 <= k <= prod(A.row_shape)`` (up to ~10 is the intended use).
    which : "SA" or "LA"
        Smallest algebraic (default) or largest algebraic eigenvalues.
    tol : float
        Relative accuracy of the values, ``0 < tol < 1``: relative to ``max(max_i |lambda_i|, ||A||_F /
        sqrt(N))`` (the second is the RMS eigenvalue, which sets the scale when the wanted values are near 0).
    x0 : TT or sequence of k TTs, optional
        Initial vectors; default a fixed random block of rank ``max(4, k)``.
    max_rank, max_sweeps, return_info
        As :func:`solve` (the info is an :class:`EigInfo`).

    Returns
    -------
    values : 1-D array of k reals, ascending, on A's backend (a torch tensor for torch cores)
    vectors : list of k TTs
        Orthonormal (``<v_i, v_j> = delta_ij`` to working precision); each is the block's shared frames
        rounded at ``100 u`` (only the directions it does not use are dropped), so its ranks can exceed its
        own; round with :func:`tensornet.round` and an eps for smaller ones.
    info : EigInfo, with ``return_info``

    Raises
    ------
    TypeError
        A not a TTM, bad option types, an x0 that is not TTs.
    ValueError
        A not square or not symmetric, ``k < 1`` or larger than the dimension, ``which`` not "SA"/"LA",
        ``tol`` outside (0, 1), x0 of the wrong count or shape.

    Warns
    -----
    ConvergenceWarning
        The values had not settled after ``max_sweeps`` passes.

    Notes
    -----
    The k vectors share every core but the centre, which carries the block index (block TT format,
    Dolgov, Khoromskij, Oseledets & Savostyanov 2014). At core k the Rayleigh-Ritz problem
    ``(X_{!=k}^T A X_{!=k}) U = U Theta`` (the local operator applied in factored form) is solved by a
    dense ``eigh`` up to 128 unknowns and by a restarted block Krylov method from the current centre
    above; the centre's ``(r n, r' k)`` unfolding is truncated to the fewest singular values whose
    discarded root-sum-square is at most ``sqrt(tol / (d - 1)) ||U||_F`` (an eigenvalue moves by the square of
    a perturbation of its vector; the singular values come from the small Gram matrix where that threshold
    is far above its rounding), and enriched as in :func:`solve` by the block residual ``A U - U Theta``
    projected on a residual train of rank 16 (``min(16, max(4, r))`` new columns at a bond of rank r, so
    ranks can double per pass). Once no bond is limited by that growth the enrichment stops (one-core DMRG,
    as DMRG3S turns its expansion off). Local eigenproblems of a positive definite A use the
    Kronecker-sum preconditioner (Davidson); of others, Lanczos (k = 1) or block Krylov. Stops when the values
    change by at most ``tol * scale`` over a pass and every centre met its local problem with a residual
    below ``sqrt(tol) scale`` (scale as for ``tol``).

    Cost: per pass ``O(d k (R r^3 n + R^2 r^2 n^2) m)`` for m Krylov steps per centre.
    """
    fn = "eigsh"
    a = check_square(fn, A)
    k = _checks.check_count(fn, "k", k)
    dimension = math.prod(a.row_shape)
    if k > dimension:
        raise ValueError(
            f"eigsh: k = {k} exceeds the dimension of A, {dimension}; ask for at most {dimension}"
        )
    if not isinstance(which, str) or which not in ("SA", "LA"):
        raise ValueError(f"eigsh: which must be 'SA' (smallest) or 'LA' (largest), got {which!r}")
    tol = check_tol(fn, tol)
    vectors = _check_x0(a, x0, k)
    if vectors is not None:  # a real A with complex starts: A as complex (Hermitian), so the sweeps keep them
        a, *vectors = promoted(a, *vectors)
    max_rank = _checks.check_count(fn, "max_rank", max_rank, optional=True)
    max_sweeps = _checks.check_count(fn, "max_sweeps", max_sweeps)
    return_info = _checks.check_flag(fn, "return_info", return_info)
    _pow2.normalize_cores(fn, list(a.cores))  # the NaN/inf check, before any work (_eigsh_run scales A)
    skew = asymmetry(a)
    if skew > symmetric_tolerance(a):
        kind, adjoint = ("Hermitian", "A^H") if B.is_complex(a.cores[0]) else ("symmetric", "A^T")
        raise ValueError(
            f"eigsh: A is not {kind}: ||A - {adjoint}||_F = {skew:.3g} ||A||_F (tolerance "
            f"{symmetric_tolerance(a):.2g}); eigsh is for symmetric (Hermitian) operators, e.g. (A + {adjoint}) / 2"
        )

    def run(operator: TTM) -> tuple[Array, list[TT], EigInfo]:
        return _eigsh_run(operator, k, which, tol, vectors, max_rank, max_sweeps)

    if _needs_graph(*a.cores):
        result, ordered, info = importlib.import_module("tensornet.linalg._torch").eig_values(a, run)
    else:
        result, ordered, info = run(a)
    _eig.warn_unconverged(info, tol, max_sweeps)
    return (result, ordered, info) if return_info else (result, ordered)


def _eigsh_run(
    a: TTM,
    k: int,
    which: str,
    tol: float,
    vectors: list[TT] | None,
    max_rank: int | None,
    max_sweeps: int,
) -> tuple[Array, list[TT], EigInfo]:
    """:func:`eigsh` on checked arguments: ascending values on A's backend, their vectors, the info.

    A of extreme scale is divided by a power of two first (exact; eigenvectors unchanged, eigenvalues scaled
    back at the end), so the sweeps' products neither overflow nor underflow.
    """
    scaled, exponent = _pow2.normalize_cores("eigsh", list(a.cores))
    a = TTM._trusted(scaled)
    dimension = math.prod(a.row_shape)
    ops = Ops(a.cores[0])
    cores, center = _block(ops, a, None if vectors is None else [_detached(v) for v in vectors], k)  # type: ignore[misc]
    kick = EIG_KICK
    z0 = list(orthogonalize(random_tt(a.col_shape, kick, seed=1, like=a.cores[0]), center=0).cores)
    size = B.to_float(norm(a))
    scale = size / math.sqrt(float(dimension)) if size > 0 else 1.0
    values, vecs, info = _eig.run(
        ops, a, cores, center, z0, tol=tol, scale=scale, largest=which == "LA", max_rank=max_rank,
        max_sweeps=max_sweeps, kick=kick,
    )  # fmt: skip
    order = np.argsort(values, kind="stable")
    return ops.real_asarray(np.ldexp(values[order], exponent)), [vecs[i] for i in order], info


def _check_x0(a: TTM, x0: Any, k: int) -> list[TT] | None:
    if x0 is None:
        return None
    vectors = [x0] if isinstance(x0, TT) else x0
    if not isinstance(vectors, Sequence) or isinstance(vectors, str):
        raise TypeError(f"eigsh: x0 must be a TT or a sequence of {k} TTs, got {type(x0).__name__}")
    if len(vectors) != k:
        raise ValueError(
            f"eigsh: x0 has {len(vectors)} vectors but k = {k}; give one initial TT per eigenpair"
        )
    return [check_vector("eigsh", f"x0[{i}]", v, a) for i, v in enumerate(vectors)]


def _block(ops: Ops, a: TTM, vectors: list[TT] | None, k: int) -> tuple[list[Array], Array]:
    """The initial block: shared cores right-orthonormal from core 1 on, and the centre (1, n, r, k)."""
    if vectors is None:
        rank = max(KICK, k)
        x = orthogonalize(random_tt(a.col_shape, rank, seed=0, like=a.cores[0]), center=0)
        cores = list(x.cores)
        r1 = int(cores[0].shape[2])
        rng = np.random.default_rng(0)
        return cores, ops.asarray(rng.standard_normal((1, int(cores[0].shape[1]), r1, k)))
    return block_cores(ops, [list(v.cores) for v in vectors])


def block_cores(ops: Ops, trains: list[list[Array]]) -> tuple[list[Array], Array]:
    """K trains as one block train: the sum structure with the block index on core 0, right-orthonormalised."""
    d, k = len(trains[0]), len(trains)
    if d == 1:
        return [trains[0][0]], ops.concat([ops.reshape(t[0], (1, -1, 1, 1)) for t in trains], axis=3)
    shared: list[Array] = []
    for j in range(1, d):
        if j == d - 1:
            shared.append(ops.concat([t[j] for t in trains], axis=0))
            continue
        cols = sum(int(t[j].shape[2]) for t in trains)
        n = int(trains[0][j].shape[1])
        c0, pieces = 0, []
        for t in trains:
            r, _, c = (int(v) for v in t[j].shape)
            pieces.append(ops.concat([ops.zeros((r, n, c0)), t[j], ops.zeros((r, n, cols - c0 - c))], axis=2))
            c0 += c
        shared.append(ops.concat(pieces, axis=0))
    width = sum(int(t[0].shape[2]) for t in trains)
    n0 = int(trains[0][0].shape[1])
    columns, offset = [], 0
    for t in trains:
        c = int(t[0].shape[2])
        padded = ops.concat(
            [ops.zeros((1, n0, offset)), t[0], ops.zeros((1, n0, width - offset - c))], axis=2
        )
        columns.append(ops.reshape(padded, (1, n0, width, 1)))
        offset += c
    center = ops.concat(columns, axis=3)
    for j in range(d - 1, 0, -1):  # right-orthonormalise the shared cores, carrying R into the previous core
        r, n, r2 = (int(v) for v in shared[j - 1].shape)
        q, rr = ops.qr(ops.H(ops.reshape(shared[j - 1], (r, n * r2))))
        shared[j - 1] = ops.reshape(ops.H(q), (int(q.shape[1]), n, r2))
        carry = ops.H(rr)  # (r, r')
        if j > 1:
            prev = shared[j - 2]
            pr, pn, _ = (int(v) for v in prev.shape)
            shared[j - 2] = ops.reshape(ops.mm(ops.reshape(prev, (pr * pn, r)), carry), (pr, pn, -1))
        else:
            c1 = ops.permute(center, (0, 1, 3, 2))  # (1, n0, k, width)
            c1 = ops.mm(ops.reshape(c1, (n0 * k, r)), carry)
            center = ops.permute(ops.reshape(c1, (1, n0, k, -1)), (0, 1, 3, 2))
    return [ops.reshape(center[..., 0], tuple(int(v) for v in center.shape[:3])), *shared], center
