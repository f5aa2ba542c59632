"""`python -m services`: the local all-in-one platform (see services/platform.py)."""

import sys

from services.platform import main

sys.exit(main())
