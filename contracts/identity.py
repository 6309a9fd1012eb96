"""The ids a command's outcome carries, derived from the command's `message_id` (contract,
"Determinism"): the same command yields the same ids on any worker, on every redelivery and in
every replay into a fresh database. One definition for the worker, its clients and the
in-memory fake worker of `contracts.testing`."""

from __future__ import annotations

import uuid
from typing import Final

# UUID v5 namespaces; fixed forever (changing one changes every id a replay produces).
EVENT_ID_NAMESPACE: Final = uuid.UUID("6f7c4f0e-2b8a-4d7e-9a51-3c0d8e6b1f42")
# Its own namespace, so that a coupon id never equals the id of an event.
COUPON_ID_NAMESPACE: Final = uuid.UUID("0b9d6c3e-5f1a-4e27-8c4d-2a7e91f0d6b5")


def event_message_id(command_message_id: str) -> str:
    """The `message_id` of every publication of the outcome of this command."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, command_message_id))


def coupon_id(creating_message_id: str) -> uuid.UUID:
    """The `id` of the coupon that the `coupon.create` with this `message_id` creates."""
    return uuid.uuid5(COUPON_ID_NAMESPACE, creating_message_id)
