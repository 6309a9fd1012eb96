"""Which database errors will pass by themselves, and which of those are outages: by the
classes of asyncpg and SQLAlchemy, anywhere in the error's cause chain (SQLAlchemy raises its
own DBAPIError from the dialect's error, raised in turn from asyncpg's)."""

from __future__ import annotations

from typing import Final

import asyncpg.exceptions as pg
from sqlalchemy import exc as sa_exc

from worker.app.failures import (
    DependencyUnavailable,
    TransactionConflict,
    TransientFailure,
    causes,
)

# What a retry of the same transaction gets past: SQLSTATE 40001, 40P01.
_CONFLICTS: Final = (pg.SerializationError, pg.DeadlockDetectedError)

_OUTAGES: Final = (
    pg.PostgresConnectionError,  # class 08: the connection failed or does not exist
    pg.InsufficientResourcesError,  # class 53: disk, memory, too many connections
    pg.AdminShutdownError,  # 57P01..57P05: shut down, crashed, starting, dropped, timed out
    pg.CrashShutdownError,
    pg.CannotConnectNowError,
    pg.DatabaseDroppedError,
    pg.IdleSessionTimeoutError,
    # 25006: a write refused as read-only - the node is (now) a standby, a primary demoted by
    # a failover; it passes once a connection reaches the new primary.
    pg.ReadOnlySQLTransactionError,
    # Every host of a multi-host DATABASE_URL answered, none as a read-write primary.
    pg.TargetServerAttributeNotMatched,
    pg.InterfaceError,  # asyncpg's client side, e.g. the connection is closed
    sa_exc.TimeoutError,  # the pool's: no connection within pool_timeout while they hang
    sa_exc.InterfaceError,
    OSError,  # socket errors, ConnectionError included
    # A silent database (issue 13): asyncpg raises TimeoutError for WORKER_DB_STATEMENT_TIMEOUT
    # and WORKER_DB_CONNECT_TIMEOUT (asyncio.TimeoutError is TimeoutError on 3.11), unwrapped by
    # SQLAlchemy; its connection errors are class 08 (ConnectionDoesNotExistError) or
    # pg.InterfaceError ("connection is closed"), above.
    TimeoutError,
)


def is_demoted_primary(error: BaseException) -> bool:
    """Whether the server refused a write as read-only (SQLSTATE 25006) anywhere in the chain."""
    return any(isinstance(link, pg.ReadOnlySQLTransactionError) for link in causes(error))


def transient_kind(error: BaseException) -> type[TransientFailure] | None:
    """`TransactionConflict`, `DependencyUnavailable`, or None when the error will not pass
    by itself."""
    chain = list(causes(error))
    if any(isinstance(link, _CONFLICTS) for link in chain):
        return TransactionConflict
    if any(
        isinstance(link, _OUTAGES)
        or (isinstance(link, sa_exc.DBAPIError) and link.connection_invalidated)
        for link in chain
    ):
        return DependencyUnavailable
    return None


def translated(error: Exception) -> Exception:
    """The `TransientFailure` that `error` amounts to, or `error` itself."""
    if isinstance(error, TransientFailure):
        return error
    kind = transient_kind(error)
    return error if kind is None else kind(type(error).__name__)
