"""The recorded result of a command: what is published for it, and its stable event id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

# Event message ids derive from the command's message_id, so that every publication of one
# command's outcome carries the same id, on any worker, without storing it.
EVENT_ID_NAMESPACE: Final = uuid.UUID("6f7c4f0e-2b8a-4d7e-9a51-3c0d8e6b1f42")


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
        return str(uuid.uuid5(EVENT_ID_NAMESPACE, self.command_message_id))
