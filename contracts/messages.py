"""Wire helpers that need nothing but pydantic: a command as an AMQP message, an event back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from contracts import names
from contracts.commands import Command
from contracts.deprecation import warn_deprecated
from contracts.events import EVENTS, Event


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """Everything an AMQP client needs to publish one command (contract v1, "Commands")."""

    routing_key: str
    body: bytes
    message_id: str
    correlation_id: str | None = None
    reply_to: str | None = None
    content_type: str = names.JSON_CONTENT_TYPE
    delivery_mode: int = 2  # persistent
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return self.routing_key


def command_message(
    command: Command,
    *,
    message_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
) -> CommandMessage:
    """Build the message for `command`; a fresh UUID is its idempotency key unless given."""
    return CommandMessage(
        routing_key=command.routing_key,
        body=command.model_dump_json().encode(),
        message_id=message_id or str(uuid.uuid4()),
        correlation_id=correlation_id,
        reply_to=reply_to,
    )


def parse_event(routing_key: str, body: bytes | str) -> Event:
    """Deprecated: use `contracts.read_event`, which never raises."""
    warn_deprecated("contracts.parse_event", "contracts.read_event")
    event_type = EVENTS.get(routing_key)
    if event_type is None:
        raise ValueError(f"unknown event {routing_key!r}")
    return event_type.model_validate_json(body)
