"""The engine, built from settings by the composition root.

Bounds on a database that went silent (a partition or a frozen VM closes no socket), each
fitted to what it waits for rather than one blanket timeout:
- `WORKER_DB_CONNECT_TIMEOUT`: TCP connect, startup and authentication of a new connection;
- `WORKER_DB_STATEMENT_TIMEOUT`: every statement, the idle ping, BEGIN and COMMIT
  included (asyncpg's `command_timeout`, enforced by the client, so it holds when the server
  cannot answer at all); the retry policy (`worker/messaging/retry.py`) adds a deadline
  for each attempt at a batch, by its size;
- TCP keepalive on both ends of every connection (`worker/keepalive.py`).
A statement that times out is treated as a disconnect: its connection is discarded, and the
pool's other connections, which most likely went silent together with it, are replaced at
their next checkout instead of being pinged one by one.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

from worker.db.transience import is_demoted_primary
from worker.keepalive import TcpKeepalive
from worker.settings import Settings

# asyncpg prepares every statement, and PostgreSQL switches a prepared statement to a generic
# plan (one for any parameters) after five executions. The repositories' lookups (`key =
# ANY(:keys)`) then keep the plan made while the table was small: on a new database, a
# sequential scan that a connection goes on using while the table grows, until an ANALYZE
# happens to replan it. Measured (pipeline alone, batches of 250 creates): 6,100 creates/s
# over the first 5,000 rows, 1,540/s by 20,000, 310/s by 80,000; with custom plans, 7,000 to
# 10,800/s throughout. Planning a handful of statements per batch costs far less than that.
CUSTOM_PLANS = "force_custom_plan"

PING_AFTER_IDLE = 1.0  # seconds: a connection idle this long is pinged before it is used
IDLE_SINCE = "coupon_worker_idle_since"  # in a pooled connection's `info`


def create_engine(settings: Settings, *, admin: bool = False) -> AsyncEngine:
    """The worker's engine; `admin=True` for migrations and pruning, whose statements may run
    long or wait for a lock (another replica's migration) by design: no statement timeout."""
    keepalive = TcpKeepalive(settings.tcp_keepalive)
    engine = create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=30,
        hide_parameters=True,  # never put bound values (codes, ids) into error strings
        connect_args={
            "timeout": settings.db_connect_timeout,
            "command_timeout": None if admin else settings.db_statement_timeout,
            "server_settings": {
                "application_name": "coupon-worker",
                # Plan every execution for its own arrays: see `CUSTOM_PLANS`.
                "plan_cache_mode": CUSTOM_PLANS,
                **keepalive.postgres_server_settings(),
            },
        },
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _set_keepalive(dbapi_connection: Any, _: Any) -> None:
        # asyncpg exposes no socket options; its connection keeps the asyncio transport in
        # `_transport` (read defensively: without it, only the server's keepalive applies).
        transport = getattr(dbapi_connection.driver_connection, "_transport", None)
        if transport is not None:
            keepalive.apply(transport.get_extra_info("socket"))

    event.listen(engine.sync_engine, "checkin", _idle_from_now)
    event.listen(engine.sync_engine, "checkout", _ping_if_idle)
    event.listen(engine.sync_engine, "handle_error", _unusable_connection_is_a_disconnect)
    return engine


def _idle_from_now(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[IDLE_SINCE] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
    """`pool_pre_ping`, for connections that sat idle: a connection is pinged before use only if
    it was idle for `PING_AFTER_IDLE` seconds or more (after a quiet spell, or an outage, it may
    be dead). asyncpg's ping is three round trips (BEGIN, `;`, ROLLBACK), which pinging every
    checkout added to every batch: 1-1.5 ms of a 5-7 ms batch at a low rate. A connection in
    steady use that dies fails its batch's statement instead: a disconnect, which invalidates
    the pool, and the retry policy tries the batch again on a new connection."""
    idle_since = record.info.get(IDLE_SINCE)
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
        return
    try:
        dbapi_connection.ping()
    except Exception as error:
        # Idle as long, the pool's other connections most likely went with it.
        raise InvalidatePoolError(f"idle connection failed its ping: {error!r}") from error


def _unusable_connection_is_a_disconnect(context: ExceptionContext) -> None:
    """Errors after which a connection must not be used again count as disconnects, so that
    SQLAlchemy invalidates it (and, by default, the pool) instead of handing it out again:
    - a statement that outlived command_timeout (asyncpg raises TimeoutError and leaves the
      connection waiting on a cancel request, which a silent server never answers);
    - a write refused as read-only: the node became a standby (a failover demoted it). Its
      connections still answer `pool_pre_ping`; the next connection goes through the host
      list again (`target_session_attrs=read-write`)."""
    error = context.original_exception
    if isinstance(error, TimeoutError) or is_demoted_primary(error):
        context.is_disconnect = True


@asynccontextmanager
async def database(settings: Settings, *, admin: bool = False) -> AsyncIterator[AsyncEngine]:
    """An engine for the length of a command, disposed of afterwards (`admin`: see
    `create_engine`)."""
    engine = create_engine(settings, admin=admin)
    try:
        yield engine
    finally:
        await engine.dispose()
