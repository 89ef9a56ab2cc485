"""``python -m tensornet.gpt2``: parse, check before any work, run the command; errors are one line, status 2."""

import sys
from pathlib import Path

from ._args import parser

__all__ = ["main", "parser"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``python -m tensornet.gpt2`` with the arguments ``argv`` (default: ``sys.argv``).

    Returns
    -------
    int
        0 on success, 2 for an error found while working (``error: ...`` on one line), 130 after Ctrl-C.

    Raises
    ------
    SystemExit
        2 for a usage error, found before any work (``error: ...`` on one line); 0 after ``--help``.
    """
    args = parser().parse_args(argv)
    from transformers.utils import logging as hf_logging  # (after parsing: --help needs no torch)

    from ._commands import COMMANDS
    from ._precheck import check
    from ._resume import CHECKPOINT

    try:
        check(args)  # every input, before any data is read or any folder created
    except (ValueError, OSError) as err:
        args._parser.error(str(err))
    hf_logging.disable_progress_bar()  # the CLI prints its own progress
    try:
        return COMMANDS[args.command](args)
    except (ValueError, OSError, NotImplementedError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        saved = args.command == "train" and (Path(args.out) / CHECKPOINT).is_file()
        said = "with --resume to continue from the last checkpoint" if saved else "again (nothing to resume)"
        print(f"interrupted; run the same command {said}", file=sys.stderr)
        return 130
