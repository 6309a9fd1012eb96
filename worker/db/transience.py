"""Which database errors will pass by themselves, and which of those are outages."""

from __future__ import annotations

import asyncio
from typing import Final

from asyncpg.exceptions import TargetServerAttributeNotMatched  # type: ignore[import-untyped]
from sqlalchemy import exc as sa_exc

# SQLSTATE classes/codes that a retry of the same transaction can get past.
_CONFLICT_STATES: Final = ("40001", "40P01")  # serialization failure, deadlock
_OUTAGE_STATE_PREFIXES: Final = ("08", "53", "57P")  # connection, resources, shutdown/startup
# A read-only transaction where the worker writes: the node it is connected to is (now) a
# standby - a primary demoted by a failover. It passes when a connection reaches the new primary.
READ_ONLY_STATES: Final = ("25006",)  # read_only_sql_transaction


def sqlstate(error: BaseException) -> str | None:
    for candidate in (error, getattr(error, "orig", None), getattr(error, "__cause__", None)):
        if candidate is None:
            continue
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    orig = getattr(error, "orig", None)
    if orig is not None and orig.__cause__ is not None:
        return sqlstate(orig.__cause__)
    return None


def classify(error: BaseException) -> str | None:
    """'conflict', 'outage', or None when the error is not transient."""
    state = sqlstate(error)
    if state in _CONFLICT_STATES:
        return "conflict"
    if state is not None and state.startswith(_OUTAGE_STATE_PREFIXES):
        return "outage"
    if state in READ_ONLY_STATES:
        return "outage"
    if isinstance(error, TargetServerAttributeNotMatched):
        return "outage"  # every host of a multi-host DATABASE_URL answers, none as a primary
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return "outage"
    if isinstance(error, sa_exc.TimeoutError | sa_exc.InterfaceError):
        return "outage"  # pool exhausted while connections hang, or a closed connection
    if isinstance(error, OSError | asyncio.TimeoutError | ConnectionError):
        return "outage"
    if isinstance(error, sa_exc.DBAPIError):
        orig = error.orig
        if isinstance(orig, OSError | asyncio.TimeoutError) or (
            orig is not None and isinstance(orig.__cause__, OSError | asyncio.TimeoutError)
        ):
            return "outage"
        name = type(orig.__cause__ if orig is not None else None).__name__
        if name in ("ConnectionDoesNotExistError", "InterfaceError", "ConnectionFailureError"):
            return "outage"
    return None
