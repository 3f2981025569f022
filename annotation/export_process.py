"""The bytes of one export download, written to standard output: the program that annotation.downloads
runs in a child process, at a lower CPU priority, and streams to the client.

    python -m annotation.export_process PROJECT_ID KIND FORMAT [--status S]... [--round N]
                                        [--nice N] [--cgroup NAME] [--database-name NAME]

Internal: the web view has checked the user's access and the parameters before it starts this, so
a bad one here is a bug. Any failure exits non-zero with its traceback on standard error, which the
web process logs before it breaks the download off. The bytes are annotation.exporting's, exactly
as a download made in the web process sends them.
"""

from __future__ import annotations

import argparse
import os
import sys

# Written to the pipe in pieces of this size at most (the web process reads the same).
CHUNK_BYTES = 64 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotation.export_process", description=__doc__)
    parser.add_argument("project_id", type=int)
    parser.add_argument("kind")
    parser.add_argument("fmt", metavar="format")
    parser.add_argument("--status", action="append", dest="statuses", help="repeatable")
    parser.add_argument("--round", type=int, dest="round_number")
    parser.add_argument("--nice", type=int, default=0, help="added to this process's niceness, first")
    parser.add_argument(
        "--cgroup", default="", help="with --nice: the idle cgroup to move into, where it may"
    )
    parser.add_argument(
        "--database-name",
        help="the default database's NAME, the web process's (a test database is not the settings' own)",
    )
    args = parser.parse_args(argv)
    if args.nice:
        # Before Django is set up, so its start-up (a good part of a small export) runs niced too.
        # Done here rather than in the parent's preexec_fn, which is unsafe in a threaded server.
        # Started in a session of its own, this process leads its scheduling group (an autogroup,
        # where the kernel has them), which gets the same nice value: otherwise it would take its
        # share from the web server's group (config.priority). It moves into the idle cgroup where
        # it may, so that a waking rater's process never waits for it. Its database backend gets
        # its nice value and its cgroup too.
        os.nice(args.nice)
        from config.priority import enter_background_cgroup, lower_autogroup  # (loads Celery's app)

        if os.getsid(0) == os.getpid():
            lower_autogroup(os.getpriority(os.PRIO_PROCESS, 0))
        enter_background_cgroup(args.cgroup)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import connections

    from annotation import exporting
    from annotation.models import Project

    if args.database_name:
        # As Django's test set-up does: the connection is opened later, with this NAME.
        connections["default"].settings_dict["NAME"] = args.database_name
    project = Project.objects.get(pk=args.project_id)
    rows = exporting.export_rows(
        project, kind=args.kind, statuses=args.statuses, round_number=args.round_number
    )
    with open(sys.stdout.fileno(), "wb", buffering=CHUNK_BYTES, closefd=False) as out:
        for chunk in exporting.file_chunks(rows, kind=args.kind, fmt=args.fmt):
            out.write(chunk)
    return 0


if __name__ == "__main__":
    sys.exit(main())
