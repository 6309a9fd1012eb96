"""A worker run over the grown tables (benchmarks/grown_tables.py), as `measure(...,
grown=...)` runs it: its plan, redeems and gets spread uniformly over every coupon of the pool
(`grown_tables.pool`: holding at least `POOL_STOCK`), creates of new codes tagged per run; and
its slice of the database for the exactly-once checks (benchmarks/checks.py) — the coupons it
redeemed, as they stood when it began, the coupons and `processed_command` rows written since it
began — since the tables are shared by the runs and too big to read whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from benchmarks.database import BenchmarkFailed, CouponRow, DatabaseState
from benchmarks.workloads import Plan, build_plan


@dataclass
class GrownTables:
    """The grown database, shared by the runs over it, one run at a time."""

    database_url: str
    codes: Sequence[str]  # `pool`: what redeems and gets pick from
    runs: int = 0
    _since: datetime | None = None
    _init: dict[str, int] = field(default_factory=dict)  # redeemed code → init_count before

    async def plan(
        self, engine: AsyncEngine, workload: str, size: int, *, seed: int, reply_to: str
    ) -> Plan:
        """The workload's plan over the pool, created codes tagged with the run's number;
        `plan.preseed` is what each redeemed coupon holds as the run begins."""
        self.runs += 1
        plan = build_plan(
            workload,
            size,
            seed=seed,
            coupons=0,
            reply_to=reply_to,
            tag=f"g{self.runs}",
            codes=self.codes,
        )
        async with engine.connect() as connection:
            self._since = await connection.scalar(text("SELECT clock_timestamp()"))
            rows = (await _coupons(connection, list(plan.redeems))).all()
        self._init = {row.code: row.init_count for row in rows}
        plan.preseed = {row.code: row.remaining_count for row in rows}
        short = [c for c, n in plan.redeems.items() if plan.preseed.get(c, 0) < n]
        if short:
            raise BenchmarkFailed(
                f"coupons of the pool hold less than the plan redeems: {short[:5]}"
            )
        return plan

    async def read_state(self, engine: AsyncEngine, plan: Plan) -> DatabaseState:
        """The run's slice, as `checks.check_database` judges a fresh database: each redeemed
        coupon as if preseeded with what it held when the run began (its init_count shown as
        that, while its real one is unchanged), every coupon and processed_command row written
        since the run began, and any row of the plan's codes and message ids."""
        assert self._since is not None, "plan() first"
        codes = [*plan.redeems, *plan.created]
        async with engine.connect() as connection:
            rows = [
                *await _coupons(connection, codes),
                *await connection.execute(
                    text(
                        "SELECT code, init_count, remaining_count FROM coupon "
                        "WHERE created_at >= :since AND NOT code = ANY(:codes)"
                    ),
                    {"since": self._since, "codes": codes},
                ),
            ]
            processed = await connection.execute(
                text(
                    "SELECT message_id FROM processed_command WHERE processed_at >= :since "
                    "OR message_id = ANY(:ids)"
                ),
                {"since": self._since, "ids": list(plan.expected)},
            )
            coupons = {}
            for row in rows:
                init = row.init_count
                if self._init.get(row.code) == init:
                    init = plan.preseed[row.code]
                coupons[row.code] = CouponRow(init, row.remaining_count)
            return DatabaseState(coupons, [row.message_id for row in processed])


async def _coupons(connection: AsyncConnection, codes: list[str]) -> Any:
    return await connection.execute(
        text("SELECT code, init_count, remaining_count FROM coupon WHERE code = ANY(:codes)"),
        {"codes": codes},
    )
