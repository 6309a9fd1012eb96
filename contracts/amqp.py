"""Every conversion between aio-pika's messages and the contract's (the `client` extra).

Three message shapes meet the broker, and this module is the one place that turns them into
AMQP and back:

- `CommandMessage` (a command about to be sent) → `to_amqp` → `aio_pika.Message`;
- an incoming event or reply → `received` → `ReceivedEvent` (never raises on what it cannot read);
- any message → `to_recorded` → `RecordedMessage` (the recording format), and back with
  `to_message`, exactly (body, headers, properties; `user_id` is not copied: the broker refuses
  a `user_id` other than the publishing connection's).

The pydantic-only conversions (a `RecordedMessage` from a `CommandMessage`, a `ReceivedEvent`
from a `RecordedMessage`) are methods of `RecordedMessage`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from contracts.messages import CommandMessage
from contracts.received import ReceivedEvent, read_received
from contracts.recording import RecordedMessage, RecordedProperties, decode_header

__all__ = ["received", "to_amqp", "to_message", "to_recorded"]


@functools.cache
def _inject() -> Callable[[dict[str, Any]], None] | None:
    """OpenTelemetry's propagator when it is installed (the `tracing` extra), else None."""
    try:
        from opentelemetry import propagate
    except ImportError:
        return None
    return propagate.inject


def to_amqp(message: CommandMessage) -> aio_pika.Message:
    """The AMQP message, stamped with the time it is sent (the `timestamp` property, whole
    seconds: the worker's command latency starts there); with OpenTelemetry installed, headers
    carry the current trace (W3C traceparent) on to the worker, its spans and its outcome."""
    headers = dict(message.headers)
    inject = _inject()
    if inject is not None:
        inject(headers)  # writes nothing without a current span
    return aio_pika.Message(
        message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        content_type=message.content_type,
        type=message.type,
        delivery_mode=aio_pika.DeliveryMode(message.delivery_mode),
        timestamp=datetime.now(UTC),
        headers=headers or None,
    )


def received(message: AbstractIncomingMessage, routing_key: str | None = None) -> ReceivedEvent:
    """An event or reply as received; never raises on unknown types or fields. Its type is
    `routing_key`, else the AMQP `type`, else the message's routing key."""
    return read_received(
        routing_key or message.type or message.routing_key or "",
        message.body,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        headers=message.headers,
        redelivered=bool(message.redelivered),
        timestamp=message.timestamp,
    )


def to_recorded(message: AbstractIncomingMessage, exchange: str | None = None) -> RecordedMessage:
    """A received message in the recording format (`exchange`: the one to record it under)."""
    delivery_mode = int(message.delivery_mode) if message.delivery_mode else None
    properties = RecordedProperties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=delivery_mode,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=_expiration(message.expiration),
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        user_id=message.user_id,
        app_id=message.app_id,
    )
    return RecordedMessage.of(
        (message.exchange or "") if exchange is None else exchange,
        message.routing_key or "",
        message.body,
        properties,
        message.headers,
    )


def _expiration(value: object) -> str | None:
    # aio-pika turns the `expiration` property (milliseconds, a string on the wire) into seconds.
    if value is None:
        return None
    if isinstance(value, int | float):
        return str(round(value * 1000))
    return str(value)


def to_message(recorded: RecordedMessage) -> aio_pika.Message:
    """The AMQP message a recorded one was (to publish it again)."""
    p = recorded.properties
    return aio_pika.Message(
        recorded.body_bytes(),
        headers={key: _wire(decode_header(value)) for key, value in recorded.headers.items()}
        or None,
        content_type=p.content_type,
        content_encoding=p.content_encoding,
        delivery_mode=p.delivery_mode,
        priority=p.priority,
        correlation_id=p.correlation_id,
        reply_to=p.reply_to,
        expiration=int(p.expiration) / 1000 if p.expiration and p.expiration.isdigit() else None,
        message_id=p.message_id,
        timestamp=p.timestamp,
        type=p.type,
        app_id=p.app_id,
    )


def _wire(value: Any) -> Any:
    """A header value as pamqp encodes it: bytes travel as a byte array (`x`)."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {key: _wire(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wire(item) for item in value]
    return value
