"""Invalid commands, end to end: each dead-lettered once with its reason, nothing written, the
sender told on its reply_to, and the valid commands around them still processed."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, names
from tests.conftest import StartWorker
from tests.e2e.observe import coupons, processed, wait_caused
from tests.support.broker import Broker


@dataclass(frozen=True)
class Case:
    name: str
    routing_key: str
    body: bytes
    error: str
    content_type: str = "application/json"
    type: str | None = None
    reply: bool = True  # send with a reply_to
    message_id: bool = True


def obj(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


CREATE, REDEEM, GET = names.CREATE, names.REDEEM, names.GET
INVALID_JSON, INVALID, UNKNOWN = "InvalidJson", "InvalidCommand", "UnknownCommand"

CASES = [
    Case("not-json", CREATE, b'{"code": "INV-1", "init_count": ', INVALID_JSON),
    Case("json-array", CREATE, b'[{"code": "INV-2", "init_count": 1}]', INVALID),
    Case("missing-field", CREATE, obj(code="INV-3"), INVALID),
    Case("extra-field", CREATE, obj(code="INV-4", init_count=1, discount=5), INVALID),
    Case("boolean-count", CREATE, obj(code="INV-5", init_count=True), INVALID),
    Case("float-count", CREATE, obj(code="INV-6", init_count=3.0), INVALID),
    Case("negative-count", CREATE, obj(code="INV-7", init_count=-1), INVALID),
    Case("zero-count", CREATE, obj(code="INV-8", init_count=0), INVALID),
    Case("huge-count", CREATE, obj(code="INV-9", init_count=1_000_000_001), INVALID),
    Case("too-long-code", CREATE, obj(code="C" * 65, init_count=1), INVALID),
    Case("bad-characters", CREATE, obj(code="INV 11!", init_count=1), INVALID),
    Case("empty-code", CREATE, obj(code="", init_count=1), INVALID),
    Case("unknown-routing-key", "coupon.delete", obj(code="INV-13"), UNKNOWN),
    Case(
        "missing-message-id",
        CREATE,
        obj(code="INV-14", init_count=1),
        "MissingMessageId",
        reply=False,
        message_id=False,
    ),
    Case(
        "oversized",
        CREATE,
        obj(code="INV-15", init_count=1, pad="x" * (64 * 1024)),
        "TooLarge",
    ),
    Case(
        "wrong-content-type",
        CREATE,
        obj(code="INV-16", init_count=1),
        "UnsupportedContentType",
        content_type="text/plain",
    ),
    Case("type-mismatch", CREATE, obj(code="INV-17", init_count=1), INVALID, type=REDEEM),
    Case("get-without-reply-to", GET, obj(code="VALID-0"), INVALID, reply=False),
]


@pytest.mark.timeout(90)
async def test_each_invalid_command_is_dead_lettered_once_and_writes_nothing(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine
) -> None:
    events = await broker.collect_events()
    reply_to, replies = await broker.reply_queue()
    worker = start_worker()
    await worker.wait_ready()
    sent_at = datetime.now(UTC).replace(microsecond=0)

    valid: dict[str, str] = {}  # message_id -> code

    async def send_valid() -> None:
        code = f"VALID-{len(valid)}"
        valid[await broker.send(CreateCoupon(code=code, init_count=2))] = code

    invalid: dict[str | None, Case] = {}
    await send_valid()
    for case in CASES:
        if case.message_id:
            message_id = await broker.send_raw(
                case.routing_key,
                case.body,
                content_type=case.content_type,
                type=case.type,
                reply_to=reply_to if case.reply else None,
                correlation_id=case.name,
                app_id="e2e-tests",
                timestamp=sent_at,
                headers={"x-test-case": case.name},
            )
            invalid[message_id] = case
        else:
            await asyncio.to_thread(broker.send_without_message_id, case.routing_key, case.body)
            invalid[None] = case
        await send_valid()

    # The valid commands on both sides of every invalid one are processed.
    await wait_caused(events, list(valid))
    answered = [case for case in CASES if case.reply]
    await replies.wait_for(len(answered), what="replies to invalid commands")
    # A clean stop finishes everything delivered: after it, the dead queue is complete.
    assert await worker.stop() == 0
    assert await broker.depth(broker.topology.worker_queue) == 0

    dead = await broker.dead_letters()
    # Every case has a body of its own: that is how its dead letter is found.
    by_body: dict[bytes, AbstractIncomingMessage] = {m.body: m for m in dead}
    assert len(dead) == len(CASES), [m.message_id for m in dead]
    assert set(by_body) == {case.body for case in CASES}
    problems = []
    for sent_id, case in invalid.items():
        letter = by_body[case.body]
        headers = letter.headers or {}
        if headers.get(names.ERROR_HEADER) != case.error:
            problems.append(f"{case.name}: x-error {headers.get(names.ERROR_HEADER)!r}")
        detail = headers.get(names.ERROR_DETAIL_HEADER)
        if not isinstance(detail, str) or not detail.strip():
            problems.append(f"{case.name}: x-error-detail {detail!r}")
        if letter.body != case.body or letter.routing_key != case.routing_key:
            problems.append(f"{case.name}: body or routing key changed")
        if letter.content_type != case.content_type or letter.delivery_mode != 2:
            problems.append(f"{case.name}: content_type/delivery_mode changed")
        if case.message_id:
            expected = {
                "message_id": sent_id,
                "type": case.type,
                "correlation_id": case.name,
                "reply_to": reply_to if case.reply else None,
                "app_id": "e2e-tests",
                "timestamp": sent_at,
                "x-test-case": case.name,
            }
            actual = {
                "message_id": letter.message_id,
                "type": letter.type,
                "correlation_id": letter.correlation_id,
                "reply_to": letter.reply_to,
                "app_id": letter.app_id,
                "timestamp": letter.timestamp,
                "x-test-case": headers.get("x-test-case"),
            }
            if actual != expected:
                problems.append(f"{case.name}: properties {actual} != {expected}")
    assert problems == []

    # Every sender that gave a reply_to was told why, once, as the contract says.
    told = {m.correlation_id: m for m in replies.messages}
    assert len(replies.messages) == len(answered)
    assert set(told) == {case.name for case in answered}
    for message in replies.messages:
        reply = json.loads(message.body)
        assert reply["error"] == "InvalidCommand", reply
        assert isinstance(reply["detail"], str) and reply["detail"].strip()
        assert message.content_type == names.JSON_CONTENT_TYPE

    # Only the valid commands changed anything.
    assert await coupons(db) == dict.fromkeys(valid.values(), (2, 2))
    assert set(await processed(db)) == set(valid)
    assert {m.type for m in events.messages} == {"coupon.created"}
    assert len(events.messages) == len(valid)


async def test_the_dead_letter_of_a_command_without_message_id_says_it_had_none(
    broker: Broker, start_worker: StartWorker
) -> None:
    """aiormq stamps a random message_id on every publish that has none, the worker's
    dead-letter copy included, and AMQP 0-9-1 cannot add headers while RabbitMQ dead-letters
    natively: the copy of a command that had no message_id carries a fresh one, and its
    x-error says the original had none (documented in the README)."""
    worker = start_worker()
    await worker.wait_ready()
    await asyncio.to_thread(broker.send_without_message_id, CREATE, obj(code="NO-ID", init_count=1))
    assert await worker.stop() == 0
    [letter] = await broker.dead_letters()
    assert (letter.headers or {}).get(names.ERROR_HEADER) == "MissingMessageId"
    assert "message_id" in str((letter.headers or {}).get(names.ERROR_DETAIL_HEADER))
