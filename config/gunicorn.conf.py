"""gunicorn settings for the web app: `gunicorn config.wsgi -c config/gunicorn.conf.py --workers 2
--threads 4 --bind …`.

Only what the app's workload asks for is set here; the layout (`--workers`, `--threads`) and the
bind address stay on the command line, per deployment. bench/queue.py serves the app with this
file too, so the bench measures what is deployed.
"""

import os
import sys

# The web processes' database sessions run without parallel workers (config/settings.py,
# DATABASE_PARALLEL_WORKERS): a curator page's count of a million judgments would otherwise take
# every core for its tens of milliseconds, and every rater's request with it. Set before the app
# is loaded; a value in the environment is kept.
os.environ.setdefault("DATABASE_PARALLEL_WORKERS", "0")

# A rater's browser comes back within seconds, after reading a task: keep its connection open
# meanwhile instead of opening one per task (gunicorn's default closes it after 2 s).
keepalive = 30

# Python's switch interval in the workers, in seconds (GUNICORN_SWITCH_INTERVAL; Python's 5 ms by
# default). A thread back from a PostgreSQL round trip may wait up to this long for the GIL
# behind a busy thread, and a request makes about a dozen round trips; in the queue bench
# (`--switch-interval`) 1 ms and 0.5 ms did not lower the latency: the time a request spends in
# gunicorn is its CPU time plus the time its threads and its PostgreSQL backend wait for a core.
switch_interval = float(os.environ.get("GUNICORN_SWITCH_INTERVAL") or sys.getswitchinterval())


def post_worker_init(worker):
    sys.setswitchinterval(switch_interval)
