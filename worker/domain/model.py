"""What the domain knows of a coupon."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Final

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
