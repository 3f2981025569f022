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
connects to its own nice value and its idle cgroup (config.priority.lower_database_backend), so
that the database work done for it waits for the raters' as it does. Its sessions also run
without parallel workers: those are processes the postmaster starts at its own priority, in its
own cgroup, so a niced session's big scan would bring them in at the raters' priority. Other
sessions get DATABASE_PARALLEL_WORKERS where it is set (the web processes set 0).

`prepared_cursor()` is a cursor whose statements are prepared: parsed and planned by the backend
once per connection, then executed with new parameters (server-side binding). The statements
that run on every task (annotation.rows.fetch_rows: the queue's, a submission's, token
authentication's) go through it; the ORM keeps Django's client-side binding. Preparing them cuts
the database's CPU per submit-and-next by about a third (bench/request_cpu.py). Prepared
statements live in the backend's session: DATABASE_PREPARED_STATEMENTS=0 turns them off behind a
connection pooler that hands a backend to other clients between transactions without carrying
them (PgBouncer's transaction mode before 1.21, or without `max_prepared_statements`).
"""

import select

import psycopg
from django.conf import settings
from django.db.backends.postgresql import base
from django.db.backends.postgresql.psycopg_any import register_tzloader
from django.utils.asyncio import async_unsafe
from psycopg import adapters, pq

from config.priority import current_background_cgroup, lower_database_backend, own_nice


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


class PreparedCursor(base.ServerBindingCursor):
    """Server-side binding, every statement prepared at its first execution on the connection."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)


class DatabaseOperations(base.DatabaseOperations):
    def last_executed_query(self, cursor, sql, params):
        """The statement with its values in, as logged under DEBUG and counted by tests: a
        prepared one's own text names its values $1, $2…"""
        if isinstance(cursor, PreparedCursor) and params is not None:
            try:
                return self.compose_sql(sql, params)
            except psycopg.errors.DataError:
                return None
        return super().last_executed_query(cursor, sql, params)


def _prepared_statements() -> bool:
    return getattr(settings, "DATABASE_PREPARED_STATEMENTS", True)


class DatabaseWrapper(base.DatabaseWrapper):
    ops_class = DatabaseOperations

    def get_new_connection(self, conn_params):
        nice = own_nice()
        background = nice > 0 and getattr(settings, "BACKGROUND_NICE_DATABASE", True)
        workers = 0 if background else getattr(settings, "DATABASE_PARALLEL_WORKERS", None)
        if workers is not None:  # the session's setting, sent with the start-up packet
            options = conn_params.get("options", "")
            conn_params = {
                **conn_params,
                "options": f"{options} -c max_parallel_workers_per_gather={int(workers)}".strip(),
            }
        connection = super().get_new_connection(conn_params)
        if _prepared_statements() and connection.prepare_threshold is None:
            # Only PreparedCursor asks for preparation: Django's client-side binding cursors never
            # prepare, whatever the threshold (psycopg ignores prepare=True while it is None).
            connection.prepare_threshold = 5
        if background:
            lower_database_backend(
                connection.info.host,
                connection.info.backend_pid,
                nice,
                cgroup=current_background_cgroup(getattr(settings, "BACKGROUND_CGROUP", "")),
            )
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

    def _create_prepared_cursor(self) -> PreparedCursor:
        cursor = PreparedCursor(self.connection)
        # As create_cursor: the connection's time zone, where the cursor's loader disagrees.
        loader = self.connection.adapters.get_loader(adapters.types["timestamptz"].oid, pq.Format.TEXT)
        if self.timezone != loader.timezone:
            register_tzloader(self.timezone, cursor)
        return cursor

    @async_unsafe
    def prepared_cursor(self):
        """A cursor whose statements are prepared (see the module), wrapped as `cursor()`'s are
        (queries logged under DEBUG and by the test runner's query counts, database errors as
        Django's); `cursor()` itself where prepared statements are off."""
        if not _prepared_statements():
            return self.cursor()
        self.close_if_health_check_failed()
        self.ensure_connection()
        with self.wrap_database_errors:
            return self._prepare_cursor(self._create_prepared_cursor())
