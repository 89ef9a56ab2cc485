"""The rank search of :func:`tensornet.complete`: sweeps at growing ranks judged on held-back samples (private).

A stage sweeps ALS (:mod:`._als`) at fixed ranks until the fitting error stalls; where ALS crawls, Gauss-Newton
steps on all cores (:mod:`._gauss_newton`) finish the stage; then every bond grows by one direction (AMEn-style
enrichment) and the next stage starts from there. The model with the smallest held-back error is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import _backend as B
from .._backend import Array
from . import _als, _gauss_newton

__all__ = ["UNINFORMED", "Search", "Step", "relative_error"]

_SLOW = 0.9  # a stage ends once three sweeps improve the fitting error by less than 10%
_GAIN = 0.9  # a rank step counts as progress when it takes the held-back error below 0.9x the best
_PATIENCE = 2  # rank steps in a row without progress end the search
UNINFORMED = 0.9  # while the best held-back error is above this (nothing learnt yet), patience is longer
_UNINFORMED_PATIENCE = 4
_PATIENT_SWEEPS = 15
_STAGE_SWEEPS = 60  # at most this many sweeps at one set of ranks
_START_SWEEPS = 4  # sweeps given to each candidate start
_REFIT_SWEEPS = 20  # sweeps on all samples at the chosen ranks
_SWAMP = 0.99  # a stage that ends slow while its last sweep still gained 1% is crawling: Gauss-Newton steps
_NEWTON_GAIN = 0.9  # Gauss-Newton steps go on while two of them take the fitting error below 0.9x
_NEWTON_STEPS = 8  # at most this many Gauss-Newton steps a stage


@dataclass(frozen=True)
class Step:
    """One sweep: its number, the ranks, the relative error on the fitted and on the held-back samples."""

    sweep: int
    ranks: tuple[int, ...]
    train_error: float
    validation_error: float | None
    phase: str  # "search" (held-back samples unseen) or "refit" (all samples, at the chosen ranks)


def relative_error(predicted: Array, samples: _als.Samples) -> float:
    xp = B.namespace(predicted)
    w = samples.root_weights
    top = B.to_float(xp.linalg.vector_norm(w * (predicted - samples.values)))
    bottom = B.to_float(xp.linalg.vector_norm(w * samples.values))
    return top / bottom if bottom > 0 else top


class Search:
    """Sweeps at growing ranks, keeping the model with the smallest held-back error."""

    def __init__(
        self,
        fit: _als.Samples,
        held: _als.Samples | None,
        caps: list[int | None],
        eps: float | None,
        budget: int,
        shape: tuple[int, ...],
    ) -> None:
        self.fit, self.held, self.caps, self.eps, self.budget = fit, held, caps, eps, budget
        self.informed = False  # set when the search starts from the user's x0
        self.shape = shape
        self.steps: list[Step] = []
        self.pairs: _gauss_newton.PairLayouts | None = None  # built on the first Gauss-Newton step
        self.paired = False  # whether that was tried (None: too much padding for Gauss-Newton steps)
        self.floor = 10.0 * B.finfo_eps(fit.values)
        # without eps, a held-back error this small ends the search: sqrt(u) / 10 is 1.5e-9 in float64
        self.exact = math.sqrt(B.finfo_eps(fit.values)) / 10 if eps is None else self.floor

    def held_error(self, cores: list[Array]) -> float:
        """The held-back error of ``cores`` (the fitting error without held-back samples), unrecorded."""
        samples = self.fit if self.held is None else self.held
        return relative_error(_als.evaluate(cores, samples.index), samples)

    def _measure(self, cores: list[Array], predicted: Array, phase: str, held: bool = True) -> float:
        train = relative_error(predicted, self.fit)
        check = None
        if held and self.held is not None:
            check = relative_error(_als.evaluate(cores, self.held.index), self.held)
        ranks = (1, *(int(c.shape[2]) for c in cores))
        self.steps.append(Step(len(self.steps) + 1, ranks, train, check, phase))
        return train if check is None else check

    def stage(
        self, cores: list[Array], patient: bool = False
    ) -> tuple[float, list[Array] | None, list[Array]]:
        """Sweeps at fixed ranks; ``(best error, its cores, last cores)`` (best by held-back error).

        ``patient``: nothing learnt yet, so at least ``_PATIENT_SWEEPS`` sweeps before the slow-progress rule
        (from an uninformed start, ALS can crawl for a while before it finds the structure).
        """
        rights = _als.right_interfaces(cores, self.fit)
        best: tuple[float, list[Array] | None] = (math.inf, None)
        fitted: list[float] = []
        last = relative_error(_als.evaluate(cores, self.fit.index), self.fit)
        for _ in range(_STAGE_SWEEPS):
            if len(self.steps) >= self.budget:
                break
            before = cores
            cores, rights, predicted = _als.sweep(cores, rights, self.fit)
            error = self._measure(cores, predicted, "search")
            fitted.append(self.steps[-1].train_error)
            if self._broke_down(last, fitted[-1]):  # undone: the stage keeps its best, else its start
                return (*best, before) if best[1] is not None else (self.held_error(before), before, before)
            last = fitted[-1]
            if error < best[0]:
                best = (error, list(cores))
            if self._met(error):
                break  # the search stops here (``_stop``): sweeping on is wasted
            slow = len(fitted) > max(3, _PATIENT_SWEEPS if patient else 0) and fitted[-1] > _SLOW * fitted[-4]
            if fitted[-1] <= self.floor or slow:
                if slow and fitted[-1] < _SWAMP * fitted[-2]:
                    best, cores = self.newton(cores, best)
                break
        return best[0], best[1], cores

    def newton(
        self, cores: list[Array], best: tuple[float, list[Array] | None]
    ) -> tuple[tuple[float, list[Array] | None], list[Array]]:
        """Gauss-Newton steps on all cores (``_gauss_newton``) where ALS crawls; the best and the last cores.

        Only for at most ``MAX_UNKNOWNS`` unknowns; at most ``_NEWTON_STEPS``, while two steps together gain
        10%, within the sweep budget (each step counts as a sweep).
        """
        if _gauss_newton.unknowns(cores) > _gauss_newton.MAX_UNKNOWNS:
            return best, cores
        if not self.paired:
            self.pairs, self.paired = _gauss_newton.pair_layouts(self.fit, self.shape), True
        if self.pairs is None:
            return best, cores
        fitted = [self.steps[-1].train_error]
        found = [best]

        def accept(moved: list[Array], predicted: Array) -> bool:
            error = self._measure(moved, predicted, "search")
            fitted.append(self.steps[-1].train_error)
            if error < found[0][0]:
                found[0] = (error, list(moved))
            gained = len(fitted) < 3 or fitted[-1] < _NEWTON_GAIN * fitted[-3]
            return (
                gained
                and not self._met(error)
                and fitted[-1] > self.floor
                and len(fitted) <= _NEWTON_STEPS
                and len(self.steps) < self.budget
            )

        cores = _gauss_newton.levenberg_marquardt(cores, self.fit, self.pairs, accept)
        return found[0], cores

    def start(self, candidates: list[list[Array]]) -> list[Array]:
        """The candidate whose few sweeps fit best (rank-1 sweeps cost ``O(k d)``: trying several is cheap)."""
        best: tuple[float, list[Array]] = (math.inf, candidates[0])
        for cores in candidates:
            cores = _als.orthogonalize_right(cores)
            rights = _als.right_interfaces(cores, self.fit)
            for _ in range(_START_SWEEPS):
                cores, rights, predicted = _als.sweep(cores, rights, self.fit)
            error = relative_error(predicted, self.fit)
            if error < best[0]:
                best = (error, cores)
        return best[1]

    def grow(self, cores: list[Array]) -> list[Array] | None:
        """Every bond one rank higher where the caps, useful ranks and sample counts allow (None: none can)."""
        d = len(cores)
        ranks = [1, *(int(c.shape[2]) for c in cores)]
        per_slice = [self.fit.count / n for n in self.shape]  # samples per slice of each mode
        grow = []
        for k in range(1, d):
            r = ranks[k] + 1
            useful = min(math.prod(self.shape[:k]), math.prod(self.shape[k:]))
            cap = self.caps[k - 1]
            fits = ranks[k - 1] * r <= per_slice[k - 1] and r * ranks[k + 1] <= per_slice[k]
            grow.append(r <= useful and (cap is None or r <= cap) and fits)
        if not any(grow):
            return None
        grown = _als.growth_sweep(cores, self.fit, grow)
        return grown if [int(c.shape[2]) for c in grown] != ranks[1:] else None

    def run(self, cores: list[Array]) -> tuple[float, list[Array], str]:
        """The rank search: stages at growing ranks until the held-back error stops falling (or a limit)."""
        best: tuple[float, list[Array]] = (math.inf, cores)
        if self.informed:  # the user's x0 is a candidate too: sweeps that only make it worse are not kept
            best = (self.held_error(cores), cores)
        stalls = 0
        while True:
            # an x0 (informed start) is not made to wait at its own ranks
            patient = best[0] >= UNINFORMED and (best[0] < math.inf or not self.informed)
            error, chosen, cores = self.stage(cores, patient=patient)
            if chosen is None:
                return best[0], best[1], "max_iter"
            progress = error < _GAIN * best[0]
            if error < best[0]:
                best = (error, chosen)
            stalls = 0 if progress else stalls + 1
            stop = self._stop(best[0], stalls)
            if stop is None:
                grown = self.grow(cores)
                stop = "max_rank" if grown is None else None
                cores = grown if grown is not None else cores
            if stop is not None:
                return best[0], best[1], stop

    def _broke_down(self, before: float, after: float) -> bool:
        """Whether the last sweep raised the fitting error (beyond rounding), which exact ALS never does.

        In floating point it can: directions of the cores that the samples barely see (Gram eigenvalues
        1e-60 of the largest) can grow each sweep until the predictions lose all precision. The sweep is
        then undone and the stage ends.
        """
        return after > 1.01 * before + self.floor

    def _met(self, error: float) -> bool:
        """Whether the held-back error meets the search's target (eps, or "exact" without it)."""
        return error <= self.exact or (self.eps is not None and error <= self.eps)

    def _stop(self, best: float, stalls: int) -> str | None:
        if self.eps is not None and best <= self.eps:
            return "eps"
        if best <= self.exact:
            return "exact"
        if len(self.steps) >= self.budget:
            return "max_iter"
        patience = _UNINFORMED_PATIENCE if best >= UNINFORMED else _PATIENCE
        return "validation" if stalls >= patience else None

    def refit(self, cores: list[Array], everything: _als.Samples) -> tuple[list[Array], float]:
        """Sweeps on all samples at the chosen ranks; the cores and their error on all samples."""
        self.fit = everything
        rights = _als.right_interfaces(cores, everything)
        fitted = [
            relative_error(_als.evaluate(cores, everything.index), everything)
        ]  # before the first sweep
        for _ in range(_REFIT_SWEEPS):
            before = cores
            cores, rights, predicted = _als.sweep(cores, rights, everything)
            fitted.append(self._measure(cores, predicted, "refit", held=False))
            if self._broke_down(fitted[-2], fitted[-1]):
                return before, fitted[-2]
            if fitted[-1] <= self.floor or (len(fitted) > 4 and fitted[-1] > _SLOW * fitted[-4]):
                break
        return cores, fitted[-1]
