"""The coupons one batch touches, held in memory while the batch's commands are applied.

The pipeline loads (and locks) every coupon a batch names in one statement, the handlers apply
the commands to this working set one by one in arrival order, and the repositories then write
what changed in one statement per kind of change. Applying commands here in order is what
makes a batch's outcomes exactly those of applying its commands one at a time: a create then
a redeem of one code grants the redeem, a redeem before the create is `DoesNotExist`, a second
create is `AlreadyExists`, and N redeems of a coupon with k left grant the first k.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping, Sequence

from worker.domain.errors import AlreadyExists, DoesNotExist, Exhausted
from worker.domain.model import Coupon


class WorkingSet:
    """Coupons by code, as loaded, then as the batch's commands change them. No I/O."""

    def __init__(self, loaded: Mapping[str, Coupon]) -> None:
        self._coupons = dict(loaded)
        self._created: set[str] = set()
        self._taken: dict[str, int] = {}  # redemptions granted, per coupon that was loaded

    def get(self, code: str) -> Coupon:
        coupon = self._coupons.get(code)
        if coupon is None:
            raise DoesNotExist(code)
        return coupon

    def create(self, coupon_id: uuid.UUID, code: str, init_count: int) -> Coupon:
        if code in self._coupons:
            raise AlreadyExists(code)
        coupon = Coupon(id=coupon_id, code=code, init_count=init_count, remaining_count=init_count)
        self._coupons[code] = coupon
        self._created.add(code)
        return coupon

    def redeem(self, code: str) -> Coupon:
        coupon = self.get(code)
        if coupon.remaining_count <= 0:
            raise Exhausted(code)
        redeemed = dataclasses.replace(coupon, remaining_count=coupon.remaining_count - 1)
        self._coupons[code] = redeemed
        if code not in self._created:
            self._taken[code] = self._taken.get(code, 0) + 1
        return redeemed

    @property
    def created(self) -> Sequence[Coupon]:
        """The coupons to insert, as they stand after the batch (redeems already deducted)."""
        return [self._coupons[code] for code in sorted(self._created)]

    @property
    def taken(self) -> Mapping[str, int]:
        """Redemptions to take from coupons that existed before the batch, by code."""
        return dict(sorted(self._taken.items()))
