"""What the domain knows of a coupon, and of the recorded outcome of a command."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

# Event message ids derive from the command's message_id, so that every publication of one
# command's outcome carries the same id, on any worker, without storing it.
EVENT_ID_NAMESPACE: Final = uuid.UUID("6f7c4f0e-2b8a-4d7e-9a51-3c0d8e6b1f42")
# A new coupon's id derives from the creating command's message_id (contract "Determinism"):
# replaying a recorded stream into a fresh database yields byte-identical outcome bodies.
# A namespace of its own, so that a coupon id never equals the id of an event.
COUPON_ID_NAMESPACE: Final = uuid.UUID("0b9d6c3e-5f1a-4e27-8c4d-2a7e91f0d6b5")


def coupon_id_for(message_id: str) -> uuid.UUID:
    """The id of the coupon that the command with this message_id creates."""
    return uuid.uuid5(COUPON_ID_NAMESPACE, message_id)


@dataclass(frozen=True, slots=True)
class Coupon:
    id: uuid.UUID
    code: str
    init_count: int
    remaining_count: int


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
