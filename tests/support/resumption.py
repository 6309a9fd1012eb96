"""After a disruption under a steady flow: how soon the worker answered again, and the flow
finished and settled — or, when it did not answer in time, what the broker and the worker said
(the failure message is the evidence)."""

from __future__ import annotations

import asyncio

from tests.support.broker import Broker
from tests.support.ledger import SteadyFlow
from tests.support.worker_process import WorkerProcess

FLOWING_AFTER = 2.0  # seconds the flow goes on once answered again, before it stops


async def resume_and_settle(
    flow: SteadyFlow, since: float, within: float, broker: Broker, worker: WorkerProcess
) -> tuple[float, float]:
    """(seconds from `since` to the first outcome of a command sent after it, seconds the
    outcomes then took to be all in once the flow stopped)."""
    try:
        resumed = await flow.first_outcome_after(since, within=within)
    except AssertionError as error:
        queue = broker.topology.worker_queue
        raise AssertionError(
            f"{error}\nqueue depth {await broker.depth(queue)}, consumers "
            f"{await broker.consumers(queue)}, events received {flow.ledger.received()}, "
            f"worker running {worker.running()}; worker output:\n{worker.output[-6000:]}"
        ) from error
    await asyncio.sleep(FLOWING_AFTER)  # and flowing again for a while
    await flow.stop()
    settled = await flow.ledger.wait_outcomes(within=60)
    await flow.ledger.wait_settled(within=30)
    return resumed, settled
