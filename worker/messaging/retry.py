"""The retry policy: how often, how soon, and in what shape a batch is tried again.

- A transient failure is not a failure of the command: the batch is held (nothing is nacked,
  so an outage does not burn the queue's delivery limit) and tried again, for as long as it
  takes — at once after a `TransactionConflict` (with a little jitter), with a growing back-off
  while a dependency is unavailable (`DependencyUnavailable`, logged once per outage).
- Any other failure of a batch of several splits it: each command is retried alone, so one bad
  command cannot hold its neighbours back.
- A command alone is tried up to `max_attempts` times, with a growing back-off, and then given
  up on (the consumer dead-letters it).
- An attempt that outlives its deadline (`batch_deadline`, from the statement timeout and the
  number of items) is ended and counts as `DependencyUnavailable`: a database that went silent
  between statements, where no statement timeout runs, is an outage like a stopped one.

The policy knows nothing of messages: `run(items, attempt=…)` tries `attempt` on the items and
yields a verdict for each as it is reached — `Succeeded` (items tried together, and the result)
or `GaveUp` (one item, after its last try) — for the caller to act on; `on_retry` hears of every
try again, by reason (the composition root counts them in a metric).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Final, Generic, Literal, TypeVar, get_args

import structlog

from worker.app.failures import DependencyUnavailable, TransactionConflict, TransientFailure
from worker.app.outage_log import DatabaseOutageLog
from worker.settings import Settings

log = structlog.stdlib.get_logger(__name__)

# Why a batch or a command is tried again: a concurrent transaction won; a dependency is down
# (one per wait of an outage); a batch of several failed and is tried command by command; a
# command alone failed and is tried once more.
RetryReason = Literal[
    "transaction_conflict", "dependency_unavailable", "batch_split", "command_failed"
]
RETRY_REASONS: Final[tuple[RetryReason, ...]] = get_args(RetryReason)


def _unobserved(_: RetryReason) -> None:
    pass


ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True, slots=True)
class Succeeded(Generic[ItemT, ResultT]):
    """`items` were tried together and gave `result`."""

    items: Sequence[ItemT]
    result: ResultT


@dataclass(frozen=True, slots=True)
class GaveUp(Generic[ItemT]):
    """`item`, tried alone, failed `attempts` times, the last with `error`."""

    item: ItemT
    attempts: int
    error: Exception


Verdict = Succeeded[ItemT, ResultT] | GaveUp[ItemT]


@dataclass(kw_only=True)
class RetryPolicy:
    """How often and how soon; one per process, shared by its consumers (and so by the outage
    log: one `database_unavailable` line per outage, not one per consumer)."""

    max_attempts: int = 5
    attempt_backoff: float = 0.1  # before try n + 1 of a command alone: attempt_backoff * 2**n
    outage_backoff: float = 0.1  # the first wait while a dependency is down, doubled each time
    outage_backoff_max: float = 5.0
    conflict_jitter: float = 0.02  # at most, before retrying after a transaction conflict
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    outages: DatabaseOutageLog = field(default_factory=lambda: DatabaseOutageLog(log))
    statement_timeout: float | None = None  # gives each attempt a deadline; None: no deadline
    on_retry: Callable[[RetryReason], None] = _unobserved  # before each wait or try again

    @classmethod
    def from_settings(
        cls, settings: Settings, on_retry: Callable[[RetryReason], None] = _unobserved
    ) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            outage_backoff_max=settings.retry_max_backoff,
            statement_timeout=settings.db_statement_timeout,
            on_retry=on_retry,
        )

    async def run(
        self,
        items: Sequence[ItemT],
        *,
        attempt: Callable[[Sequence[ItemT]], Awaitable[ResultT]],
        alone: Callable[[ItemT], AbstractContextManager[object]] = lambda _: nullcontext(),
    ) -> AsyncGenerator[Verdict[ItemT, ResultT], None]:
        """Try `attempt` on `items` under this policy, yielding a verdict as each item is
        decided: together at first; a batch that fails for a reason that is not transient is
        split, each item tried alone (inside `alone(item)`, which binds its log context for the
        tries and for whatever the caller does with the verdict)."""
        if len(items) > 1:
            try:
                result = await self._through_transient(attempt, items)
            except Exception as error:
                log.warning("batch_failed_retrying_alone", size=len(items), error=repr(error))
                self.on_retry("batch_split")
                for item in items:
                    async for verdict in self.run([item], attempt=attempt, alone=alone):
                        yield verdict
                return
            yield Succeeded(items, result)
            return
        [item] = items
        with alone(item):
            for tries in range(1, self.max_attempts + 1):
                try:
                    result = await self._through_transient(attempt, items)
                except Exception as error:
                    if tries < self.max_attempts:
                        log.warning("command_failed_retrying", attempt=tries, error=repr(error))
                        self.on_retry("command_failed")
                        await self.sleep(self.attempt_backoff * 2**tries)
                        continue
                    log.error("command_failed", attempts=tries, exc_info=error)
                    yield GaveUp(item, tries, error)
                    return
                yield Succeeded(items, result)
                return

    async def _through_transient(
        self,
        attempt: Callable[[Sequence[ItemT]], Awaitable[ResultT]],
        items: Sequence[ItemT],
    ) -> ResultT:
        """Try until the attempt succeeds or fails for a reason that is not transient."""
        delay = self.outage_backoff
        while True:
            try:
                result = await self._in_time(attempt, items)
            except TransactionConflict:
                self.on_retry("transaction_conflict")
                await self.sleep(random.uniform(0, self.conflict_jitter))
                continue
            except TransientFailure as failure:
                self.outages.down(failure)
                self.on_retry("dependency_unavailable")
                await self.sleep(delay)
                delay = min(delay * 2, self.outage_backoff_max)
                continue
            self.outages.up()
            return result

    async def _in_time(
        self,
        attempt: Callable[[Sequence[ItemT]], Awaitable[ResultT]],
        items: Sequence[ItemT],
    ) -> ResultT:
        """One attempt, ended at its deadline; a missed deadline is `DependencyUnavailable`."""
        if self.statement_timeout is None:
            return await attempt(items)
        scope = asyncio.timeout(batch_deadline(len(items), self.statement_timeout))
        try:
            async with scope:
                return await attempt(items)
        except Exception as error:
            if scope.expired():  # whatever the cancelled attempt raised on its way out
                raise DependencyUnavailable("the batch missed its deadline") from error
            raise


def batch_deadline(size: int, statement_timeout: float) -> float:
    """Seconds one attempt at a batch may take, all statements, waits for the pool and the
    rollback included: twice the statement timeout plus 50 ms a command (a command takes ~2 ms
    on an idle 2-core machine, ~15 ms with it oversubscribed six times over). It ends an attempt
    that a silent connection stalls between statements, where no statement timeout runs; the
    commands are held and retried."""
    return 2 * statement_timeout + 0.05 * size
