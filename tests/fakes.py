"""In-memory fakes of the ports (worker/app/ports.py), for unit tests.

They keep the promises the real adapters make (tests/integration/test_storage_contract.py runs
the same tests against both): coupons are loaded and locked in code order, a code created by a
concurrent transaction or a guarded redeem that cannot be taken is a conflict
(`TransactionConflict`), recording a command twice reports the conflict, and nothing a unit of
work did is visible to anyone else until it commits (leaving without `commit()` discards it).

Concurrent units of work behave as they do on PostgreSQL: a write to a coupon (or to a
command's record) waits until whichever unit of work wrote it first commits or rolls back,
then sees the committed state - so concurrent redeems cannot oversell here either.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.app.ports import CouponRepository, ProcessedCommands, UnitOfWork
from worker.domain.model import Coupon


@dataclass
class FakeDatabase:
    """What has been committed: coupons by code and outcomes by command message_id."""

    coupons: dict[str, Coupon] = field(default_factory=dict)
    processed: dict[str, Outcome] = field(default_factory=dict)
    commits: int = 0
    rollbacks: int = 0
    # Row locks: key -> (holding transaction, set when it ends).
    locks: dict[Hashable, tuple[object, asyncio.Event]] = field(default_factory=dict)


class _Transaction:
    """The row locks one unit of work holds until it ends."""

    def __init__(self, database: FakeDatabase) -> None:
        self.database = database
        self.held: list[Hashable] = []

    async def lock(self, key: Hashable) -> None:
        while (holder := self.database.locks.get(key)) is not None and holder[0] is not self:
            await holder[1].wait()
        if key not in self.database.locks:
            self.database.locks[key] = (self, asyncio.Event())
            self.held.append(key)

    def release(self) -> None:
        for key in self.held:
            _, ended = self.database.locks.pop(key)
            ended.set()
        self.held.clear()


class FakeCouponsRepository:
    def __init__(self, database: FakeDatabase, transaction: _Transaction) -> None:
        self._committed = database.coupons
        self._transaction = transaction
        self.staged: dict[str, Coupon] = {}

    def _find(self, code: str) -> Coupon | None:
        return self.staged.get(code) or self._committed.get(code)

    def _existing(self, codes: Collection[str]) -> dict[str, Coupon]:
        return {code: coupon for code in sorted(codes) if (coupon := self._find(code))}

    async def lock_many(self, codes: Collection[str]) -> dict[str, Coupon]:
        # SELECT ... ORDER BY code FOR UPDATE: existing rows only (a row another transaction
        # is still inserting is not seen, and not waited for), locked in code order.
        for code in sorted(codes):
            if self._find(code) is not None:
                await self._transaction.lock(("coupon", code))
        return self._existing(codes)

    async def get_many(self, codes: Collection[str]) -> dict[str, Coupon]:
        return self._existing(codes)

    async def create_many(self, coupons: Sequence[Coupon]) -> None:
        # INSERT ... ON CONFLICT DO NOTHING: waits on a code another transaction is inserting.
        for coupon in sorted(coupons, key=lambda c: c.code):
            await self._transaction.lock(("coupon", coupon.code))  # the unique index entry
            if self._find(coupon.code) is not None:
                raise TransactionConflict("a concurrent transaction created the same code")
            self.staged[coupon.code] = coupon

    async def redeem_many(self, taken: Mapping[str, int]) -> None:
        # UPDATE ... WHERE remaining_count >= taken: all or nothing.
        changed: dict[str, Coupon] = {}
        for code in sorted(taken):
            await self._transaction.lock(("coupon", code))
            coupon = self._find(code)
            if coupon is None or coupon.remaining_count < taken[code]:
                raise TransactionConflict("a coupon changed under the batch's lock")
            changed[code] = dataclasses.replace(
                coupon, remaining_count=coupon.remaining_count - taken[code]
            )
        self.staged.update(changed)


class FakeProcessedCommands:
    def __init__(self, database: FakeDatabase, transaction: _Transaction) -> None:
        self._committed = database.processed
        self._transaction = transaction
        self.staged: dict[str, Outcome] = {}

    async def outcomes(self, message_ids: Sequence[str]) -> dict[str, Outcome]:
        # A transaction sees its own writes, and what others committed.
        visible = {**self._committed, **self.staged}
        return {
            message_id: visible[message_id] for message_id in message_ids if message_id in visible
        }

    async def record(self, outcomes: Sequence[Outcome]) -> bool:
        # Like INSERT ... ON CONFLICT DO NOTHING: the others are staged, the caller rolls back.
        inserted = 0
        for outcome in outcomes:
            key = outcome.command_message_id
            await self._transaction.lock(("processed", key))
            if key in self._committed or key in self.staged:
                continue
            self.staged[key] = outcome
            inserted += 1
        return inserted == len(outcomes)


class FakeUnitOfWork:
    """Stages every change; `commit()` publishes it to the `FakeDatabase`, exit discards it."""

    coupons: FakeCouponsRepository
    processed: FakeProcessedCommands

    def __init__(self, database: FakeDatabase) -> None:
        self.database = database
        self.committed = False
        self._transaction: _Transaction | None = None

    async def __aenter__(self) -> Self:
        self._transaction = _Transaction(self.database)
        self.coupons = FakeCouponsRepository(self.database, self._transaction)
        self.processed = FakeProcessedCommands(self.database, self._transaction)
        self.committed = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.coupons.staged or self.processed.staged:
            self.database.rollbacks += 1
        self.coupons.staged.clear()
        self.processed.staged.clear()
        if self._transaction is not None:
            self._transaction.release()
            self._transaction = None

    async def commit(self) -> None:
        if self._transaction is None:
            raise RuntimeError("commit() outside `async with uow`")
        self.database.coupons.update(self.coupons.staged)
        self.database.processed.update(self.processed.staged)
        self.coupons.staged.clear()
        self.processed.staged.clear()
        self.database.commits += 1
        self.committed = True
        self._transaction.release()


# Checked by mypy: the fakes implement the very Protocols the handlers and the pipeline use.
def _implements_ports(
    uow: FakeUnitOfWork,
) -> tuple[UnitOfWork, CouponRepository, ProcessedCommands]:
    return uow, uow.coupons, uow.processed
