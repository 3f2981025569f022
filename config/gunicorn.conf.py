"""gunicorn settings for the web app: `gunicorn config.wsgi -c config/gunicorn.conf.py`.

Only what the app's workload asks for is set here; the layout (`--workers`, `--threads`) and the
bind address stay on the command line, per deployment. bench/queue.py serves the app with this
file too, so the bench measures what is deployed.
"""

import os
import sys

# A request is a dozen short PostgreSQL round trips with a little Python between them. While one
# thread waits on the database another runs; when the answer comes back, the waiting thread
# must get the GIL from the running one, which hands it over only every switch interval (5 ms
# by default). That wait, once per round trip, can add more to a request's latency than its own
# CPU time. GUNICORN_SWITCH_INTERVAL (seconds) overrides it.
switch_interval = float(os.environ.get("GUNICORN_SWITCH_INTERVAL") or 0.005)

# A rater's browser (or the bench's raters) comes back within seconds, after reading a task:
# keep its connection open meanwhile instead of opening one per task.
keepalive = 30


def post_worker_init(worker):
    sys.setswitchinterval(switch_interval)
