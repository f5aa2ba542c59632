"""Locust entry point: `locust -f loadtests/locustfile.py --host http://HOST:8000 [UserClass ...]`.

Without user classes named on the command line every user below runs, weighted: the mixed-traffic
scenario. `make loadtest` (loadtests/run.py) picks the classes for SERVICE and PROTOCOL, fixes the
users per class (LOADTEST_USER_COUNTS="TranslationRestUser=4,..."), and sets LOADTEST_SHAPE=step
for the step-load shape.
"""

import importlib
import os
import sys
from pathlib import Path

# Locust imports this file by path; make the repository's packages importable however it was started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtests.scenario import PROTOCOLS, USER_MODULES, user_class  # noqa: E402

# Every declared service's users, from the module its registry entry names (Locust collects them here).
USERS = {
    user_class(service, protocol): getattr(importlib.import_module(module), user_class(service, protocol))
    for service, module in USER_MODULES.items()
    for protocol in PROTOCOLS
}
globals().update(USERS)

for entry in filter(None, os.environ.get("LOADTEST_USER_COUNTS", "").split(",")):
    class_name, count = entry.split("=")
    USERS[class_name].fixed_count = int(count)

if os.environ.get("LOADTEST_SHAPE") == "step":
    from loadtests.shapes import StepLoadShape  # noqa: E402, F401
