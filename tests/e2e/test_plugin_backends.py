"""The plugin's real backend around a worker that is already running (`COUPON_WORKER_PREFIX`),
and what it leaves behind when it starts its own."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon
from contracts.testing.backends import RealBackend
from contracts.testing.real import RealSettings
from tests.conftest import StartWorker
from tests.e2e.observe import coupons
from tests.support.broker import Broker
from tests.support.services import Services


async def test_attaching_to_a_running_worker_uses_it_and_leaves_it_alone(
    services: Services,
    prefix: str,
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = start_worker()
    await worker.wait_ready()
    monkeypatch.setenv("COUPON_AMQP_URL", services.amqp_url)
    monkeypatch.setenv("COUPON_WORKER_PREFIX", prefix)
    backend = await RealBackend.start()
    try:
        assert backend.worker is None and backend.topology.prefix == prefix
        created = await backend.client.create("ATTACHED", 2)
        assert created.remaining_count == 2
        [outcome] = await backend.replay([CreateCoupon(code="ATTACHED", init_count=2)])
        assert outcome.routing_key == "coupon.error"  # AlreadyExists: the worker's own state
    finally:
        await backend.aclose()
    assert worker.running()
    assert await coupons(db) == {"ATTACHED": (2, 2)}
    assert await broker.depth(broker.topology.worker_queue) == 0  # the queue is still there


async def test_a_started_backend_removes_its_database_and_topology(services: Services) -> None:
    settings = RealSettings(
        amqp_url=services.amqp_url,
        database_url=services.database_url,
        worker_prefix=None,
        worker_command=RealSettings.from_environment().worker_command,
    )
    backend = await RealBackend.start(settings)
    assert backend.worker is not None and backend.worker.database is not None
    database, prefix = backend.worker.database, backend.topology.prefix
    await backend.client.create("OWN", 1)
    await backend.aclose()

    admin = await asyncpg.connect(services.database_url.replace("+asyncpg", "", 1))
    try:
        query = "SELECT count(*) FROM pg_database WHERE datname = $1"
        assert await admin.fetchval(query, database) == 0
    finally:
        await admin.close()
    leftover = Broker(services.amqp_url, prefix)
    await leftover.open()
    try:
        with pytest.raises(Exception, match="NOT_FOUND"):
            await leftover.depth(leftover.topology.worker_queue)
    finally:
        await leftover.close()
