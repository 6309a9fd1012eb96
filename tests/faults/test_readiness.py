"""`/readyz` follows PostgreSQL: not ready while it is stopped, ready again when it returns;
`/healthz` stays healthy throughout (the worker rides the outage out by itself) and the
`coupon_worker_database_up` gauge says the same as the probe."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.http_probe import get_json, http_port, scrape, wait_status
from tests.support.outages import postgres_stopped, restore_all

pytestmark = pytest.mark.faults


@pytest.fixture(autouse=True)
def services_restored() -> Iterator[None]:
    yield
    restore_all()


@pytest.mark.disruptive
@pytest.mark.timeout(300)
async def test_readyz_is_unready_while_postgresql_is_stopped_and_ready_after(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine, database_url: str
) -> None:
    events = await broker.collect_events()
    worker = start_worker(worker_http_port="0")
    port = await http_port(worker)
    await worker.wait_ready()
    await wait_status(port, "/readyz", 200, within=15)

    async with postgres_stopped(database_url):
        down = await wait_status(port, "/readyz", 503, within=30)
        assert down["database"] is False and down["broker"] is True, down
        assert (await get_json(port, "/healthz"))[0] == 200
        samples = await scrape(port)
        assert samples[("coupon_worker_database_up", ())] == 0
        await broker.send(CreateCoupon(code="readiness-held", init_count=1))

    back = await wait_status(port, "/readyz", 200, within=60)
    assert back["database"] is True
    assert (await scrape(port))[("coupon_worker_database_up", ())] == 1
    await events.wait_for(1, within=60)  # the command sent during the outage went through
    assert worker.running()
