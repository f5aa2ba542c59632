"""`python -m clients`: the modelserve command line (see clients/cli.py)."""

import sys

from .cli import main

sys.exit(main())
