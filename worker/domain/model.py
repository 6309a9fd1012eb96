"""What the domain knows of a coupon."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Coupon:
    id: uuid.UUID
    code: str
    init_count: int
    remaining_count: int
