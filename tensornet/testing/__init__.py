"""Testing helpers for tensornet users: :func:`assert_allclose` and hypothesis strategies.

Trains are compared in TT form; the strategies are in :mod:`tensornet.testing.strategies`.

Importing this package needs ``hypothesis`` (the ``test`` extra).
"""

from . import strategies
from ._assert import assert_allclose

__all__ = ["assert_allclose", "strategies"]
