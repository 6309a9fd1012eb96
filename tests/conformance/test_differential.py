"""The fake cannot drift: random command streams, run on the in-memory backend and on the real
worker (RabbitMQ, PostgreSQL, a `coupon-worker run` process), must give the same outcomes.

Each stream mixes creates, redeems and gets over many codes and one hot code, codes never
created, repeats of an earlier command under its `message_id`, other commands that reuse an
earlier `message_id`, and invalid bodies. Both backends replay it serially
(`CouponBackend.replay`) and are compared on: each command's outcome type, body (error wording
included) and event `message_id`; the events broadcast on `coupon.events` (type, `message_id`,
`causation_id`, body); and the dead letters (`x-error`, `x-error-detail`, and the presence of
`x-dead-lettered-at`). One real worker serves every example: an example's codes and message ids
carry a salt of its own, so examples never see each other's coupons; the fake is fresh for each.

A fixed profile keeps it to a bounded run in CI (`max_examples`, a seed, no example database):
about a minute on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from contracts import names
from contracts.recording import RecordedMessage
from contracts.testing import CouponBackend, EventCollector, ReplayOutcome
from contracts.testing.backends import MemoryBackend, open_backend

MAX_EXAMPLES = 25
CODES = 8  # code 0 is the hot one


@dataclass(frozen=True)
class Step:
    """One command of a stream: `repeat_of` resends an earlier step's message as it was;
    `reuse_id_of` sends this command under an earlier step's message_id."""

    routing_key: str
    body: bytes
    repeat_of: int | None = None
    reuse_id_of: int | None = None


codes = st.one_of(st.just(0), st.integers(0, CODES - 1))  # one hot code among many


def _command(kind: str, code: int, count: int) -> Step:
    body: dict[str, Any] = {"code": f"C{code}"}
    if kind == "create":
        body["init_count"] = count
    return Step(f"coupon.{kind}", json.dumps(body).encode())


commands = st.builds(
    _command, st.sampled_from(["create", "redeem", "redeem", "get"]), codes, st.integers(1, 3)
)
invalid = st.builds(
    Step,
    st.sampled_from([names.CREATE, names.REDEEM, names.GET, "coupon.refund"]),
    st.sampled_from(
        [b"{not json", b"[]", b'{"code": "C0", "init_count": 0}', b'{"code": "no spaces"}']
    ),
)


@st.composite
def streams(draw: st.DrawFn) -> list[Step]:
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 16))):
        choice = draw(st.sampled_from(["command"] * 6 + ["repeat", "reuse", "invalid"]))
        if choice == "invalid":
            steps.append(draw(invalid))
        elif choice in ("repeat", "reuse") and steps:
            earlier = draw(st.integers(0, len(steps) - 1))
            if choice == "repeat":
                steps.append(Step(steps[earlier].routing_key, steps[earlier].body, earlier))
            else:
                command = draw(commands)
                steps.append(Step(command.routing_key, command.body, reuse_id_of=earlier))
        else:
            steps.append(draw(commands))
    return steps


def messages(steps: list[Step], salt: str, exchange: str) -> list[RecordedMessage]:
    """The stream as messages: codes and message ids carry the example's salt."""
    ids: list[str] = []
    result = []
    for index, step in enumerate(steps):
        if step.repeat_of is not None:
            message_id = ids[step.repeat_of]
        elif step.reuse_id_of is not None:
            message_id = ids[step.reuse_id_of]
        else:
            message_id = f"{salt}-{index}"
        ids.append(message_id)
        body = step.body.replace(b'"C', f'"{salt}C'.encode())
        properties = {"message_id": message_id, "content_type": names.JSON_CONTENT_TYPE}
        result.append(RecordedMessage.of(exchange, step.routing_key, body, properties))
    return result


def comparable_outcomes(outcomes: list[ReplayOutcome]) -> list[tuple[Any, ...]]:
    return [(o.command, o.routing_key, o.message_id, o.error, o.body) for o in outcomes]


def comparable_events(collector: EventCollector, salt: str) -> list[tuple[Any, ...]]:
    return sorted(
        (r.routing_key, r.message_id, r.causation_id, r.body)
        for r in collector.received
        if str(r.causation_id).startswith(f"{salt}-")
    )


def comparable_letters(letters: list[RecordedMessage]) -> list[tuple[Any, ...]]:
    return sorted(
        (
            letter.properties.message_id,
            letter.routing_key,
            letter.body_bytes(),
            letter.headers.get(names.ERROR_HEADER),
            letter.headers.get(names.ERROR_DETAIL_HEADER),
            names.DEAD_LETTERED_AT_HEADER in letter.headers,
        )
        for letter in letters
    )


@dataclass
class Real:
    backend: CouponBackend
    events: EventCollector


@pytest.fixture(scope="module")
async def real() -> AsyncIterator[Real]:
    backend = await open_backend("real")
    try:
        yield Real(backend, await backend.events())
    finally:
        await backend.aclose()


async def run(
    backend: CouponBackend, events: EventCollector, steps: list[Step], salt: str
) -> tuple[list[tuple[Any, ...]], ...]:
    outcomes = await backend.replay(messages(steps, salt, backend.topology.commands_exchange))
    broadcast = [o for o in outcomes if o.routing_key not in (names.FOUND, names.INVALID)]
    broadcast = [o for o in broadcast if o.command != names.GET]
    await events.wait_for(
        where=lambda r: str(r.causation_id).startswith(f"{salt}-"), count=len(broadcast)
    )
    invalid = sum(o.routing_key == names.INVALID for o in outcomes)
    letters: list[RecordedMessage] = []
    for _ in range(100):
        letters += await backend.dead_letters()
        if len(letters) >= invalid:
            break
        await asyncio.sleep(0.05)
    return (
        comparable_outcomes(outcomes),
        comparable_events(events, salt),
        comparable_letters(letters),
    )


@pytest.mark.timeout(300)
@seed(20261205)
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=streams())
async def test_the_fake_and_the_worker_answer_every_stream_alike(
    real: Real, steps: list[Step]
) -> None:
    salt = f"d{uuid.uuid4().hex[:8]}"
    fake = MemoryBackend()
    try:
        expected = await run(real.backend, real.events, steps, salt)
        actual = await run(fake, await fake.events(), steps, salt)
    finally:
        await fake.aclose()
    for what, theirs, ours in zip(
        ("outcomes", "events", "dead letters"), expected, actual, strict=True
    ):
        assert ours == theirs, f"the fake's {what} differ from the worker's for {steps}"
