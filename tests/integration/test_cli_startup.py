"""`coupon-worker` start-up faults a person can act on: one line, where, how to fix, no secret."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.broker import Broker
from tests.support.cli import Finished, run_cli
from tests.support.database import create_database, drop_database
from tests.support.services import Services
from tests.support.worker_process import WorkerProcess
from worker.db import migrations

AMQP_PASSWORD = "amqp-Pw-4f1c9e"
PG_PASSWORD = "pg-Pw-77d0aa"


def assert_one_clear_line(result: Finished, *expected: str) -> str:
    """Exit 2 and a last stderr line that says it all; anything before it is a structured log
    record (library chatter such as alembic's context line), never a traceback."""
    assert result.returncode == 2, result.output
    assert "Traceback" not in result.output
    *logged, line = result.stderr.strip().splitlines()
    for record in map(json.loads, logged):
        assert isinstance(record, dict) and "exception" not in record, record
    assert line.startswith("coupon-worker: ")
    for text in expected:
        assert text in line, line
    return line


@pytest.fixture
async def unmigrated_database(services: Services) -> AsyncIterator[str]:
    url = await create_database(services.database_url, prefix="coupon_cli")
    try:
        yield url
    finally:
        await drop_database(services.database_url, url)


@pytest.mark.timeout(90)
async def test_run_refuses_an_unmigrated_database(
    services: Services, unmigrated_database: str, prefix: str
) -> None:
    result = await run_cli(
        "run",
        AMQP_URL=services.amqp_url,
        DATABASE_URL=unmigrated_database,
        WORKER_NAME_PREFIX=prefix,
    )
    line = assert_one_clear_line(result, "no coupon schema", "coupon-worker migrate", "--migrate")
    assert migrations.head_revision() in line
    engine = create_async_engine(unmigrated_database)
    try:
        assert await migrations.current_revision(engine) is None, "run must not migrate by itself"
    finally:
        await engine.dispose()


@pytest.mark.timeout(120)
async def test_run_with_migrate_upgrades_then_consumes(
    services: Services, unmigrated_database: str, prefix: str
) -> None:
    worker = WorkerProcess(
        {
            "AMQP_URL": services.amqp_url,
            "DATABASE_URL": unmigrated_database,
            "WORKER_NAME_PREFIX": prefix,
        },
        name="migrating-worker",
    ).start("--migrate")
    broker = Broker(services.amqp_url, prefix)
    try:
        await worker.wait_ready(within=60)
        engine = create_async_engine(unmigrated_database)
        try:
            assert await migrations.current_revision(engine) == migrations.head_revision()
        finally:
            await engine.dispose()
        assert await worker.stop(within=60) == 0
    finally:
        worker.kill()
        await broker.open()
        await broker.delete_topology()
        await broker.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command", ["run", "publish"])
async def test_an_unreachable_broker_is_named_without_its_password(
    services: Services, database_url: str, prefix: str, command: str
) -> None:
    args = [command] if command == "run" else [command, "redeem", "--code", "X"]
    result = await run_cli(
        *args,
        AMQP_URL=f"amqp://guest:{AMQP_PASSWORD}@127.0.0.1:1/",
        DATABASE_URL=database_url,
        WORKER_NAME_PREFIX=prefix,
    )
    assert AMQP_PASSWORD not in result.output
    line = assert_one_clear_line(
        result,
        "cannot reach RabbitMQ",
        "127.0.0.1:1",
        "guest:***@",
        "rabbitmq-server",
        "AMQP_URL",
    )
    # Alone: aiormq's own "error when creating transport" line is debug noise (worker/logs.py).
    assert result.stderr.strip().splitlines() == [line]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("command", "database_url", "redacted"),
    [
        (
            "run",
            f"postgresql+asyncpg://postgres:{PG_PASSWORD}@127.0.0.1:1/postgres",
            "postgresql+asyncpg://postgres:***@127.0.0.1:1/postgres",
        ),
        (
            "migrate",
            f"postgresql+asyncpg://postgres@127.0.0.1:1/postgres?password={PG_PASSWORD}",
            "postgresql+asyncpg://postgres@127.0.0.1:1/postgres?password=***",
        ),
    ],
    ids=["run-password-in-userinfo", "migrate-password-in-query"],
)
async def test_an_unreachable_database_is_named_without_its_password(
    services: Services, prefix: str, command: str, database_url: str, redacted: str
) -> None:
    result = await run_cli(
        command, AMQP_URL=services.amqp_url, DATABASE_URL=database_url, WORKER_NAME_PREFIX=prefix
    )
    assert PG_PASSWORD not in result.output
    assert_one_clear_line(
        result, "cannot reach PostgreSQL", redacted, "pg_ctlcluster", "DATABASE_URL"
    )
