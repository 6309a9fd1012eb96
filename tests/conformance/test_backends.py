"""One contract, two backends: every test here runs against the real worker (RabbitMQ,
PostgreSQL, a `coupon-worker run` process) and against the plugin's in-memory fake, and must
pass on both. This is what keeps the fake honest."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from contracts import (
    CouponCreated,
    CouponFound,
    CouponRedeemed,
    CreateCoupon,
    ErrorKind,
    GetCoupon,
    names,
)
from contracts import RedeemCoupon as Redeem
from contracts.client import AlreadyExists, DoesNotExist, Exhausted
from contracts.identity import COUPON_ID_NAMESPACE, EVENT_ID_NAMESPACE
from contracts.recording import RecordedMessage
from contracts.testing import assert_matches_golden
from contracts.testing.backends import CouponBackend as Backend
from contracts.testing.collector import EventCollector


@pytest.fixture(params=["memory", "real"])
def coupon_backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def event_id(message_id: str) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, message_id))


async def test_create_redeem_get_and_their_typed_errors(coupon_backend: Backend) -> None:
    client = coupon_backend.client
    created = await client.create("CONF-A", 2)
    assert isinstance(created, CouponCreated)
    assert (created.code, created.init_count, created.remaining_count) == ("CONF-A", 2, 2)

    with pytest.raises(AlreadyExists) as already:
        await client.create("CONF-A", 5)
    assert already.value.detail == ErrorKind.ALREADY_EXISTS.detail_for("CONF-A")
    assert already.value.event.command == names.CREATE

    first = await client.redeem("CONF-A")
    assert isinstance(first, CouponRedeemed)
    assert (first.id, first.remaining_count) == (created.id, 1)
    assert (await client.redeem("CONF-A")).remaining_count == 0
    with pytest.raises(Exhausted) as exhausted:
        await client.redeem("CONF-A")
    assert exhausted.value.detail == ErrorKind.EXHAUSTED.detail_for("CONF-A")

    with pytest.raises(DoesNotExist) as missing:
        await client.redeem("CONF-NONE")
    assert missing.value.detail == ErrorKind.DOES_NOT_EXIST.detail_for("CONF-NONE")

    found = await client.get("CONF-A")
    assert isinstance(found, CouponFound)
    assert (found.id, found.init_count, found.remaining_count) == (created.id, 2, 0)
    with pytest.raises(DoesNotExist):
        await client.get("CONF-NONE")


async def test_one_effect_per_message_id_and_the_same_outcome_again(
    coupon_backend: Backend, coupon_events: EventCollector
) -> None:
    client = coupon_backend.client
    await client.create("CONF-B", 5, message_id="conf-b-create")
    once = await client.redeem("CONF-B", message_id="conf-b-redeem")
    again = await client.redeem("CONF-B", message_id="conf-b-redeem")
    assert once == again and once.remaining_count == 4
    assert (await client.get("CONF-B")).remaining_count == 4

    redeemed = await coupon_events.wait_for("coupon.redeemed", count=2)
    assert {r.message_id for r in redeemed} == {event_id("conf-b-redeem")}
    assert {r.causation_id for r in redeemed} == {"conf-b-redeem"}
    assert [r.body for r in redeemed] == [once.model_dump_json().encode()] * 2


async def test_events_carry_the_contract_properties_and_get_is_never_broadcast(
    coupon_backend: Backend, coupon_events: EventCollector
) -> None:
    client = coupon_backend.client
    await client.create("CONF-C", 1, message_id="conf-c", correlation_id="order-7")
    await client.get("CONF-C")
    await client.send(Redeem(code="CONF-C"), message_id="conf-c-redeem")
    [created, redeemed] = await coupon_events.wait_for(count=2)
    assert (created.routing_key, redeemed.routing_key) == ("coupon.created", "coupon.redeemed")
    assert created.message_id == event_id("conf-c")
    assert created.correlation_id == "order-7"
    assert created.causation_id == "conf-c"
    # correlation_id defaults to the command's message_id.
    assert redeemed.correlation_id == "conf-c-redeem"
    assert all(r.routing_key != "coupon.found" for r in coupon_events.received)


async def test_invalid_commands_are_dead_lettered_with_their_reason(
    coupon_backend: Backend,
) -> None:
    exchange = coupon_backend.topology.commands_exchange
    bad = [
        ("conf-bad-json", names.CREATE, b"{not json", None),
        ("conf-bad-field", names.CREATE, b'{"code": "X", "init_count": 0}', None),
        ("conf-bad-get", names.GET, b'{"code": "X"}', None),
        ("conf-unknown", "coupon.explode", b'{"code": "X"}', None),
        ("conf-bad-type", names.REDEEM, b'{"code": "X"}', "text/plain"),
    ]
    for message_id, routing_key, body, content_type in bad:
        await coupon_backend.publish(
            RecordedMessage.of(
                exchange,
                routing_key,
                body,
                {
                    "message_id": message_id,
                    "content_type": content_type or names.JSON_CONTENT_TYPE,
                    "correlation_id": f"{message_id}-corr",
                },
                {"tenant": "t1"},
            )
        )
    letters: list[RecordedMessage] = []
    for _ in range(100):
        letters += await coupon_backend.dead_letters()
        if len(letters) >= len(bad):
            break
        await _pause()
    by_id = {str(letter.properties.message_id): letter for letter in letters}
    assert sorted(by_id) == sorted(message_id for message_id, *_ in bad)
    errors = {key: letter.headers[names.ERROR_HEADER] for key, letter in by_id.items()}
    assert errors == {
        "conf-bad-json": "InvalidJson",
        "conf-bad-field": "InvalidCommand",
        "conf-bad-get": "InvalidCommand",
        "conf-unknown": "UnknownCommand",
        "conf-bad-type": "UnsupportedContentType",
    }
    for message_id, routing_key, body, _ in bad:
        letter = by_id[message_id]
        # The original body, routing key, properties and headers, plus the reason.
        assert (letter.body_bytes(), letter.routing_key) == (body, routing_key)
        assert letter.properties.correlation_id == f"{message_id}-corr"
        assert letter.headers["tenant"] == "t1"
        assert letter.headers[names.ERROR_DETAIL_HEADER]
    with pytest.raises(DoesNotExist):
        await coupon_backend.client.get("X")


async def test_a_subscription_that_raises_gets_the_event_again(coupon_backend: Backend) -> None:
    client = coupon_backend.client
    queue = f"{coupon_backend.topology.prefix}conformance.subscriber"
    try:
        async with client.subscribe(["coupon.created"], queue=queue):
            pass  # declares and binds the durable queue: events wait there from now on
        for code in ("CONF-S1", "CONF-S2"):
            await client.create(code, 1)
        seen: list[tuple[str, bool]] = []
        with pytest.raises(RuntimeError, match="boom"):
            async with client.subscribe(["coupon.created"], queue=queue) as events:
                async for received in events:
                    seen.append((json.loads(received.body)["code"], received.redelivered))
                    if len(seen) == 2:
                        raise RuntimeError("boom")
        async with client.subscribe(["coupon.created"], queue=queue) as events:
            async for received in events:
                seen.append((json.loads(received.body)["code"], received.redelivered))
                break
        # The first event was handled and acknowledged; the second failed and came back.
        assert seen == [("CONF-S1", False), ("CONF-S2", False), ("CONF-S2", True)]
    finally:
        await coupon_backend.delete_queue(queue)


async def test_dedupe_skips_a_republished_outcome(coupon_backend: Backend) -> None:
    client = coupon_backend.client
    codes: list[str] = []
    async with client.subscribe(["coupon.*"], dedupe=100) as events:
        await client.create("CONF-D", 3, message_id="conf-d")
        await client.create("CONF-D", 3, message_id="conf-d")  # the same outcome, again
        await client.redeem("CONF-D")
        async for received in events:
            codes.append(received.routing_key)
            if received.routing_key == "coupon.redeemed":
                break
    assert codes == ["coupon.created", "coupon.redeemed"]


async def test_replay_gives_the_outcomes_in_command_order(coupon_backend: Backend) -> None:
    commands = [
        CreateCoupon(code="CONF-R", init_count=2),
        Redeem(code="CONF-R"),
        GetCoupon(code="CONF-R"),
        Redeem(code="CONF-R"),
        Redeem(code="CONF-R"),
        CreateCoupon(code="CONF-R", init_count=9),
        Redeem(code="CONF-ELSE"),
    ]
    outcomes = await coupon_backend.replay(commands)
    assert [o.routing_key for o in outcomes] == [
        "coupon.created",
        "coupon.redeemed",
        "coupon.found",
        "coupon.redeemed",
        "coupon.error",
        "coupon.error",
        "coupon.error",
    ]
    assert [json.loads(o.body).get("error") for o in outcomes[4:]] == [
        "Exhausted",
        "AlreadyExists",
        "DoesNotExist",
    ]
    assert all(o.message_id == event_id(str(o.command_message_id)) for o in outcomes)


async def test_coupon_ids_derive_from_the_creating_message_id(coupon_backend: Backend) -> None:
    """Needs the deterministic coupon ids of the worker (issue 9, item 1) on the real backend."""
    created = await coupon_backend.client.create("CONF-ID", 1, message_id="conf-id")
    assert created.id == uuid.uuid5(COUPON_ID_NAMESPACE, "conf-id")


async def test_a_replay_matches_the_golden_file_on_both_backends(coupon_backend: Backend) -> None:
    """The same golden file for the fake and the worker: byte-identical outcomes. Needs the
    deterministic coupon ids of the worker (issue 9, item 1) on the real backend."""
    recording = _golden_recording(coupon_backend.topology.commands_exchange)
    outcomes = await coupon_backend.replay(recording)
    assert_matches_golden(outcomes, "conformance.jsonl")


def _golden_recording(exchange: str) -> list[RecordedMessage]:
    def command(index: int, routing_key: str, body: bytes, **properties: str) -> RecordedMessage:
        props = {"message_id": f"golden-{index}", "content_type": names.JSON_CONTENT_TYPE}
        return RecordedMessage.of(exchange, routing_key, body, {**props, **properties})

    return [
        command(1, names.CREATE, b'{"code":"G-1","init_count":2}'),
        command(2, names.REDEEM, b'{"code":"G-1"}'),
        command(3, names.REDEEM, b'{"code":"G-1"}'),
        command(4, names.REDEEM, b'{"code":"G-1"}'),
        command(2, names.REDEEM, b'{"code":"G-1"}'),  # a re-sent command: the same outcome
        command(5, names.GET, b'{"code":"G-1"}'),
        command(6, names.CREATE, b'{"code":"G-1","init_count":7}'),
        command(7, names.REDEEM, b'{"code":"G-2"}'),
        command(8, names.CREATE, b'{"code":"G-2","init_count":1, "extra": true}'),
        command(9, names.CREATE, b"[]"),
        command(10, "coupon.unknown", b"{}"),
    ]


async def _pause() -> None:
    await asyncio.sleep(0.1)
