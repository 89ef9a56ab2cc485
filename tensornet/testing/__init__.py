"""Testing helpers for tensornet users: trains compared, regauged and differentiated, and hypothesis strategies.

* :func:`assert_allclose`: two trains compared in TT form (never through the dense tensor);
* :func:`regauge`: the same tensor in other cores, for metamorphic properties (:func:`gauge_rtol` says how
  close they stay in floating point);
* :func:`check_vjp`, :func:`check_jvp`: reverse- and forward-mode derivatives of functions of trains
  against finite differences, in TT form, with a report naming the core and entry that disagree;
* :mod:`tensornet.testing.strategies`: hypothesis strategies for trains, shapes, ranks, backends, dtypes
  and gauge-equivalent trains, which shrink to small trains and print compactly.

Recipes: ``docs/testing.md``. Importing this package needs ``hypothesis`` (the ``test`` extra).
"""

from . import strategies
from ._assert import assert_allclose
from ._check import check_vjp
from ._gauge import gauge_rtol, regauge
from ._jvp import check_jvp
from ._report import Comparison, DerivativeReport

__all__ = [
    "Comparison",
    "DerivativeReport",
    "assert_allclose",
    "check_jvp",
    "check_vjp",
    "gauge_rtol",
    "regauge",
    "strategies",
]
