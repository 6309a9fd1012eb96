"""Invalid commands, end to end: each dead-lettered once with its reason, nothing written, the
sender told on its reply_to, and the valid commands around them still processed."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, names
from tests.conftest import StartWorker
from tests.e2e.observe import coupons, processed, wait_caused
from tests.support.broker import Broker
from tests.support.invalid_inputs import Entry, corpus

# Every invalid entry of the one table (tests/support/invalid_inputs.py); each is sent with a
# reply_to, except the one without a message_id (another client publishes it) and the get
# whose missing reply_to is its fault.
CASES = [entry for entry in corpus("E2E") if entry.error is not None]


def replies_to(case: Entry) -> bool:
    return not case.without_message_id and case.routing_key != names.GET


def obj(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


CREATE = names.CREATE


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

    invalid: dict[str | None, Entry] = {}
    await send_valid()
    for case in CASES:
        if case.without_message_id:
            await asyncio.to_thread(broker.send_without_message_id, case.routing_key, case.body)
            invalid[None] = case
        else:
            message_id = await broker.send_raw(
                case.routing_key,
                case.body,
                content_type=case.content_type,
                reply_to=reply_to if replies_to(case) else None,
                correlation_id=case.name,
                app_id="e2e-tests",
                timestamp=sent_at,
                headers={"x-test-case": case.name},
                **case.properties,
            )
            invalid[message_id] = case
        await send_valid()

    # The valid commands on both sides of every invalid one are processed.
    await wait_caused(events, list(valid))
    answered = [case for case in CASES if replies_to(case)]
    await replies.wait_for(len(answered), what="replies to invalid commands")
    # A clean stop finishes everything delivered: after it, the dead queue is complete.
    assert await worker.stop() == 0
    assert await broker.depth(broker.topology.worker_queue) == 0

    dead = await broker.dead_letters()
    # Found by message_id; the one sent without gets one from the client library on the way
    # to the dead letters (see the test below), and is found by its x-error.
    by_id: dict[str | None, AbstractIncomingMessage] = {
        m.message_id if m.message_id in invalid else None: m for m in dead
    }
    assert len(dead) == len(CASES), [m.message_id for m in dead]
    assert set(by_id) == set(invalid)
    problems = []
    for sent_id, case in invalid.items():
        letter = by_id[sent_id]
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
        if sent_id is not None:
            expected = {
                "message_id": sent_id,
                "type": case.properties.get("type"),
                "content_encoding": case.properties.get("content_encoding"),
                "correlation_id": case.name,
                "reply_to": reply_to if replies_to(case) else None,
                "app_id": "e2e-tests",
                "timestamp": sent_at,
                "x-test-case": case.name,
            }
            actual = {
                "message_id": letter.message_id,
                "type": letter.type,
                "content_encoding": letter.content_encoding,
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
    await replies.wait_quiet()
    await events.wait_quiet()
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
