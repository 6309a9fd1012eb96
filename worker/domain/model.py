"""What the domain knows of a coupon."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from contracts.identity import coupon_id

# A new coupon's id derives from the creating command's message_id (contract "Determinism"):
# replaying a recorded stream into a fresh database yields byte-identical outcome bodies.
coupon_id_for = coupon_id


@dataclass(frozen=True, slots=True)
class Coupon:
    id: uuid.UUID
    code: str
    init_count: int
    remaining_count: int
