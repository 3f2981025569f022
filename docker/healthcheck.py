"""Health checks of the compose services, run inside their containers (standard library only).

    python docker/healthcheck.py web [URL]       the app answers HTTP (any status below 500)
    python docker/healthcheck.py beat [FILE]     celery beat saved its schedule in the last 10 minutes

The web check sends the headers a TLS proxy would and does not follow redirects: a deployment
that is HTTPS-only answers 301 to plain HTTP, and that answer is a live app too. Workers are
checked with `celery inspect ping`, which asks the worker itself through the broker.
"""

from __future__ import annotations

import http.client
import os
import sys
import time
import urllib.parse

BEAT_STALE_SECONDS = 600  # beat writes its schedule every few minutes, even with nothing due


def web(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    host = (os.environ.get("ALLOWED_HOSTS") or "localhost").split(",")[0].strip().lstrip(".") or "localhost"
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=5)
    try:
        connection.request("GET", parts.path or "/", headers={"Host": host, "X-Forwarded-Proto": "https"})
        return connection.getresponse().status < 500
    except OSError:
        return False
    finally:
        connection.close()


def beat(schedule: str) -> bool:
    found = [f for f in (schedule, schedule + ".db", schedule + ".dat") if os.path.exists(f)]
    return bool(found) and time.time() - max(os.path.getmtime(f) for f in found) < BEAT_STALE_SECONDS


def main(argv: list[str]) -> int:
    kind = argv[0] if argv else "web"
    if kind == "web":
        return 0 if web(argv[1] if len(argv) > 1 else "http://127.0.0.1:8000/accounts/login/") else 1
    if kind == "beat":
        return 0 if beat(argv[1] if len(argv) > 1 else "/data/celerybeat-schedule") else 1
    print(f"unknown check {kind!r}: web or beat", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
