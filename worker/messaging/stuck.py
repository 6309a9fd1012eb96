"""The supervisor's clock of being stuck: how long the worker has been unable to consume while
the broker was usable, what that calls for (nothing yet, a rebuild at each third of
`WORKER_STUCK_LIMIT`, an exit at the limit), and the look at the queue that tells a starved
consumer from an idle one."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Final

import structlog

from worker.messaging.connection import broker_call, time_limited
from worker.messaging.link import BrokerLink

log = structlog.stdlib.get_logger(__name__)

DEPTH_CHECK_INTERVAL: Final = 5.0
DEPTH_CHECK_TIMEOUT: Final = 3.0


class WorkerStuck(RuntimeError):
    """Unable to consume for `WORKER_STUCK_LIMIT`: the process should exit and be restarted."""


class Next(enum.Enum):
    """What the supervisor does after a look."""

    CARRY_ON = "carry on"
    REBUILD = "rebuild"


class StuckClock:
    def __init__(self, limit: float, on_not_consuming: Callable[[float], None]) -> None:
        self.limit = limit
        self._on_not_consuming = on_not_consuming
        self._since: float | None = None
        self._reason = ""
        self._rebuilds = 0  # in this episode

    @property
    def reason(self) -> str:
        """Why the worker could not consume, at the last look that found a problem."""
        return self._reason

    def not_consuming_for(self) -> float:
        """Seconds the worker has been unable to consume while the broker was usable."""
        since = self._since
        return 0.0 if since is None else time.monotonic() - since

    def liveness(self) -> str | None:
        """None while alive; else why not (the liveness probe's answer)."""
        stuck = self.not_consuming_for()
        if stuck < self.limit:
            return None
        return f"unable to consume for {stuck:.0f}s ({self._reason})"

    def observe(self, problem: str | None) -> Next:
        """Note one look's finding (None: consuming, or excused). Raises `WorkerStuck` at the
        limit; says REBUILD at each third of it."""
        now = time.monotonic()
        if problem is None:
            if self._since is not None:
                log.info("consuming_again", after=round(now - self._since, 1))
            self._since, self._rebuilds = None, 0
            self._on_not_consuming(0.0)
            return Next.CARRY_ON
        if self._since is None:
            self._since = now
            log.warning("not_consuming", reason=problem)
        self._reason = problem
        stuck = now - self._since
        self._on_not_consuming(stuck)
        if stuck >= self.limit:
            log.error("worker_stuck", reason=problem, seconds=round(stuck, 1))
            raise WorkerStuck(f"unable to consume for {stuck:.0f}s: {problem}")
        if stuck >= self.limit / 3 * (self._rebuilds + 1):
            self._rebuilds += 1
            log.warning("connections_rebuilding", reason=problem, seconds=round(stuck, 1))
            return Next.REBUILD
        return Next.CARRY_ON


class ReadyMessages:
    """Ready messages in the worker queue, looked up at most every few seconds (a passive
    declare on a channel of its own: a failed one closes the channel it was made on)."""

    def __init__(self, queue: str) -> None:
        self._queue = queue
        self._checked_at = 0.0
        self._ready = 0

    async def count(self, link: BrokerLink) -> int:
        now = time.monotonic()
        if now - self._checked_at < DEPTH_CHECK_INTERVAL:
            return self._ready
        self._checked_at = now
        try:
            self._ready = await broker_call(time_limited(self._declare(link), DEPTH_CHECK_TIMEOUT))
        except Exception as error:
            log.debug("queue_depth_unknown", error=repr(error))
            self._ready = 0
        return self._ready

    async def _declare(self, link: BrokerLink) -> int:
        async with link.connection.channel() as channel:
            declared = await channel.declare_queue(self._queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
