"""`coupon_events`: every event published while a test runs, and a way to wait for some."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable

from contracts.received import ReceivedEvent


class EventCollector:
    def __init__(self) -> None:
        self.received: list[ReceivedEvent] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def follow(self, events: AsyncIterable[ReceivedEvent]) -> None:
        async def collect() -> None:
            async for received in events:
                self.received.append(received)
                self._arrived.set()

        self._task = asyncio.create_task(collect(), name="coupon_events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def of(self, routing_key: str | None = None) -> list[ReceivedEvent]:
        return [r for r in self.received if routing_key in (None, r.routing_key)]

    async def wait_for(
        self,
        routing_key: str | None = None,
        *,
        count: int = 1,
        where: Callable[[ReceivedEvent], bool] | None = None,
        within: float = 30.0,
    ) -> list[ReceivedEvent]:
        """The first `count` events of `routing_key` (any, if None) that satisfy `where`, once
        that many have arrived; `AssertionError` after `within` seconds."""

        def matching() -> list[ReceivedEvent]:
            return [r for r in self.of(routing_key) if where is None or where(r)]

        try:
            async with asyncio.timeout(within):
                while len(matching()) < count:
                    if self._task is not None and self._task.done():
                        self._task.result()  # the subscription failed: say why
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            raise AssertionError(
                f"waited {within:g}s for {count} {routing_key or 'event'}(s), got "
                f"{len(matching())}; all received: {[r.routing_key for r in self.received]}"
            ) from None
        return matching()[:count]
