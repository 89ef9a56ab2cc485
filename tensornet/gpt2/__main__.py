"""``python -m tensornet.gpt2``: run the command line and exit with its status."""

from .app._cli import main

raise SystemExit(main())
