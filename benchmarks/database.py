"""A run's database, migrated by `coupon-worker migrate` as a user would, preseeded, and read
back for the exactly-once checks (tests/support/database.py creates and drops it).

The SQL here names the schema's tables and columns (alembic's, not the worker's Python
classes), so the benchmark keeps working while the worker's modules move; values are always
bound parameters.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

PRESEED_CHUNK = 5_000


class BenchmarkFailed(Exception):
    """The run cannot be trusted, or the worker lost or doubled a command."""


@dataclass(frozen=True, slots=True)
class CouponRow:
    init_count: int
    remaining_count: int


@dataclass(frozen=True, slots=True)
class DatabaseState:
    coupons: dict[str, CouponRow]
    processed: list[str]  # processed_command.message_id, every row


def coupon_worker_command() -> list[str]:
    """The `coupon-worker` console script of this environment (what a user runs)."""
    script = Path(sys.executable).with_name("coupon-worker")
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker"]


async def migrate(database_url: str, amqp_url: str) -> None:
    """`coupon-worker migrate`, in a process of its own."""
    environment = dict(os.environ, DATABASE_URL=database_url, AMQP_URL=amqp_url)
    process = await asyncio.create_subprocess_exec(
        *coupon_worker_command(),
        "migrate",
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise BenchmarkFailed(
            f"coupon-worker migrate exited {process.returncode}: {output.decode()[-2000:]}"
        )


async def preseed(engine: AsyncEngine, coupons: Mapping[str, int]) -> None:
    statement = text(
        "INSERT INTO coupon (id, code, init_count, remaining_count) "
        "VALUES (:id, :code, :count, :count)"
    )
    rows = [{"id": uuid.uuid4(), "code": code, "count": n} for code, n in coupons.items()]
    for first in range(0, len(rows), PRESEED_CHUNK):
        async with engine.begin() as connection:
            await connection.execute(statement, rows[first : first + PRESEED_CHUNK])


async def read_state(engine: AsyncEngine) -> DatabaseState:
    async with engine.connect() as connection:
        coupons = await connection.execute(
            text("SELECT code, init_count, remaining_count FROM coupon")
        )
        processed = await connection.execute(text("SELECT message_id FROM processed_command"))
        return DatabaseState(
            {row.code: CouponRow(row.init_count, row.remaining_count) for row in coupons},
            [row.message_id for row in processed],
        )


async def server_version(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        return str(await connection.scalar(text("SHOW server_version")))
