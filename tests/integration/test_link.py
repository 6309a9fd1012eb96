"""A link knows when and why the broker blocks it, on the real broker's memory alarm.

aiormq offers no callback for `connection.blocked` / `connection.unblocked`; the link wraps the
two frame handlers of its aiormq connection object (worker/messaging/link.py). This test fails
if a new aiormq stops calling them, instead of the worker silently losing its `broker_blocked`
handling.

DISRUPTIVE: an alarm blocks every publisher on the broker; the watermark is put back in a
`finally` (tests/support/outages.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aio_pika
import pytest

from tests.support.outages import memory_alarm, restore_all
from tests.support.services import Services
from worker.messaging.link import open_link
from worker.settings import Settings

pytestmark = [pytest.mark.disruptive, pytest.mark.timeout(120)]


@pytest.fixture(autouse=True)
def services_restored() -> Iterator[None]:
    yield
    restore_all()


async def until(condition: object, within: float = 15.0) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"not within {within}s"
        await asyncio.sleep(0.05)


async def test_a_link_knows_when_and_why_the_broker_blocks_it(
    services: Services, settings: Settings
) -> None:
    changes: list[bool] = []
    link = await open_link(
        settings.broker_urls(), "publish", attempt_timeout=5, on_block=changes.append
    )
    try:
        channel = await link.connection.channel(publisher_confirms=True)
        async with memory_alarm(services.amqp_url):
            assert not link.blocked  # a connection is blocked once it publishes
            message = aio_pika.Message(b"blocked?")
            publish = asyncio.ensure_future(
                channel.default_exchange.publish(message, routing_key="link-test-nowhere")
            )
            await until(lambda: link.blocked)
            assert link.block_reason == "low on memory"
            assert not link.unblocked.is_set() and link.is_open
            await asyncio.sleep(0.5)
            assert not publish.done(), "confirmed while the broker was blocking the connection"
        await until(lambda: not link.blocked)
        await asyncio.wait_for(publish, 15)  # read and confirmed once the alarm cleared
        assert changes == [True, False]
        assert link.unblocked.is_set() and link.is_open
    finally:
        await link.close()
