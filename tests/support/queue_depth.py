"""A queue's depth once it holds still: how fault tests count what a killed consumer held."""

from __future__ import annotations

import asyncio

from tests.support.broker import Broker


async def steady_depth(broker: Broker, queue: str, within: float = 30.0) -> int:
    """The queue's depth once it has held still for half a second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    depth = await broker.depth(queue)
    while True:
        await asyncio.sleep(0.5)
        now = await broker.depth(queue)
        if now == depth:
            return depth
        assert loop.time() < deadline, "the queue depth does not settle"
        depth = now


async def depth_once_returned(broker: Broker, queue: str, within: float = 30.0) -> int:
    """The queue's depth once the broker has noticed the killed consumer and returned what it
    held: no consumer attached, and the depth steady."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await broker.consumers(queue) > 0:
        assert loop.time() < deadline, "the killed worker's consumer is still attached"
        await asyncio.sleep(0.1)
    return await steady_depth(broker, queue, within=max(deadline - loop.time(), 1.0))
