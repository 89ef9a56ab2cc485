"""Testing helpers for tensornet users: hypothesis strategies in :mod:`tensornet.testing.strategies`.

Importing this package needs ``hypothesis`` (the ``test`` extra).
"""

from . import strategies

__all__ = ["strategies"]
