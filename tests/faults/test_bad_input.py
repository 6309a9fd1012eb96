"""Bad input at scale (contract v1, "Invalid commands"): a hand-written corpus and thousands of
generated bodies, interleaved with valid commands, against one worker process. Not one crash,
each invalid command dead-lettered exactly once with its specific `x-error`, no database effect
from any of them, and every valid command processed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon, names
from contracts.messages import command_message
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.contract_rules import expected_error
from tests.support.invalid_inputs import Entry, corpus
from tests.support.ledger import Expect, Ledger, _reason
from worker.db import tables

pytestmark = pytest.mark.faults

GENERATED = 2_400
VALID_EVERY = 4  # one valid command after every 4 invalid-or-generated ones


@dataclass(frozen=True)
class Generated:
    routing_key: str
    body: bytes


# --- generated bodies ------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities included: json.dumps writes them, strict JSON refuses
    | st.text(max_size=24)
)
_json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_codes = (
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
    | st.from_regex(r"[A-Za-z0-9_-]{60,70}", fullmatch=True)
    | st.text(max_size=70)
    | st.sampled_from(["", "'); DROP TABLE coupon;--", "' OR '1'='1", "A\n", "\x00"])
    | _scalars
)
_counts = (
    st.integers(min_value=-3, max_value=1_000_000_003)
    | st.sampled_from([0, 1, 10**9, 10**9 + 1, 2**31, 2**63, -(2**63)])
    | _json_values
)
_near_valid = st.fixed_dictionaries(
    {"code": _codes}, optional={"init_count": _counts, "extra": _json_values}
)
_bodies = st.one_of(
    st.builds(
        lambda v, a: json.dumps(v, ensure_ascii=a).encode("utf-8", "surrogatepass"),
        _json_values,
        st.booleans(),
    ),
    st.builds(
        lambda v, a: json.dumps(v, ensure_ascii=a).encode("utf-8", "surrogatepass"),
        _near_valid,
        st.booleans(),
    ),
    st.binary(max_size=300),
)
_routing_keys = st.sampled_from([names.CREATE, names.CREATE, names.REDEEM, names.REDEEM, names.GET])


def generate_bodies(count: int) -> list[Generated]:
    """`count` bodies from hypothesis: derandomized (seeded from the test, not the clock),
    generation only; the figures line prints a digest of the set for comparison."""
    drawn: list[Generated] = []

    @hypothesis_settings(
        max_examples=count,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_routing_keys, _bodies)
    def draw(routing_key: str, body: bytes) -> None:
        drawn.append(Generated(routing_key, body))

    draw()
    return drawn


# --- sending ---------------------------------------------------------------------------------


@dataclass
class Sent:
    message_id: str | None
    routing_key: str
    body: bytes
    error: str | None
    source: str  # "corpus", "generated" or "valid"


async def _publish_all(broker: Broker, ledger: Ledger, items: list[Any]) -> list[Sent]:
    """Publish in order, 32 confirms in flight; record each in the ledger."""
    slots = asyncio.Semaphore(32)
    sent: list[Sent] = []

    async def one(item: Any) -> None:
        async with slots:
            sent.append(await _publish(broker, ledger, item))

    await asyncio.gather(*(one(item) for item in items))
    return sent


async def _publish(broker: Broker, ledger: Ledger, item: Any) -> Sent:
    if isinstance(item, Entry):
        if item.without_message_id:
            await asyncio.to_thread(broker.send_without_message_id, item.routing_key, item.body)
            return Sent(None, item.routing_key, item.body, item.error, "corpus")
        message_id = await broker.send_raw(
            item.routing_key, item.body, content_type=item.content_type, **item.properties
        )
        _record(ledger, message_id, item.routing_key, item.body, item.error)
        return Sent(message_id, item.routing_key, item.body, item.error, "corpus")
    if isinstance(item, Generated):
        message_id = str(uuid.uuid4())
        # The expected x-error comes from an independent reading of the contract, never from
        # the worker's own decoder (tests/support/contract_rules.py imports nothing of it).
        error = expected_error(item.routing_key, item.body, message_id=message_id)
        await broker.send_raw(item.routing_key, item.body, message_id=message_id)
        _record(ledger, message_id, item.routing_key, item.body, error)
        return Sent(message_id, item.routing_key, item.body, error, "generated")
    message = command_message(item)
    await broker.send(item, message_id=message.message_id)
    ledger.record(message.message_id, message.routing_key, message.body)
    return Sent(message.message_id, message.routing_key, message.body, None, "valid")


def _record(
    ledger: Ledger, message_id: str, routing_key: str, body: bytes, error: str | None
) -> None:
    if error is None:
        ledger.record(message_id, routing_key, body)
    else:
        # The ledger reads a command's body only to find its coupon code; an invalid command
        # has none to credit (and some of these bodies are too deep for `json.loads`). The
        # dead letters' bodies are compared with what was sent by the test itself.
        ledger.record(message_id, routing_key, b"", Expect.DEAD_LETTER, error=error)


def _interleaved(bad: list[Any], tag: str, bases: list[str]) -> Iterator[Any]:
    for n, item in enumerate(bad):
        yield item
        if n % VALID_EVERY == VALID_EVERY - 1:
            k = n // VALID_EVERY
            yield (
                CreateCoupon(code=f"{tag}-v{k}", init_count=3)
                if k % 2
                else RedeemCoupon(code=bases[k % len(bases)])
            )


@pytest.mark.timeout(300)
async def test_bad_input_at_scale_is_dead_lettered_once_each_and_harms_nothing(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    tag = f"BAD-{uuid.uuid4().hex[:6]}"
    entries = corpus(tag)
    generated = generate_bodies(GENERATED)
    assert len(generated) >= 2_000
    ledger = Ledger(broker)
    await ledger.start()
    worker = start_worker()
    await worker.wait_ready()

    # Coupons the interleaved redeems draw on, and the corpus's valid creates, exist first.
    bases = [f"{tag}-base{n}" for n in range(5)]
    await ledger.send_many((CreateCoupon(code=code, init_count=10_000), None) for code in bases)
    valid_creates = [e for e in entries if e.error is None and e.routing_key == names.CREATE]
    await _publish_all(broker, ledger, list(valid_creates))
    await ledger.wait_outcomes(within=30)

    # An invalid command with a reply_to: the sender is told.
    reply_to, replies = await broker.reply_queue()
    told_id = await broker.send_raw(
        names.CREATE, b'{"code": "Z", "init_count": 0}', reply_to=reply_to
    )
    ledger.record(told_id, names.CREATE, b"", Expect.DEAD_LETTER, error="InvalidCommand")

    rest = [e for e in entries if e not in valid_creates]
    bad: list[Any] = [*rest, *generated]
    sent = await _publish_all(broker, ledger, list(_interleaved(bad, tag, bases)))

    await ledger.wait_settled(within=240, quiet=1.0)
    expected_dead = len(ledger.expected(Expect.DEAD_LETTER)) + sum(
        1 for s in sent if s.message_id is None
    )
    dead = await broker.wait_dead_letters(expected_dead, within=120, quiet=1.0)
    # The command sent without a message_id comes back with one that aiormq stamped on the
    # worker's dead-letter publish (it stamps every publish that has none): not one of ours.
    anonymous = [m for m in dead if m.message_id not in ledger.commands]
    named = [m for m in dead if m.message_id in ledger.commands]
    report = await ledger.check(db, named)

    await replies.wait_for(1)
    reply = replies.messages[0]
    errors = Counter(_reason(m) for m in dead)
    generated_valid = sum(1 for s in sent if s.source == "generated" and s.error is None)
    async with db.connect() as connection:
        codes = set((await connection.scalars(select(tables.coupon.c.code))).all())
    created_codes = {
        json.loads(c.body)["code"] for c in ledger.copies if c.routing_key == names.CREATED
    }
    problems = [r for r in worker.records if r.get("level") in ("error", "critical")]
    report.emit(
        "bad input",
        capsys,
        corpus=len(entries),
        generated=len(generated),
        generated_sha1=hashlib.sha1(
            b"".join(g.routing_key.encode() + g.body for g in generated)
        ).hexdigest()[:12],
        generated_valid=generated_valid,
        valid_interleaved=sum(1 for s in sent if s.source == "valid"),
        dead_lettered_in_all=len(dead),
        worker_running_at_end=worker.running(),
        worker_started=len(worker.events("worker_ready")),
        error_log_lines=len(problems),
        x_errors=",".join(f"{k}:{v}" for k, v in sorted(errors.items())),
    )

    assert worker.running(), worker.output[-3000:]
    assert len(worker.events("worker_ready")) == 1
    assert not problems, problems[:5]
    # The one without a message_id cannot be told apart by id: it is there once, with its code.
    assert [_reason(m) for m in anonymous] == ["MissingMessageId"]
    assert [m.body for m in anonymous] == [s.body for s in sent if s.message_id is None]
    assert len(dead) == expected_dead
    originals = {s.message_id: s.body for s in sent if s.message_id}
    for message in dead:
        headers = message.headers or {}
        detail = headers.get(names.ERROR_DETAIL_HEADER)
        assert isinstance(detail, str) and 0 < len(detail) <= 500, headers
        if message.message_id in originals:
            assert message.body == originals[message.message_id], "dead letter body altered"
    # No effect from any invalid command: every coupon came from a valid create's event.
    assert codes == created_codes
    assert report.lost == 0 and report.doubled == 0
    report.assert_ok()
    assert reply.type == names.INVALID and reply.correlation_id == told_id
    assert json.loads(reply.body)["error"] == "InvalidCommand"
    assert (reply.headers or {}).get(names.ERROR_HEADER) == "InvalidCommand"
