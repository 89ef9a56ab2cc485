"""``python -m tensornet.gpt2``: parse, check before any work, run the command; errors are one line, status 2."""

from __future__ import annotations

import sys
from pathlib import Path

from ._args import parser

__all__ = ["main", "parser"]


def _interrupted(args) -> str:
    """What Ctrl-C leaves behind, and how to go on."""
    if args.command == "compare":
        return "interrupted; compare keeps no partial results and cannot continue where it stopped: run the command again"
    if args.command != "train":
        return f"interrupted; {args.command} wrote nothing: run it again"
    from ._resume import CHECKPOINT

    if (Path(args.out) / CHECKPOINT).is_file():
        return "interrupted; the last checkpoint is intact: continue with the same command and --resume"
    return "interrupted before the first checkpoint; nothing to resume: run the same command again (without --resume) to start the run over"


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
        Status 2 for a usage error (a flag out of range, a missing file: ``error: ...`` on one line), found
        before any work; status 0 after ``--help``.
    """
    args = parser().parse_args(argv)
    try:
        from ._precheck import check

        check(args)  # every input, before any data is read or any folder created
    except (ValueError, OSError) as err:
        args._parser.error(str(err))
    from transformers.utils import logging as hf_logging

    from ._commands import COMMANDS

    hf_logging.disable_progress_bar()  # the CLI prints its own progress
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError, NotImplementedError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130
