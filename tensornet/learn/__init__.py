"""Learning trains from data, and reading them back: completion, optima, sampling.

* :func:`complete` -- TT completion / regression from sampled entries, ranks chosen by held-back error;
* :func:`argmax`, :func:`argmin` -- the largest and smallest entries of a train (exact for small trains,
  a maxvol-guided beam search otherwise);
* :func:`sample` -- indices drawn from the distribution proportional to a non-negative train (or to its
  square, the Born rule), by exact conditional marginals in TT form.

Why a subpackage of its own: these are applications of the core algebra, going from data to a train and
from a train to decisions, with their own state (sample layouts, search histories) and a few hundred lines
each; keeping them apart keeps the core small and lets them use only its public vocabulary (gather, sum,
round, orthogonalisation) plus the shared argument checks. Completion here does not need the Riemannian
floor (:mod:`tensornet.riemannian`): alternating least squares with rank continuation was measured to
reach the errors the issue asks for faster than Riemannian CG and Gauss-Newton sweeps on the same data
(``benchmarks/results/complete.md``); the Riemannian tools remain for users' own objectives. All four are
re-exported at the top level (``tn.complete``, ``tn.argmax``, ``tn.argmin``, ``tn.sample``).
"""

from __future__ import annotations

from ._complete import CompletionInfo, Step, complete
from ._optima import argmax, argmin
from ._sample import sample

__all__ = ["CompletionInfo", "Step", "argmax", "argmin", "complete", "sample"]
