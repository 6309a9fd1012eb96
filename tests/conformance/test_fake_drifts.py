"""One conformance case for each way the in-memory fake once drifted from the worker where no
test looked (issue 18), on both backends; and the two deliberate changes to the fake that
passed every test before (a `coupon.get` answered from a cache by message id; duplicates keyed
on (message id, routing key)) each fail a case here."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import ClassVar

import pytest

from contracts import (
    Command,
    CommandUnroutable,
    CouponCreated,
    CouponRedeemed,
    RequestTimeout,
    names,
)
from contracts.recording import RecordedMessage
from contracts.testing import CouponBackend, EventCollector
from contracts.testing.backends import MemoryBackend


class Refund(Command):
    """A command no worker queue is bound to (its key is outside `coupon.*`)."""

    routing_key: ClassVar[str] = "refund.coupon"


@pytest.fixture(params=["memory", "real"])
def coupon_backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_a_command_is_applied_after_its_publish_and_a_request_can_time_out(
    coupon_backend: CouponBackend,
) -> None:
    """Drifts: the fake applied commands at publish time, and never raised RequestTimeout."""
    client = coupon_backend.client
    with pytest.raises(RequestTimeout) as timed_out:
        await client.create("DRIFT-T", 2, message_id="drift-t", within=0)
    assert timed_out.value.message_id == "drift-t"
    # The documented recovery: the same message_id again learns the outcome, applied once.
    created = await client.create("DRIFT-T", 2, message_id="drift-t")
    assert isinstance(created, CouponCreated) and created.remaining_count == 2


async def test_an_unroutable_command_raises_the_same_error_on_both(
    coupon_backend: CouponBackend,
) -> None:
    """Drift: the fake raised its own `Unroutable`, the real client aio-pika's DeliveryError."""
    with pytest.raises(CommandUnroutable) as refused:
        await coupon_backend.client.send(Refund(code="X"), message_id="drift-u")
    assert (refused.value.routing_key, refused.value.message_id) == ("refund.coupon", "drift-u")
    raw = RecordedMessage.of(
        coupon_backend.topology.commands_exchange, "refund.coupon", b"{}", {"message_id": "u2"}
    )
    with pytest.raises(CommandUnroutable):
        await coupon_backend.publish(raw)


async def test_a_dead_letter_says_when_it_was_dead_lettered(
    coupon_backend: CouponBackend,
) -> None:
    """Drift: the fake's dead letters had no `x-dead-lettered-at`."""
    await coupon_backend.publish(
        RecordedMessage.of(
            coupon_backend.topology.commands_exchange,
            names.CREATE,
            b"{not json",
            {"message_id": "drift-d", "content_type": names.JSON_CONTENT_TYPE},
        )
    )
    letters: list[RecordedMessage] = []
    for _ in range(100):
        letters += await coupon_backend.dead_letters()
        if letters:
            break
        await asyncio.sleep(0.05)
    [letter] = letters
    assert letter.headers[names.ERROR_HEADER] == "InvalidJson"
    assert isinstance(letter.header_values()[names.DEAD_LETTERED_AT_HEADER], datetime)


async def test_a_repeated_command_is_published_again_with_its_first_timestamp(
    coupon_backend: CouponBackend, coupon_events: EventCollector
) -> None:
    """Drift: the fake gave a duplicate's event a fresh timestamp."""
    client = coupon_backend.client
    await client.create("DRIFT-S", 1, message_id="drift-s")
    await asyncio.sleep(1.1)  # AMQP timestamps count whole seconds
    await client.create("DRIFT-S", 1, message_id="drift-s")
    first, again = await coupon_events.wait_for("coupon.created", count=2)
    assert first.body == again.body and first.message_id == again.message_id
    assert first.timestamp is not None and first.timestamp == again.timestamp


async def test_a_get_is_answered_fresh_even_under_a_message_id_seen_before(
    coupon_backend: CouponBackend,
) -> None:
    """Catches the fake that caches `coupon.get` answers by message id."""
    client = coupon_backend.client
    await client.create("DRIFT-G", 3)
    assert (await client.get("DRIFT-G", message_id="drift-g")).remaining_count == 3
    await client.redeem("DRIFT-G")
    assert (await client.get("DRIFT-G", message_id="drift-g")).remaining_count == 2


async def test_one_message_id_is_one_effect_whatever_the_command(
    coupon_backend: CouponBackend, coupon_events: EventCollector
) -> None:
    """Catches the fake that keys duplicates on (message id, routing key): a redeem sent under
    the message_id of an earlier create is that create again, answered with its outcome."""
    client = coupon_backend.client
    created = await client.create("DRIFT-K", 2, message_id="drift-k")
    with pytest.raises(TypeError, match=r"expected coupon\.redeemed"):
        await client.redeem("DRIFT-K", message_id="drift-k")  # the answer is coupon.created
    redeemed = await client.redeem("DRIFT-K")
    assert isinstance(redeemed, CouponRedeemed) and redeemed.remaining_count == 1
    [first, again, _] = await coupon_events.wait_for(count=3)
    assert (first.routing_key, again.routing_key) == ("coupon.created", "coupon.created")
    assert again.body == created.model_dump_json().encode()


async def test_the_fake_stamps_a_message_id_on_the_dead_letter_of_a_command_without_one() -> None:
    """Drift: the fake left such a dead letter without a message_id, while the worker's copy
    carries one that its client library stamped (contract, "Invalid commands"; the real side
    is tests/e2e/test_invalid_commands.py, which needs a client that can omit the id)."""
    backend = MemoryBackend()
    try:
        await backend.publish(
            RecordedMessage.of(
                backend.topology.commands_exchange,
                names.CREATE,
                b'{"code": "NO-ID", "init_count": 1}',
                {"content_type": names.JSON_CONTENT_TYPE},
            )
        )
        letters: list[RecordedMessage] = []
        for _ in range(100):
            letters += await backend.dead_letters()
            if letters:
                break
            await asyncio.sleep(0.01)
        [letter] = letters
        assert letter.headers[names.ERROR_HEADER] == "MissingMessageId"
        assert letter.properties.message_id
    finally:
        await backend.aclose()
