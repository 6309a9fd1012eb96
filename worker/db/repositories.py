"""The two repositories, over the unit of work's `AsyncConnection`, a set of rows per statement.
They never commit: the unit of work does.

Each statement is a named module constant, built once at import. Every one has the same SQL
text whatever the number of rows it touches: keys and values travel as array parameters
(`= ANY(:codes)`, `unnest(:a, :b, ...)`) rather than as one placeholder per row, so each is
compiled by SQLAlchemy once per process and prepared by asyncpg once per connection, and a batch
costs the same few statements whether it holds 1 or 500 commands.

Lock order: coupons are selected `FOR UPDATE` ordered by code, and new rows are inserted in key
order (unique-index entries too are taken in one global order), so concurrent batches that share
coupons queue behind each other and never deadlock.

Over 250 lines for a reason: the named statements are most of it, each with what it guarantees,
kept beside the two repositories that run them so that a statement and its one caller read
together.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    Row,
    String,
    any_,
    bindparam,
    cast,
    column,
    delete,
    exists,
    func,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.app.ports import ALREADY_RECORDED
from worker.db.tables import coupon, processed_command
from worker.domain.model import Coupon


def _array(name: str, element: Any) -> Any:
    """An array parameter. Strings go as unbounded `VARCHAR[]`: a cast to `VARCHAR(n)[]` would
    silently truncate a longer value, where an insert of it must fail."""
    return bindparam(name, type_=ARRAY(String() if isinstance(element, String) else element))


def _unnest(prefix: str, columns: Sequence[Any]) -> Any:
    """`SELECT * FROM unnest(:<prefix>id, :<prefix>code, ...)`: rows from one array per column."""
    values = func.unnest(*(_array(prefix + c.key, c.type) for c in columns)).table_valued(
        *(column(c.key, c.type) for c in columns)
    )
    return select(*values.render_derived().c)


# --- coupon --------------------------------------------------------------------------------

COUPON_COLUMNS = (coupon.c.id, coupon.c.code, coupon.c.init_count, coupon.c.remaining_count)

SELECT_COUPONS = (
    select(*COUPON_COLUMNS)
    .where(coupon.c.code == any_(_array("codes", coupon.c.code.type)))
    .order_by(coupon.c.code)
)
"""The coupons among `:codes`, in code order."""

LOCK_COUPONS = SELECT_COUPONS.with_for_update()
"""The same, locked in code order until the transaction ends."""

INSERT_COUPONS = (
    insert(coupon)
    .from_select([c.key for c in COUPON_COLUMNS], _unnest("new_", COUPON_COLUMNS))
    .on_conflict_do_nothing(index_elements=[coupon.c.code])
    .returning(coupon.c.code)
)
"""New coupons from `:new_id, :new_code, ...` (sent in code order); the codes inserted. A code
taken by a transaction still running waits for its end; a taken code is skipped."""

_TAKEN = (
    func.unnest(_array("taken_codes", String()), _array("taken", Integer()))
    .table_valued(column("code", String), column("taken", Integer))
    .render_derived("taken")
)


def _take(guard: Any) -> Any:
    """Take `:taken[i]` from coupon `:taken_codes[i]` where `guard` holds; the codes changed."""
    return (
        update(coupon)
        .where(coupon.c.code == _TAKEN.c.code, guard)
        .values(remaining_count=coupon.c.remaining_count - _TAKEN.c.taken, updated_at=func.now())
        .returning(coupon.c.code)
    )


REDEEM_COUPONS = _take(coupon.c.remaining_count >= _TAKEN.c.taken)
"""Take `:taken[i]` from coupon `:taken_codes[i]`, guarded in SQL (`remaining_count >= taken`,
the CHECK constraint backs it); the codes changed."""


# --- processed_command ---------------------------------------------------------------------

OUTCOME_COLUMNS = (
    processed_command.c.message_id,
    processed_command.c.command,
    processed_command.c.outcome_type,
    processed_command.c.outcome_body,
    processed_command.c.processed_at,
)

_STORED = processed_command.c.message_id == any_(
    _array("message_ids", processed_command.c.message_id.type)
)
SELECT_OUTCOMES = select(*OUTCOME_COLUMNS).where(_STORED).order_by(processed_command.c.message_id)
"""The stored outcomes of the commands among `:message_ids`."""

INSERT_OUTCOMES = (
    insert(processed_command)
    .from_select([c.key for c in OUTCOME_COLUMNS], _unnest("", OUTCOME_COLUMNS))
    .on_conflict_do_nothing(index_elements=[processed_command.c.message_id])
    .returning(processed_command.c.message_id)
)
"""Outcomes from `:message_id, :command, ...` (sent in message_id order); the ones inserted."""


# --- both tables, one statement each: a batch's first and last round trip ------------------


def _nulls(columns: Sequence[Any]) -> list[Any]:
    return [cast(null(), c.type).label(c.key) for c in columns]


_LOCKED = LOCK_COUPONS.cte("locked")
LOCK_AND_LOOK_UP = union_all(
    select(*OUTCOME_COLUMNS, *_nulls(COUPON_COLUMNS)).where(_STORED),
    select(*_nulls(OUTCOME_COLUMNS), *_LOCKED.c),
)
"""`SELECT_OUTCOMES` and `LOCK_COUPONS` in one: rows of stored outcomes (coupon columns null)
then the locked coupons (outcome columns null), locked in code order as by `LOCK_COUPONS`."""

_WRITTEN = (
    INSERT_COUPONS.cte("created"),
    REDEEM_COUPONS.cte("redeemed"),
    INSERT_OUTCOMES.cte("recorded"),
)
WRITE_ALL = select(
    *(select(func.count()).select_from(cte).scalar_subquery().label(cte.name) for cte in _WRITTEN)
)
"""`INSERT_COUPONS`, `REDEEM_COUPONS` and `INSERT_OUTCOMES` in one statement (each a
data-modifying CTE, run to completion whatever the SELECT reads); how many rows each wrote."""


# --- a batch alone: read without a lock, then one guarded write (two round trips) ----------

_LISTED = SELECT_COUPONS.subquery("listed")
LOOK_UP = union_all(
    select(*OUTCOME_COLUMNS, *_nulls(COUPON_COLUMNS)).where(_STORED),
    select(*_nulls(OUTCOME_COLUMNS), *_LISTED.c),
)
"""`LOCK_AND_LOOK_UP` without the lock: stored outcomes, then the coupons as they stand."""

_READ = (
    func.unnest(_array("read_codes", String()), _array("read_remaining", Integer()))
    .table_valued(column("code", String), column("remaining", Integer))
    .render_derived("read")
)
_NOW = (
    select(coupon.c.code, coupon.c.remaining_count)
    .where(coupon.c.code == any_(_array("named_codes", String())))
    .order_by(coupon.c.code)
    .with_for_update()
    .cte("standing")
)
_CHANGED = (
    select(_NOW.c.code)
    .select_from(_NOW.outerjoin(_READ, _READ.c.code == _NOW.c.code))
    .where(_READ.c.remaining.is_distinct_from(_NOW.c.remaining_count))
)
_UNCHANGED = select(
    (
        (select(func.count()).select_from(_NOW).scalar_subquery() == bindparam("read_count"))
        & ~exists(_CHANGED)
    ).label("unchanged")
).cte("unchanged")
_IF_UNCHANGED = select(_UNCHANGED.c.unchanged).scalar_subquery()
_GUARDED = (
    insert(coupon)
    .from_select(
        [c.key for c in COUPON_COLUMNS], _unnest("new_", COUPON_COLUMNS).where(_IF_UNCHANGED)
    )
    .returning(coupon.c.code)
    .cte("created"),
    _take(_IF_UNCHANGED).cte("redeemed"),
    insert(processed_command)
    .from_select(
        [c.key for c in OUTCOME_COLUMNS], _unnest("", OUTCOME_COLUMNS).where(_IF_UNCHANGED)
    )
    .returning(processed_command.c.message_id)
    .cte("recorded"),
)
GUARDED_WRITE = select(
    _IF_UNCHANGED.label("unchanged"),
    *(select(func.count()).select_from(cte).scalar_subquery().label(cte.name) for cte in _GUARDED),
)
"""`WRITE_ALL` for a batch that read without a lock, run outside a transaction block: one
statement, so one implicit transaction, all or nothing. It locks the coupons the batch named
(`:named_codes`, `FOR UPDATE` in code order: the lock order of `LOCK_COUPONS`) and compares them
with what the batch read (`:read_codes` with `:read_remaining`, `:read_count` of them): the same
codes exist, each with the count read. Every write is conditioned on that (`unchanged`), so a
batch that read a state which no longer holds writes nothing. The inserts have no `ON CONFLICT`:
a code or a message_id that a concurrent transaction committed first is a unique violation,
which aborts the whole statement; so does a redemption below zero (the CHECK on
`remaining_count`: the redemptions have no guard of their own, so that no row is ever skipped).
Either every write happens or none does."""


def guard_rows(named: Collection[str], read: Mapping[str, Coupon]) -> dict[str, Any]:
    """`GUARDED_WRITE`'s parameters for what the batch read: the codes it named, the coupons
    among them that existed and their counts."""
    codes = sorted(read)
    return {
        "named_codes": sorted(named),
        "read_codes": codes,
        "read_remaining": [read[code].remaining_count for code in codes],
        "read_count": len(codes),
    }


def coupon_rows(coupons: Sequence[Coupon]) -> dict[str, list[Any]]:
    """`INSERT_COUPONS`'s parameters: one array per column, rows in code order."""
    ordered = sorted(coupons, key=lambda c: c.code)
    return {
        "new_id": [c.id for c in ordered],
        "new_code": [c.code for c in ordered],
        "new_init_count": [c.init_count for c in ordered],
        "new_remaining_count": [c.remaining_count for c in ordered],
    }


def taken_rows(taken: Mapping[str, int]) -> dict[str, list[Any]]:
    """`REDEEM_COUPONS`'s parameters, in code order."""
    codes = sorted(taken)
    return {"taken_codes": codes, "taken": [taken[code] for code in codes]}


def outcome_rows(outcomes: Sequence[Outcome]) -> dict[str, list[Any]]:
    """`INSERT_OUTCOMES`'s parameters: one array per column, rows in message_id order."""
    ordered = sorted(outcomes, key=lambda o: o.command_message_id)
    return {
        "message_id": [o.command_message_id for o in ordered],
        "command": [o.command for o in ordered],
        "outcome_type": [o.routing_key for o in ordered],
        "outcome_body": [o.body.decode() for o in ordered],
        "processed_at": [o.occurred_at for o in ordered],
    }


def to_coupon(row: Row[Any, Any, Any, Any]) -> Coupon:
    return Coupon(row.id, row.code, row.init_count, row.remaining_count)


def to_outcome(row: Row[Any, Any, Any, Any, Any]) -> Outcome:
    return Outcome(
        command_message_id=row.message_id,
        command=row.command,
        routing_key=row.outcome_type,
        body=row.outcome_body.encode(),
        occurred_at=row.processed_at,
    )


class CouponsRepository:
    """Coupons by code, a batch at a time (`worker.domain.ports.CouponRepository`)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def lock_many(self, codes: Collection[str]) -> dict[str, Coupon]:
        return await self._select(LOCK_COUPONS, codes)

    async def get_many(self, codes: Collection[str]) -> dict[str, Coupon]:
        return await self._select(SELECT_COUPONS, codes)

    async def _select(self, statement: Any, codes: Collection[str]) -> dict[str, Coupon]:
        if not codes:
            return {}
        rows = await self.connection.execute(statement, {"codes": list(codes)})
        return {row.code: to_coupon(row) for row in rows}

    async def create_many(self, coupons: Sequence[Coupon]) -> None:
        if not coupons:
            return
        inserted = (await self.connection.execute(INSERT_COUPONS, coupon_rows(coupons))).all()
        if len(inserted) != len(coupons):
            raise TransactionConflict(CODE_TAKEN)

    async def redeem_many(self, taken: Mapping[str, int]) -> None:
        if not taken:
            return
        changed = (await self.connection.execute(REDEEM_COUPONS, taken_rows(taken))).all()
        if len(changed) != len(taken):
            raise TransactionConflict(COUPON_CHANGED)


class ProcessedCommandsRepository:
    """Outcomes of applied commands by message_id (`worker.app.ports.ProcessedCommands`)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def outcomes(self, message_ids: Sequence[str]) -> dict[str, Outcome]:
        if not message_ids:
            return {}
        rows = await self.connection.execute(SELECT_OUTCOMES, {"message_ids": list(message_ids)})
        return {row.message_id: to_outcome(row) for row in rows}

    async def record(self, outcomes: Sequence[Outcome]) -> bool:
        if not outcomes:
            return True
        inserted = (await self.connection.execute(INSERT_OUTCOMES, outcome_rows(outcomes))).all()
        return len(inserted) == len(outcomes)

    async def prune(self, processed_before: datetime, limit: int) -> int:
        """Delete up to `limit` of the oldest rows processed before `processed_before`; returns
        how many went. A command redelivered after its row is gone is applied again."""
        rows = await self.connection.execute(
            PRUNE, {"processed_before": processed_before, "limit": limit}
        )
        return len(rows.all())


_OLDEST = (
    select(processed_command.c.message_id)
    .where(processed_command.c.processed_at < bindparam("processed_before"))
    .order_by(processed_command.c.processed_at)
    .limit(bindparam("limit"))
    .scalar_subquery()
)
PRUNE = (
    delete(processed_command)
    .where(processed_command.c.message_id.in_(_OLDEST))
    .returning(processed_command.c.message_id)
)
"""Delete up to `:limit` of the oldest rows processed before `:processed_before`."""


CODE_TAKEN = "a concurrent transaction created the same code"
COUPON_CHANGED = "a coupon changed under the batch's lock"


def conflict(
    created: Sequence[Coupon], taken: Mapping[str, int], outcomes: Sequence[Outcome], row: Any
) -> str | None:
    """What `WRITE_ALL`'s counts say went wrong, if anything (`None`: every row was written)."""
    if row.created != len(created):
        return CODE_TAKEN
    if row.redeemed != len(taken):
        return COUPON_CHANGED
    if row.recorded != len(outcomes):
        return ALREADY_RECORDED
    return None
