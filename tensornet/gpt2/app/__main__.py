"""``python -m tensornet.gpt2.app``: the same command line as ``python -m tensornet.gpt2``."""

import sys

from ._cli import main

sys.exit(main())
