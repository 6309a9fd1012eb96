"""An in-memory coupon worker and the little of RabbitMQ it needs (no broker, no database).

It behaves as the contract says the worker does, and is checked against the real worker by the
conformance tests (tests/conformance/): commands are validated by the contract's own
`decode_command`; `coupon.create` and `coupon.redeem` are applied once per `message_id` and a
repeat is answered with the stored outcome (same body, same event `message_id`); `coupon.get` is
answered fresh and only on `reply_to`; business failures are `coupon.error` events with the
worker's wording; invalid commands are dead-lettered with `x-error` and `x-error-detail`, and
their sender is told on `reply_to`. Event ids are uuid5 of the command's `message_id` in the
worker's namespace, and a new coupon's id is uuid5 of its creating command's `message_id`.

Like the worker, it applies a command after its publish returned, one at a time in publish
order (the broker hands them to a task of the fake's), so a request can time out
(`RequestTimeout`) and a `send` returns before its effect. A repeat of a write is published
again with the first publication's timestamp; a dead letter carries `x-dead-lettered-at`, and a
message_id even if the command had none.

What it does not model: concurrency between batches, redelivery after crashes, the worker
queue's delivery limit, outages. Use the real backend for those; tests/conformance and the
differential test (tests/conformance/test_differential.py) hold the two together.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from contracts import names
from contracts.commands import Command, CreateCoupon, RedeemCoupon
from contracts.events import (
    CouponCreated,
    CouponError,
    CouponFound,
    CouponRedeemed,
    ErrorKind,
    Event,
    InvalidCommandReply,
)
from contracts.identity import coupon_id, event_message_id
from contracts.names import Topology
from contracts.recording import RecordedMessage, RecordedProperties, encode_header
from contracts.validation import InvalidCommand, decode_command


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is one word, `#` zero or more."""

    def match(words: list[str], keys: list[str]) -> bool:
        if not words:
            return not keys
        head, rest = words[0], words[1:]
        if head == "#":
            return any(match(rest, keys[i:]) for i in range(len(keys) + 1))
        return bool(keys) and head in ("*", keys[0]) and match(rest, keys[1:])

    return match(pattern.split("."), routing_key.split("."))


@dataclass
class _Coupon:
    id: uuid.UUID
    code: str
    init_count: int
    remaining_count: int


@dataclass(frozen=True)
class _Stored:
    routing_key: str
    body: bytes
    occurred_at: datetime  # a repeat is published again with its first timestamp


class FakeWorker:
    """Handles one command message at a time, synchronously, and hands what it publishes to
    `publish(exchange, routing_key_or_queue, message)` (the fake broker)."""

    def __init__(
        self, topology: Topology, publish: Callable[[str, str, RecordedMessage], None]
    ) -> None:
        self.topology = topology
        self._publish = publish
        self.coupons: dict[str, _Coupon] = {}
        self.processed: dict[str, _Stored] = {}

    def handle(self, message: RecordedMessage) -> None:
        p = message.properties
        try:
            command = decode_command(
                message.routing_key,
                message.body_bytes(),
                message_id=p.message_id,
                content_type=p.content_type,
                content_encoding=p.content_encoding,
                type_=p.type,
                reply_to=p.reply_to,
            )
        except InvalidCommand as invalid:
            self._dead_letter(message, invalid)
            return
        message_id = str(p.message_id)
        # One effect per message_id, whatever the command: a write repeated under the id of an
        # earlier write (of any kind) gets that write's stored outcome. A read is answered
        # fresh every time and stored nowhere.
        stored = None if command.is_read else self.processed.get(message_id)
        if stored is None:
            event = self._apply(command, message_id)
            stored = _Stored(event.routing_key, event.model_dump_json().encode(), _now())
            if not command.is_read:
                self.processed[message_id] = stored
        self._publish_outcome(message, stored, broadcast=not command.is_read)

    def _apply(self, command: Command, message_id: str) -> Event:
        code = command.code
        coupon = self.coupons.get(code)
        if isinstance(command, CreateCoupon):
            if coupon is not None:
                return _error(command, ErrorKind.ALREADY_EXISTS)
            coupon = _Coupon(
                coupon_id(message_id),
                code,
                command.init_count,
                command.init_count,
            )
            self.coupons[code] = coupon
            return CouponCreated(
                id=coupon.id,
                code=code,
                init_count=coupon.init_count,
                remaining_count=coupon.init_count,
            )
        if coupon is None:
            return _error(command, ErrorKind.DOES_NOT_EXIST)
        if isinstance(command, RedeemCoupon):
            if coupon.remaining_count <= 0:
                return _error(command, ErrorKind.EXHAUSTED)
            coupon.remaining_count -= 1
            return CouponRedeemed(id=coupon.id, code=code, remaining_count=coupon.remaining_count)
        return CouponFound(
            id=coupon.id,
            code=code,
            init_count=coupon.init_count,
            remaining_count=coupon.remaining_count,
        )

    def _publish_outcome(self, command: RecordedMessage, stored: _Stored, broadcast: bool) -> None:
        p = command.properties
        message_id = str(p.message_id)
        event = RecordedMessage.of(
            self.topology.events_exchange,
            stored.routing_key,
            stored.body,
            RecordedProperties(
                message_id=event_message_id(message_id),
                correlation_id=p.correlation_id or message_id,
                type=stored.routing_key,
                content_type=names.JSON_CONTENT_TYPE,
                timestamp=stored.occurred_at,
                delivery_mode=2,
            ),
            {names.CAUSATION_ID_HEADER: message_id},
        )
        if broadcast:
            self._publish(self.topology.events_exchange, stored.routing_key, event)
        if p.reply_to:
            self._publish("", p.reply_to, event)

    def _dead_letter(self, command: RecordedMessage, invalid: InvalidCommand) -> None:
        headers = dict(command.headers)
        headers[names.ERROR_HEADER] = str(invalid.code)
        headers[names.ERROR_DETAIL_HEADER] = invalid.detail
        headers[names.DEAD_LETTERED_AT_HEADER] = encode_header(_now())
        # The worker's client library (aiormq) stamps a random message_id on a dead letter of a
        # command that had none (contract, "Invalid commands"); so does this.
        message_id = command.properties.message_id or str(uuid.uuid4())
        copy = command.model_copy(
            update={
                "exchange": self.topology.dead_exchange,
                "headers": headers,
                "properties": command.properties.model_copy(
                    update={
                        "delivery_mode": 2,
                        "expiration": None,
                        "user_id": None,
                        "message_id": message_id,
                    }
                ),
            }
        )
        self._publish(self.topology.dead_exchange, command.routing_key, copy)
        p = command.properties
        if p.reply_to:
            reply = InvalidCommandReply(detail=f"{invalid.code}: {invalid.detail}")
            self._publish(
                "",
                p.reply_to,
                RecordedMessage.of(
                    "",
                    names.INVALID,
                    reply.model_dump_json().encode(),
                    RecordedProperties(
                        # aiormq stamps a random message_id on the worker's reply; so does this.
                        message_id=str(uuid.uuid4()),
                        correlation_id=p.correlation_id or p.message_id,
                        type=names.INVALID,
                        content_type=names.JSON_CONTENT_TYPE,
                    ),
                    {names.ERROR_HEADER: str(invalid.code)},
                ),
            )


def _error(command: Command, kind: ErrorKind) -> CouponError:
    return CouponError(
        error=kind,
        detail=kind.detail_for(command.code),
        command=command.routing_key,
        code=command.code,
    )


def _now() -> datetime:
    # AMQP timestamps count whole seconds.
    return datetime.now(UTC).replace(microsecond=0)
