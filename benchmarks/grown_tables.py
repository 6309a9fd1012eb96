"""The grown tables of `make bench-growth` (benchmarks/growth.py): a database migrated by
`coupon-worker migrate`, `coupon` and `processed_command` filled in SQL to production sizes.

The rows (`INSERT ... SELECT FROM generate_series`: no row crosses the wire; values from
PostgreSQL's own `hashint8` and `md5`, so a coupon's id, code and counts are the same wherever
they are written):
- coupon j = 1..M: id `md5('coupon-id-j')` as a uuid, code `CPN-` and 16 hex digits (spread over
  the whole key range, as generated codes are), init_count 1, 10, 100, 1,000 or 10,000 (10, 10,
  30, 30, 20 %), remaining_count a share of it (about 73 % hold 20 or more), created_at when
  its create was processed, updated_at some time after;
- processed_command i = 1..N, in the order they were processed and evenly spread over the
  `history_days` before the preload: every (N/M)-th the `coupon.create` of the next coupon,
  the others `coupon.redeem`s of a coupon created before (2 % of them answered Exhausted);
  message ids uuid4 text as `contracts.messages.command_message` makes them, outcome bodies the
  JSON the worker stores (contracts/events.py: 96-142 bytes). The heap is in time order, as a
  live table's is; the message ids are random, as a live table's are.

Indexes: the key constraints and indexes of both tables are dropped for the load and built
after it from their own catalog definitions (`pg_get_constraintdef`, `pg_get_indexdef`), then
checked equal to what the migration made: a build sorts once where 10 M random inserts would
take far longer. A btree filled by random inserts settles near 69 % full (ln 2: Yao, 1978), a
built one at the 90 % default, so the indexes on random keys (message ids, coupon ids and codes)
are built at 70 % (`RANDOM_KEY_FILL`) and their fillfactor reset to the default afterwards: the
size and density of an index that grew, in the schema the migration made. The one on
`processed_at` grows at its right end in a live table, as a build fills it. Then VACUUM ANALYZE
and a CHECKPOINT, so that no run pays for the load's dirty pages.

The runs over them: benchmarks/grown_runs.py; their sizes: benchmarks/relations.py; and
`prune`, `coupon-worker prune` on them, timed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from benchmarks.database import BenchmarkFailed, coupon_worker_command

TABLES = ("coupon", "processed_command")
RANDOM_KEYS = ("pk_coupon", "uq_coupon_code", "pk_processed_command")
RANDOM_KEY_FILL = 70
POOL_STOCK = 20  # a run's coupons hold at least this: no redeem of a plan can run out

# Coupon j's columns, as SQL over a bigint `j` (used by both INSERTs).
COUPON_ID = "md5('coupon-id-' || {j})::uuid"
COUPON_CODE = "'CPN-' || upper(substr(md5('coupon-code-' || {j}), 1, 16))"
INIT_COUNT = (
    "(ARRAY[1, 10, 100, 100, 100, 1000, 1000, 1000, 10000, 10000])"
    "[1 + (hashint8({j}) & 2147483647) % 10]"
)

INSERT_COUPONS = f"""
INSERT INTO coupon (id, code, init_count, remaining_count, created_at, updated_at)
SELECT {COUPON_ID.format(j="j")}, {COUPON_CODE.format(j="j")}, c.init_count,
       c.init_count * ((hashint8(j # 7919) & 2147483647) % 101) / 100,
       c.created_at,
       c.created_at
         + (CAST(:now AS timestamptz) - c.created_at)
         * ((hashint8(j # 104729) & 2147483647) % 1000) / 1000.0
FROM generate_series(CAST(1 AS bigint), CAST(:coupons AS bigint)) AS j
CROSS JOIN LATERAL (
  SELECT {INIT_COUNT.format(j="j")} AS init_count,
         CAST(:start AS timestamptz) + CAST(:step AS interval) * (j * :per_coupon) AS created_at
) AS c
"""

INSERT_PROCESSED = f"""
INSERT INTO processed_command (message_id, command, outcome_type, outcome_body, processed_at)
SELECT gen_random_uuid()::text,
       CASE r.kind WHEN 'create' THEN 'coupon.create' ELSE 'coupon.redeem' END,
       CASE r.kind WHEN 'create' THEN 'coupon.created'
                   WHEN 'redeemed' THEN 'coupon.redeemed' ELSE 'coupon.error' END,
       CASE r.kind
         WHEN 'create' THEN '{{"id":"' || r.id || '","code":"' || r.code || '","init_count":'
           || r.init_count || ',"remaining_count":' || r.init_count || '}}'
         WHEN 'redeemed' THEN '{{"id":"' || r.id || '","code":"' || r.code
           || '","remaining_count":' || (hashint8(i) & 2147483647) % r.init_count || '}}'
         ELSE '{{"error":"Exhausted","detail":"coupon ''' || r.code
           || ''' has no redemptions left","command":"coupon.redeem","code":"' || r.code || '"}}'
       END,
       CAST(:start AS timestamptz) + CAST(:step AS interval) * i
FROM generate_series(CAST(1 AS bigint), CAST(:processed AS bigint)) AS i
CROSS JOIN LATERAL (
  SELECT i % :per_coupon = 0 AND i / :per_coupon <= :coupons AS creates,
         least(i / :per_coupon, :coupons) AS created_before
) AS s
CROSS JOIN LATERAL (
  SELECT CASE WHEN s.creates THEN 'create'
              WHEN (hashint8(i # 31) & 2147483647) % 50 = 0 THEN 'exhausted'
              ELSE 'redeemed' END AS kind,
         CASE WHEN s.creates THEN s.created_before
              ELSE 1 + (hashint8(i) & 2147483647) % greatest(s.created_before, 1) END AS j
) AS k
CROSS JOIN LATERAL (
  SELECT k.kind, {COUPON_ID.format(j="k.j")} AS id, {COUPON_CODE.format(j="k.j")} AS code,
         {INIT_COUNT.format(j="k.j")} AS init_count
) AS r
"""

INDEXES = """
SELECT index.relname AS name, pg_get_indexdef(index.oid) AS index_definition,
       con.conname AS constraint_name, pg_get_constraintdef(con.oid) AS constraint_definition
FROM pg_index AS x
JOIN pg_class AS index ON index.oid = x.indexrelid
LEFT JOIN pg_constraint AS con ON con.conindid = x.indexrelid AND con.contype IN ('p', 'u')
WHERE x.indrelid = CAST(:table AS regclass)
ORDER BY index.relname
"""


@dataclass(frozen=True, slots=True)
class Index:
    """One index of a table, and how to drop it and build it again as it was."""

    table: str
    name: str
    index_definition: str
    constraint_definition: str | None  # a PRIMARY KEY or UNIQUE constraint's, else None

    def drop(self) -> str:
        if self.constraint_definition is not None:
            return f'ALTER TABLE {self.table} DROP CONSTRAINT "{self.name}"'
        return f'DROP INDEX "{self.name}"'

    def build(self) -> list[str]:
        fill = RANDOM_KEY_FILL if self.name in RANDOM_KEYS else None
        definition = self.index_definition
        if self.constraint_definition is not None:
            definition = f'ALTER TABLE {self.table} ADD CONSTRAINT "{self.name}" ' + (
                self.constraint_definition
            )
        if fill is None or " WITH (" in definition:  # a fill the migration chose stays
            return [definition]
        return [
            f"{definition} WITH (fillfactor = {fill})",
            f'ALTER INDEX "{self.name}" RESET (fillfactor)',
        ]


async def indexes(connection: AsyncConnection, table: str) -> list[Index]:
    rows = await connection.execute(text(INDEXES), {"table": table})
    return [Index(table, row.name, row.index_definition, row.constraint_definition) for row in rows]


async def preload(
    engine: AsyncEngine, *, processed: int, coupons: int, history_days: float, now: datetime
) -> dict[str, Any]:
    """Fill the migrated, empty tables (`engine` in AUTOCOMMIT); seconds per step."""
    step = timedelta(days=history_days) / processed
    values = {
        "now": now,
        "start": now - timedelta(days=history_days),
        "step": step,
        "per_coupon": max(processed // coupons, 1),
        "coupons": coupons,
        "processed": processed,
    }
    seconds: dict[str, float] = {}

    async def timed(name: str, *statements: str, params: dict[str, Any] | None = None) -> None:
        started = time.perf_counter()
        async with engine.connect() as connection:
            await connection.execute(text("SET maintenance_work_mem = '1GB'"))
            for statement in statements:
                await connection.execute(text(statement), params or {})
        seconds[name] = round(time.perf_counter() - started, 1)

    async with engine.connect() as connection:
        migrated = {table: await indexes(connection, table) for table in TABLES}
    every = [index for table in TABLES for index in migrated[table]]
    await timed("drop indexes", *(index.drop() for index in every))
    await timed("coupons", INSERT_COUPONS, params=values)
    await timed("processed commands", INSERT_PROCESSED, params=values)
    await timed("build indexes", *(s for index in every for s in index.build()))
    await timed("vacuum analyze", *(f"VACUUM ANALYZE {table}" for table in TABLES))
    await timed("checkpoint", "CHECKPOINT")
    async with engine.connect() as connection:
        rebuilt = {table: await indexes(connection, table) for table in TABLES}
    if rebuilt != migrated:
        raise BenchmarkFailed(f"the indexes differ from the migration's after the load: {rebuilt}")
    return {"seconds": round(sum(seconds.values()), 1), "steps": seconds}


async def pool(engine: AsyncEngine) -> list[str]:
    """The codes of every coupon holding at least `POOL_STOCK`, in code order."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT code FROM coupon WHERE remaining_count >= :stock ORDER BY code"),
            {"stock": POOL_STOCK},
        )
        return [row.code for row in rows]


async def prune(database_url: str, amqp_url: str, days: float) -> dict[str, Any]:
    """`coupon-worker prune --older-than-days DAYS`, as an operator runs it, timed."""
    environment = dict(
        os.environ, DATABASE_URL=database_url, AMQP_URL=amqp_url, WORKER_LOG_FORMAT="json"
    )
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *coupon_worker_command(),
        "prune",
        f"--older-than-days={days:g}",
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchmarkFailed(
            f"coupon-worker prune exited {process.returncode}: {output[-2000:]!r}"
        )
    for line in output.decode(errors="replace").splitlines():
        if "processed_commands_pruned" in line:
            record = json.loads(line[line.index("{") :])
            return {
                "older_than_days": days,
                "deleted": record["deleted"],
                "seconds": round(seconds, 1),
                "rows_per_second": round(record["deleted"] / seconds),
            }
    raise BenchmarkFailed(
        f"coupon-worker prune said nothing of what it deleted: {output[-2000:]!r}"
    )
