"""`python -m genvl.cli`: the same as the `genvl` command."""

import sys

from genvl.cli import main

sys.exit(main())
