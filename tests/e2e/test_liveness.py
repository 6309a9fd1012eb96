"""Liveness tells the truth: a worker process that is alive, connected to a broker that accepts
its connections, and unable to consume, fails `/healthz` and exits non-zero at
`WORKER_STUCK_LIMIT` (after trying anew from scratch) instead of idling for good."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.http_probe import get_json, http_port
from worker.entrypoints.run import EXIT_STUCK
from worker.settings import Settings

STUCK_LIMIT = 8.0


@pytest.mark.timeout(120)
async def test_a_worker_whose_queue_is_gone_fails_healthz_and_exits_at_the_stuck_limit(
    broker: Broker, start_worker: StartWorker, settings: Settings
) -> None:
    # Least privilege: the worker may not declare, so the queue it loses cannot come back.
    worker = start_worker(
        worker_http_port="0",
        worker_declare_topology="false",
        worker_stuck_limit=str(STUCK_LIMIT),
    )
    port = await http_port(worker)
    await worker.wait_ready()
    assert (await get_json(port, "/healthz"))[0] == 200
    await broker.ch.queue_delete(broker.topology.worker_queue)  # cancels the worker's consumer
    deleted = time.monotonic()

    # Alive until the limit: the worker mends what it can first (a restart would be no better).
    await asyncio.sleep(STUCK_LIMIT / 2)
    assert (await get_json(port, "/healthz"))[0] == 200
    code = await worker.wait_exit(within=60)
    exited_after = time.monotonic() - deleted

    assert code == EXIT_STUCK, worker.output[-3000:]
    # `/healthz` fails from the limit on (tests/integration/test_health_server.py); the process
    # ends at the same moment, after returning what it held.
    # Tried anew from scratch first (at a third of the limit), then gave up at the limit.
    assert worker.events("connections_rebuilding"), worker.output[-3000:]
    [stuck] = worker.events("worker_stuck")
    assert STUCK_LIMIT <= float(stuck["seconds"]) < STUCK_LIMIT + 2
    assert exited_after < STUCK_LIMIT + 30, exited_after
    await broker.declare(settings)  # for the fixture's clean-up
