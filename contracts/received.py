"""An outcome as a client receives it, read from plain AMQP fields (pydantic only).

Reading never fails on what a newer worker might send: unknown fields are ignored (the event
models say so), and an event type this contract does not know, or a body that does not match
its type, is surfaced as an `UnknownEvent` for the caller to look at, not raised.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from contracts import names
from contracts.errors import OUTCOME_ERRORS, CommandFailed, CommandRejected
from contracts.events import EVENTS, CouponError, Event, InvalidCommandReply
from contracts.validation import RejectionCode, truncated

EventT = TypeVar("EventT", bound=Event)


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A message on `coupon.events` (or a reply) that this contract cannot read as an event."""

    routing_key: str
    body: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """An outcome as received: its model plus the AMQP properties consumers de-duplicate by."""

    routing_key: str
    event: Event | InvalidCommandReply | UnknownEvent
    message_id: str | None
    correlation_id: str | None
    causation_id: str | None
    body: bytes
    headers: Mapping[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    timestamp: datetime | None = None  # the AMQP timestamp: when the outcome first happened

    def json(self) -> Any:
        """The body, parsed as JSON."""
        return json.loads(self.body)


def read_received(
    routing_key: str,
    body: bytes,
    *,
    message_id: str | None = None,
    correlation_id: str | None = None,
    headers: Mapping[str, Any] | None = None,
    redelivered: bool = False,
    timestamp: datetime | None = None,
) -> ReceivedEvent:
    """An outcome as received, from plain AMQP fields (see `contracts.amqp.received`)."""
    headers = dict(headers or {})
    causation = headers.get(names.CAUSATION_ID_HEADER)
    return ReceivedEvent(
        routing_key=routing_key,
        event=read_event(routing_key, body),
        message_id=message_id,
        correlation_id=correlation_id,
        causation_id=str(causation) if causation is not None else None,
        body=body,
        headers=headers,
        redelivered=redelivered,
        timestamp=timestamp,
    )


def read_event(routing_key: str, body: bytes) -> Event | InvalidCommandReply | UnknownEvent:
    """The event (or `coupon.invalid` reply) `body` is, by its `routing_key`; never raises:
    what this contract cannot read is an `UnknownEvent` with the reason. Unknown fields are
    ignored (events may grow)."""
    model: type[Event] | type[InvalidCommandReply] | None
    model = InvalidCommandReply if routing_key == names.INVALID else EVENTS.get(routing_key)
    if model is None:
        return UnknownEvent(routing_key, body, f"unknown event type {routing_key[:80]!r}")
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        reason = f"not a valid {routing_key}: {truncated(str(error), 300)}"
        return UnknownEvent(routing_key, body, reason)


def expect(received: ReceivedEvent, success: type[EventT], message_id: str) -> EventT:
    """The success event of a request, or the typed error its outcome stands for."""
    event = received.event
    if isinstance(event, success):
        return event
    if isinstance(event, CouponError):
        raise OUTCOME_ERRORS[event.error](event, message_id)
    if isinstance(event, InvalidCommandReply):
        code = str(received.headers.get(names.ERROR_HEADER, event.error))
        if code in RejectionCode.__members__.values():
            raise CommandRejected(RejectionCode(code), event.detail, message_id)
        raise CommandFailed(code, event.detail, message_id)
    raise TypeError(
        f"expected {success.routing_key} for {message_id}, got {received.routing_key}"
        + (f" ({event.reason})" if isinstance(event, UnknownEvent) else "")
    )
