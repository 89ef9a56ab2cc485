"""The bond report of a train (:func:`report`), its pictures (:func:`plot_spectra`) and HTML tables.

Public through :mod:`tensornet`: ``tn.report``, ``tn.BondReport``, ``tn.plot_spectra``, ``t.plot()`` and
the HTML ``repr`` of trains in notebooks. matplotlib is imported only when a picture is drawn.
"""

from ._plot import plot_spectra
from ._spectra import BondReport, report

__all__ = ["BondReport", "plot_spectra", "report"]
