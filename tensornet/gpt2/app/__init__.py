"""The application over the GPT-2 adapter: ``python -m tensornet.gpt2 {compare,train,compress,eval}``.

The training loop (``train``, ``evaluate``, ``TrainConfig``), resumable checkpoints, the corpus and tokenizer
caches, run folders and figures, built on the adapter's (:mod:`tensornet.gpt2`) and ``tensornet.nn``'s public
names only; ``tensornet.gpt2`` re-exports the loop and the corpus helpers. Nothing is imported until used, so
``--help`` answers without loading torch.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``python -m tensornet.gpt2`` with the arguments ``argv`` (default: ``sys.argv``).

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name, e.g. ``["train", "--steps", "10"]``.

    Returns
    -------
    int
        The exit status: 0 on success, 2 for an error found while working (a damaged file, a diverged run:
        ``error: ...`` on one line), 130 after Ctrl-C.

    Raises
    ------
    SystemExit
        Status 2 for a usage error (a flag out of range, a missing file), found before any work; status 0
        after ``--help``.
    """
    from ._cli import main as run

    return run(argv)
