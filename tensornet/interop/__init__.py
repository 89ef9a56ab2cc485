"""Converters between tensornet trains and the peer libraries' objects.

Each converter imports its peer only when called (the ``interop`` extra installs them all). ``to_X(t)``
gives the peer an object it owns (copies of the cores; torch cores are cloned, so gradients still flow
back); ``from_X(x)`` wraps the peer's cores, validated as :class:`tensornet.TT` validates any cores.

.. list-table::
   :header-rows: 1

   * - peer
     - TT
     - TT-matrix (TTM)
     - complex
   * - torchTT
     - ``torchtt.TT``, cores ``(r, n, r')``
     - ``torchtt.TT``, cores ``(r, m, n, r')``
     - yes
   * - tntorch
     - ``tntorch.Tensor``, cores ``(r, n, r')`` (Tucker and CP converted)
     - ``tntorch.TTMatrix``, cores ``(r, i, o, r')``, rows over ``i`` (tensornet's ``m``)
     - held; its rounding assumes real data
   * - teneva
     - a ``list`` of numpy cores ``(r, n, r')``
     - none (a TT of merged ``m n`` modes)
     - held; its rounding assumes real data
   * - tensorly
     - ``TTTensor``, factors ``(r, n, r')``
     - ``TTMatrix``, factors ``(r, m, n, r')``
     - yes
   * - quimb
     - ``MatrixProductState``, arrays ``(l, r, p)`` (``'lrp'``), the end sites without their outer bond
     - ``MatrixProductOperator``, arrays ``(l, r, u, d)`` (``'lrud'``), upper ``u`` = rows ``m``
     - yes

tensornet's own layouts: TT core ``(r_{k-1}, n_k, r_k)``, TTM core ``(r_{k-1}, m_k, n_k, r_k)`` with the
row (output) mode before the column (input) mode, ``r_0 = r_d = 1``.
"""

from ._quimb import from_quimb, to_quimb
from ._teneva import from_teneva, to_teneva
from ._tensorly import from_tensorly, to_tensorly
from ._tntorch import from_tntorch, to_tntorch
from ._torchtt import from_torchtt, to_torchtt

__all__ = [
    "from_quimb",
    "from_teneva",
    "from_tensorly",
    "from_tntorch",
    "from_torchtt",
    "to_quimb",
    "to_teneva",
    "to_tensorly",
    "to_tntorch",
    "to_torchtt",
]
