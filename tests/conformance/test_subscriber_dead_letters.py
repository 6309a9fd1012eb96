"""A subscriber's named queue survives an event its handler cannot take (issue 18, item 4): the
event is delivered once and redelivered `delivery_limit` times (RabbitMQ's `x-delivery-limit`
counts the returns), then parked in `<queue>.dead` with the reason in RabbitMQ's headers, and
the events behind it keep flowing. On both backends."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from contracts.identity import EVENT_ID_NAMESPACE
from contracts.testing import CouponBackend

LIMIT = 3


@pytest.fixture(params=["memory", "real"])
def coupon_backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_an_event_whose_handler_keeps_failing_is_parked_not_looped(
    coupon_backend: CouponBackend,
) -> None:
    client = coupon_backend.client
    queue = f"{coupon_backend.topology.prefix}conformance.parking"
    options: dict[str, Any] = {"queue": queue, "delivery_limit": LIMIT, "prefetch": 1}
    try:
        async with client.subscribe(["coupon.created"], **options):
            pass  # declares the queue and its dead-letter queue: events wait from now on
        await client.create("PARK-BAD", 1, message_id="park-bad")
        await client.create("PARK-OK", 1, message_id="park-ok")
        tries: list[bool] = []  # `redelivered` of each delivery of the bad event
        counts: list[object] = []  # and its `x-delivery-count` header
        handled: list[str] = []
        for _ in range(LIMIT + 3):  # more rounds than the limit allows: it must stop by itself
            try:
                async with client.subscribe(["coupon.created"], **options) as events:
                    async for received in events:
                        code = received.json()["code"]
                        if code == "PARK-BAD":
                            tries.append(received.redelivered)
                            counts.append(received.headers.get("x-delivery-count"))
                            raise RuntimeError("cannot bill")
                        handled.append(code)
                        break
            except RuntimeError:
                continue
            break
        assert tries == [False] + [True] * (len(tries) - 1)
        assert len(tries) == LIMIT + 1
        assert counts == [None, *range(1, LIMIT + 1)]
        assert handled == ["PARK-OK"]  # the event behind it flowed on

        [parked] = await coupon_backend.take_queue(f"{queue}.dead")
        assert parked.properties.message_id == str(uuid.uuid5(EVENT_ID_NAMESPACE, "park-bad"))
        headers = parked.header_values()
        assert headers["x-first-death-reason"] == "delivery_limit"
        assert headers["x-first-death-queue"] == queue
        [death] = headers["x-death"]
        assert (death["reason"], death["queue"]) == ("delivery_limit", queue)
        assert await coupon_backend.take_queue(queue) == []
    finally:
        await coupon_backend.delete_queue(queue)
        await coupon_backend.delete_queue(f"{queue}.dead")
