"""Repositories over one AsyncSession, a set of rows per statement. They never commit: the
unit of work does.

Every statement here has the same SQL text whatever the number of rows it touches: keys and
values travel as array parameters (`= ANY(:keys)`, `unnest(:a, :b, ...)`) rather than as one
placeholder per row, so each is compiled by SQLAlchemy once per process and prepared by asyncpg
once per connection, and a batch costs the same few statements whether it holds 1 or 500
commands. They run on the session's connection as Core statements: no ORM objects are built.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    Integer,
    Row,
    Select,
    String,
    any_,
    bindparam,
    column,
    delete,
    func,
    lambda_stmt,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.lambdas import StatementLambdaElement
from sqlalchemy.types import TypeEngine

from worker.app.failures import TransactionConflict
from worker.app.outcomes import Outcome
from worker.db.tables import Base, Coupon, ProcessedCommand
from worker.domain import model


def _array_of(element: TypeEngine[Any]) -> ARRAY[Any]:
    """An array parameter of a column's type. Strings go as unbounded `VARCHAR[]`: a cast to
    `VARCHAR(n)[]` would silently truncate a longer value, where an insert of it must fail."""
    return ARRAY(String() if isinstance(element, String) else element)


class BaseRepository:
    """The rows of one table, addressed by a unique key, fetched and inserted a set at a time.

    A subclass names its mapped class, its key and the columns it reads and writes; the base
    builds, once per subclass, the two statements every repository here needs:
    - select by keys: `WHERE key = ANY(:keys) ORDER BY key`, plain or `FOR UPDATE` (the ORDER
      BY is the lock order: every transaction locks rows in key order, so none can deadlock);
    - insert new rows: `INSERT ... SELECT * FROM unnest(:col1, :col2, ...) ON CONFLICT (key) DO
      NOTHING RETURNING key`, rows sent in key order (unique-index entries too are taken in
      one global order). Which keys came back tells the caller which rows were new.
    """

    mapped: ClassVar[type[Base]]
    key: ClassVar[InstrumentedAttribute[Any]]
    columns: ClassVar[tuple[InstrumentedAttribute[Any], ...]]

    _select: ClassVar[Select[Any]]
    _select_for_update: ClassVar[Select[Any]]
    _insert_new: ClassVar[StatementLambdaElement]
    _key_position: ClassVar[int]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        # (Attributes read on the class: on an instance, a mapped attribute wants an entity.)
        cls._key_position = [c.key for c in cls.columns].index(cls.key.key)
        keys = bindparam("keys", type_=_array_of(cls.key.type))
        cls._select = select(*cls.columns).where(cls.key == any_(keys)).order_by(cls.key)
        cls._select_for_update = cls._select.with_for_update()
        values = func.unnest(
            *(bindparam(c.key, type_=_array_of(c.type)) for c in cls.columns)
        ).table_valued(*(column(c.key, c.type) for c in cls.columns))
        insert_new = (
            insert(cls.mapped)
            .from_select([c.key for c in cls.columns], select(*values.render_derived().c))
            .on_conflict_do_nothing(index_elements=[cls.key])
            .returning(cls.key)
        )
        # SQLAlchemy 2.0's PostgreSQL `insert()` (the one with ON CONFLICT) has no cache key
        # (sqlalchemy#10445): compiled anew on every execution, it cost a fifth of the worker's
        # CPU. A lambda statement is cached on the lambda's code instead, told apart per
        # repository by `track_on`; the statement has no bound values of its own to track.
        cls._insert_new = lambda_stmt(
            lambda: insert_new, track_on=[cls.__qualname__], track_bound_values=False
        )

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _execute(self, statement: Any, parameters: Mapping[str, Any]) -> Sequence[Row[Any]]:
        connection = await self.session.connection()
        return (await connection.execute(statement, parameters)).all()

    async def select_by_keys(
        self, keys: Collection[Any], *, for_update: bool = False
    ) -> Sequence[Row[Any]]:
        """The rows whose key is among `keys` (the configured columns, in key order)."""
        if not keys:
            return []
        statement = self._select_for_update if for_update else self._select
        return await self._execute(statement, {"keys": list(keys)})

    async def insert_new(self, rows: Sequence[Sequence[Any]]) -> set[Any]:
        """Insert the rows (values of the configured columns) whose key is not taken yet; the
        keys of those inserted. A key taken by a transaction still running waits for its end."""
        if not rows:
            return set()
        position = self._key_position
        ordered = sorted(rows, key=lambda row: row[position])
        by_column = {c.key: [row[i] for row in ordered] for i, c in enumerate(self.columns)}
        return {row[0] for row in await self._execute(self._insert_new, by_column)}


class CouponsRepository(BaseRepository):
    mapped = Coupon
    key = Coupon.code
    columns = (Coupon.id, Coupon.code, Coupon.init_count, Coupon.remaining_count)

    # Counters change in SQL, guarded there: `remaining_count >= taken` (the CHECK constraint
    # backs it), all coupons of a batch in one statement whatever the number of redeems.
    _taken = (
        func.unnest(
            bindparam("codes", type_=ARRAY(String)), bindparam("taken", type_=ARRAY(Integer))
        )
        .table_valued(column("code", String), column("taken", Integer))
        .render_derived("taken")
    )
    _redeem = (
        update(Coupon)
        .where(Coupon.code == _taken.c.code, Coupon.remaining_count >= _taken.c.taken)
        .values(remaining_count=Coupon.remaining_count - _taken.c.taken)
        .returning(Coupon.code)
    )

    async def lock_many(self, codes: Collection[str]) -> dict[str, model.Coupon]:
        return _coupons(await self.select_by_keys(codes, for_update=True))

    async def get_many(self, codes: Collection[str]) -> dict[str, model.Coupon]:
        return _coupons(await self.select_by_keys(codes))

    async def create_many(self, coupons: Sequence[model.Coupon]) -> None:
        rows = [(c.id, c.code, c.init_count, c.remaining_count) for c in coupons]
        inserted = await self.insert_new(rows)
        if len(inserted) != len(coupons):
            raise TransactionConflict("a concurrent transaction created the same code")

    async def redeem_many(self, taken: Mapping[str, int]) -> None:
        if not taken:
            return
        codes = sorted(taken)
        parameters = {"codes": codes, "taken": [taken[code] for code in codes]}
        if len(await self._execute(self._redeem, parameters)) != len(codes):
            raise TransactionConflict("a coupon changed under the batch's lock")


class ProcessedCommandsRepository(BaseRepository):
    mapped = ProcessedCommand
    key = ProcessedCommand.message_id
    columns = (
        ProcessedCommand.message_id,
        ProcessedCommand.command,
        ProcessedCommand.outcome_type,
        ProcessedCommand.outcome_body,
        ProcessedCommand.processed_at,
    )

    async def outcomes(self, message_ids: Sequence[str]) -> dict[str, Outcome]:
        return {
            row.message_id: Outcome(
                command_message_id=row.message_id,
                command=row.command,
                routing_key=row.outcome_type,
                body=row.outcome_body.encode(),
                occurred_at=row.processed_at,
            )
            for row in await self.select_by_keys(message_ids)
        }

    async def record(self, outcomes: Sequence[Outcome]) -> bool:
        rows = [
            (o.command_message_id, o.command, o.routing_key, o.body.decode(), o.occurred_at)
            for o in outcomes
        ]
        return len(await self.insert_new(rows)) == len(outcomes)

    async def prune(self, processed_before: datetime, limit: int) -> int:
        """Delete up to `limit` of the oldest rows processed before `processed_before`; returns
        how many went. A command redelivered after its row is gone is applied again."""
        oldest = (
            select(ProcessedCommand.message_id)
            .where(ProcessedCommand.processed_at < processed_before)
            .order_by(ProcessedCommand.processed_at)
            .limit(limit)
            .scalar_subquery()
        )
        statement = (
            delete(ProcessedCommand)
            .where(ProcessedCommand.message_id.in_(oldest))
            .returning(ProcessedCommand.message_id)
        )
        return len(await self._execute(statement, {}))


def _coupons(rows: Sequence[Row[Any]]) -> dict[str, model.Coupon]:
    return {
        row.code: model.Coupon(row.id, row.code, row.init_count, row.remaining_count)
        for row in rows
    }
