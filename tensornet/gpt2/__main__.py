"""``python -m tensornet.gpt2``: run the command line and exit with its status."""

import sys

from .app._cli import main

sys.exit(main())
