"""What PostgreSQL says of the benchmark's tables and of itself: each table's rows and sizes
(`pg_total_relation_size`, `pg_relation_size`, `pg_indexes_size`), each index's size and btree
leaf density (pgstattuple, where the server ships it), live and dead tuples and HOT updates;
and the server's settings that move the figures."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from benchmarks.grown_tables import TABLES, indexes

SERVER_SETTINGS = (
    "shared_buffers",
    "effective_cache_size",
    "work_mem",
    "maintenance_work_mem",
    "max_wal_size",
    "checkpoint_timeout",
    "synchronous_commit",
    "autovacuum",
    "random_page_cost",
)


async def sizes(engine: AsyncEngine) -> dict[str, Any]:
    """Per table: rows, total / heap / index bytes, each index's bytes and (pgstattuple, when
    the server has it) its leaf density; live and dead tuples, HOT updates, vacuums."""
    result: dict[str, Any] = {}
    async with engine.connect() as connection:
        density = await _has_pgstattuple(connection)
        for table in TABLES:
            row = (
                await connection.execute(
                    text(
                        "SELECT pg_total_relation_size(CAST(:t AS regclass)) AS total, "
                        "pg_relation_size(CAST(:t AS regclass)) AS heap, "
                        "pg_indexes_size(CAST(:t AS regclass)) AS indexes, "
                        f"(SELECT count(*) FROM {table}) AS rows, s.n_live_tup, s.n_dead_tup, "
                        "s.n_tup_upd, s.n_tup_hot_upd, s.vacuum_count, s.autovacuum_count "
                        "FROM pg_stat_user_tables AS s WHERE s.relid = CAST(:t AS regclass)"
                    ),
                    {"t": table},
                )
            ).one()
            entry = dict(row._mapping)
            entry["index"] = {}
            for index in await indexes(connection, table):
                bytes_ = await connection.scalar(
                    text("SELECT pg_relation_size(CAST(:i AS regclass))"), {"i": index.name}
                )
                entry["index"][index.name] = {"bytes": bytes_}
                if density:
                    leaf = await connection.scalar(
                        text("SELECT avg_leaf_density FROM pgstatindex(:i)"), {"i": index.name}
                    )
                    entry["index"][index.name]["avg_leaf_density"] = leaf
            result[table] = entry
    return result


async def _has_pgstattuple(connection: AsyncConnection) -> bool:
    """pgstattuple in the grown database, if the server ships it (the connection autocommits)."""
    try:
        await connection.execute(text("CREATE EXTENSION IF NOT EXISTS pgstattuple"))
    except DBAPIError:
        return False
    return True


async def server_settings(engine: AsyncEngine) -> dict[str, str]:
    """The server's settings that move these figures, as a new session gets them."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT name, reset_val, unit FROM pg_settings WHERE name = ANY(:names)"),
            {"names": list(SERVER_SETTINGS)},
        )
        return {row.name: row.reset_val + (f" ({row.unit})" if row.unit else "") for row in rows}
