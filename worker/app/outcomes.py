"""The recorded result of a command: what is published for it, and its stable event id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from contracts.identity import event_message_id


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one command: an event name and its JSON body, ready to publish."""

    command_message_id: str
    command: str  # the command's routing key
    routing_key: str  # the outcome's event name
    body: bytes
    occurred_at: datetime
    # Outcomes of `coupon.get` go to reply_to only, not to the events exchange.
    broadcast: bool = True

    @property
    def event_message_id(self) -> str:
        # The same on every publication, on any worker, without storing it.
        return event_message_id(self.command_message_id)
