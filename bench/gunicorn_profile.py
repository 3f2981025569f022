"""Gunicorn hooks that cProfile every request; `bench/queue.py --profile DIR` loads this file.

Each request runs under a CPU-time (not wall-clock) profiler of its own thread: gthread
workers serve requests from a thread pool, and cProfile only sees the thread it is enabled in. When a worker exits, its
threads' profiles are merged into DIR/worker-<pid>.prof; read it with
`python -m pstats DIR/worker-<pid>.prof` (sort cumtime, stats 40).
"""

import cProfile
import os
import pstats
import runpy
import threading
import time
from pathlib import Path

# The project's own settings and hooks first (config/gunicorn.conf.py): the profile is of the
# app as deployed. gunicorn loads one config file.
_project = runpy.run_path(str(Path(__file__).resolve().parent.parent / "config" / "gunicorn.conf.py"))
keepalive = _project["keepalive"]
post_worker_init = _project["post_worker_init"]

_local = threading.local()
_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def pre_request(worker, req):
    profile = getattr(_local, "profile", None)
    if profile is None:
        profile = _local.profile = cProfile.Profile(time.thread_time)
        with _lock:
            _profiles.append(profile)
    profile.enable()


def post_request(worker, req, environ, resp):
    _local.profile.disable()


def worker_exit(server, worker):
    with _lock:
        if not _profiles:
            return
        stats = pstats.Stats(_profiles[0])
        for profile in _profiles[1:]:
            stats.add(profile)
    path = os.path.join(os.environ["BENCH_PROFILE_DIR"], f"worker-{os.getpid()}.prof")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stats.dump_stats(path)
