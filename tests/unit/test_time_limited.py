"""`worker.messaging.connection.time_limited`: a broker call given up on after its time, not waited
for while it cancels, and its late end read so that asyncio reports nothing."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

from worker.messaging.connection import time_limited


async def test_an_answer_in_time_is_returned() -> None:
    async def answers() -> str:
        return "ok"

    assert await time_limited(answers(), 1.0) == "ok"


async def test_a_slow_call_is_abandoned_without_waiting_for_it_to_cancel() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    ended = asyncio.Event()

    async def slow_to_cancel() -> None:
        try:
            await asyncio.sleep(10)
        finally:  # an aiormq call that ends badly, late, once cancelled
            await asyncio.sleep(0.3)
            ended.set()
            raise RuntimeError("channel closed")

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await time_limited(slow_to_cancel(), 0.1)
    assert time.monotonic() - started < 0.3, "waited for the abandoned call to end"
    await asyncio.wait_for(ended.wait(), 2)
    await asyncio.sleep(0)
    gc.collect()  # a task whose exception nobody read is reported when it is collected
    loop.set_exception_handler(None)
    assert reported == []
