"""`python -m vidrec ...` is the `vidrec` command."""

import sys

from vidrec.cli import main

sys.exit(main())
