"""The growth phase's grown tables (benchmarks/grown_tables.py, grown_runs.py), small: rows the
contract reads, the migrated schema kept, and the run's slice judged by `make bench`'s database
check — passing a run applied once, failing one applied twice."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks import checks, grown_tables, relations
from benchmarks.grown_runs import GrownTables
from contracts import CouponCreated, read_event
from tests.support.database import create_database, drop_database
from tests.support.services import Services
from worker.db import migrations

NOW = datetime.now(UTC)


@pytest.fixture
async def grown(services: Services) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """A migrated database of its own (the preload rebuilds its indexes), preloaded small."""
    url = await create_database(services.database_url, "coupon_grown")
    migrating = create_async_engine(url)
    try:
        await migrations.upgrade(migrating)
    finally:
        await migrating.dispose()
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        await grown_tables.preload(engine, processed=3_000, coupons=300, history_days=37, now=NOW)
        yield url, engine
    finally:
        await engine.dispose()
        await drop_database(services.database_url, url)


async def test_the_rows_are_what_the_worker_stores(grown: tuple[str, AsyncEngine]) -> None:
    _, engine = grown
    async with engine.connect() as connection:
        coupons = {
            row.code: row
            for row in await connection.execute(text("SELECT id, code, init_count FROM coupon"))
        }
        processed = (
            await connection.execute(
                text("SELECT outcome_type, outcome_body, processed_at FROM processed_command")
            )
        ).all()
    assert (len(coupons), len(processed)) == (300, 3_000)
    events = [read_event(row.outcome_type, row.outcome_body.encode()) for row in processed]
    assert {type(event).__name__ for event in events} == {
        "CouponCreated",
        "CouponRedeemed",
        "CouponError",
    }
    created = [event for event in events if isinstance(event, CouponCreated)]
    assert len(created) == 300
    for event in created:  # each coupon's create names it as its row does
        row = coupons[event.code]
        assert (event.id, event.init_count) == (row.id, row.init_count)
    older = sum(row.processed_at < NOW - timedelta(days=30) for row in processed)
    assert older == pytest.approx(3_000 * 7 / 37, abs=2)  # what a 30-day prune deletes
    sizes = await relations.sizes(engine)
    assert set(sizes["processed_command"]["index"]) == {
        "pk_processed_command",
        "ix_processed_command_processed_at",
    }


async def test_a_run_applied_once_passes_and_twice_fails(grown: tuple[str, AsyncEngine]) -> None:
    url, engine = grown
    tables = GrownTables(url, await grown_tables.pool(engine))
    plan = await tables.plan(engine, "redeem", 200, seed=1, reply_to="replies")
    assert all(code in tables.codes for code in plan.redeems)

    async def apply() -> None:
        """What the worker does for the plan's redeems, in SQL."""
        async with engine.begin() as connection:
            for code, count in plan.redeems.items():
                await connection.execute(
                    text(
                        "UPDATE coupon SET remaining_count = remaining_count - :n WHERE code = :c"
                    ),
                    {"n": count, "c": code},
                )
            await connection.execute(
                text(
                    "INSERT INTO processed_command SELECT id, 'coupon.redeem', "
                    "'coupon.redeemed', '{}', clock_timestamp() FROM unnest(CAST(:ids AS text[])) "
                    "AS id ON CONFLICT DO NOTHING"
                ),
                {"ids": sorted(plan.writes)},
            )

    await apply()
    once = checks.Verdict()
    checks.check_database(plan, await tables.read_state(engine, plan), once)
    assert once.passed, once.problems
    assert once.figures["redeemed_in_database"] == 200

    await apply()  # every redeem taken a second time
    twice = checks.Verdict()
    checks.check_database(plan, await tables.read_state(engine, plan), twice)
    assert any("counts do not match" in problem for problem in twice.problems)
