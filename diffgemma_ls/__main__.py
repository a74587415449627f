"""``python -m diffgemma_ls`` is the ``diffgemma-ls`` command."""

import sys

from diffgemma_ls.cli import main

sys.exit(main())
