"""Django's PostgreSQL backend, with a health check that costs no round trip when it can.

CONN_HEALTH_CHECKS makes Django check a kept connection at its first use in each request, so
that a web process finds a connection broken since its last request (PostgreSQL restarted, the
backend ended) and opens a new one instead of failing the request. Django checks with a
`SELECT 1` round trip, on every request of the task queue's hot path. A connection that is idle
has nothing to read: a server that ends its backend (a restart, a shutdown, a terminated
session) sends its error and closes the socket, which makes the socket readable. So a socket
with nothing to read, on a connection that libpq holds as open and idle, is taken as healthy;
any other state still gets Django's `SELECT 1` (and the connection is closed if that fails).

A niced process (background work: an export's child, a background worker) gives each backend it
connects to its own nice value (config.priority.lower_database_backend), so that the database
work done for it waits for the raters' as it does.
"""

import select

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base
from psycopg import pq

from config.priority import lower_database_backend, own_nice


def _quiet(connection) -> bool:
    """Whether this idle connection's socket has nothing to read (libpq holds it as open)."""
    pgconn = connection.pgconn
    if pgconn.status != pq.ConnStatus.OK or pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return False
    try:
        poller = select.poll()
        poller.register(pgconn.socket, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError, psycopg.Error):  # no socket any more: not healthy
        return False


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        nice = own_nice()
        if nice > 0 and getattr(settings, "BACKGROUND_NICE_DATABASE", True):
            lower_database_backend(connection.info.host, connection.info.backend_pid, nice)
        return connection

    def close_if_health_check_failed(self):
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and not self.pool
            and _quiet(self.connection)
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()
