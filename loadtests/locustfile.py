"""Locust entry point: `locust -f loadtests/locustfile.py --host http://HOST:8000 [UserClass ...]`.

Without user classes named on the command line every user below runs, weighted: the mixed-traffic
scenario. `make loadtest` (loadtests/run.py) picks the classes for SERVICE and PROTOCOL, fixes the
users per class (LOADTEST_USER_COUNTS="TranslationRestUser=4,..."), and sets LOADTEST_SHAPE=step
for the step-load shape.
"""

import os
import sys
from pathlib import Path

# Locust imports this file by path; make the repository's packages importable however it was started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests import users  # noqa: E402
from loadtests.users import *  # noqa: E402, F403  (Locust collects the user classes from this module)

for entry in filter(None, os.environ.get("LOADTEST_USER_COUNTS", "").split(",")):
    class_name, count = entry.split("=")
    getattr(users, class_name).fixed_count = int(count)

if os.environ.get("LOADTEST_SHAPE") == "step":
    from loadtests.shapes import StepLoadShape  # noqa: E402, F401
