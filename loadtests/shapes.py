"""Step load: add users in equal steps, hold each step, then stop at the run time.

Each plateau shows the latency and throughput the deployment sustains at that many concurrent
users (and, on Kubernetes, how far the HPA scaled out for it). Configured from the usual options:
`--users` is the last step's user count, `--run-time` the whole test (or, with `--answers`,
`--min-run-time`: the last step then holds until the answers are in or `--run-time` ends it), and
`LOADTEST_STEPS` (default 5) how many steps lead there.
"""

import math
import os

from locust import LoadTestShape


class StepLoadShape(LoadTestShape):
    use_common_options = True  # --users, --spawn-rate and --run-time configure the shape

    def tick(self):
        options = self.runner.environment.parsed_options
        users = max(1, options.num_users or 1)
        end = options.run_time or 300
        duration = (options.answers and options.min_run_time) or end
        steps = max(1, min(users, int(os.environ.get("LOADTEST_STEPS", "5"))))
        run_time = self.get_run_time()
        if run_time >= end:
            return None
        step = min(steps, math.floor(run_time / (duration / steps)) + 1)
        return math.ceil(users * step / steps), options.spawn_rate or users
