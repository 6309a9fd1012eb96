"""The worker's HTTP port: `/healthz`, `/readyz`, and `/metrics` moving as commands flow."""

from __future__ import annotations

import asyncio
import signal
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon, names
from tests.conftest import StartWorker
from tests.e2e.observe import flush
from tests.e2e.test_cli import cli_env as cli_env  # the fixture, shared
from tests.e2e.test_cli import run
from tests.support.broker import Broker
from tests.support.http_probe import get, get_json, http_port, scrape, wait_status


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.timeout(120)
async def test_metrics_move_as_commands_flow_and_probes_answer(
    broker: Broker, start_worker: StartWorker, db: AsyncEngine, cli_env: dict[str, str]
) -> None:
    events = await broker.collect_events()
    worker = start_worker(worker_http_port="0")
    port = await http_port(worker)
    await worker.wait_ready()
    # Start-up's objects are kept out of the garbage collector's full collections.
    [ready_line] = worker.events("worker_ready")
    assert ready_line["frozen_objects"] > 10_000

    status, body = await get_json(port, "/healthz")
    assert (status, body["status"]) == (200, "ok")
    ready = await wait_status(port, "/readyz", 200, within=15)
    assert ready == {**ready, "broker": True, "database": True, "consuming": True}
    assert (await get(port, "/nowhere"))[0] == 404
    before = await scrape(port)
    assert (
        _value(
            before, "coupon_worker_commands_total", routing_key="coupon.create", outcome="created"
        )
        == 0
    )
    build = [key for key in before if key[0] == "coupon_worker_build_info"]
    assert build and dict(build[0][1])["contract"] == names.CONTRACT_VERSION

    code = f"metrics-{uuid.uuid4().hex[:6]}"
    await broker.send(CreateCoupon(code=code, init_count=1))
    await events.wait_for(1)
    redeem = await broker.send(RedeemCoupon(code=code))
    await events.wait_for(2)
    await broker.send(RedeemCoupon(code=code), message_id=redeem)  # answered from storage
    await broker.send(RedeemCoupon(code=code))  # Exhausted
    await broker.send_raw("coupon.redeem", b"{not json")
    await events.wait_for(4)
    await flush(broker, events)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        after = await scrape(port)
        if _value(after, "coupon_worker_dead_letter_queue_messages") == 1:
            break
        assert loop.time() < deadline, "the dead-letter queue's depth was never sampled"
        await asyncio.sleep(0.5)
    commands = "coupon_worker_commands_total"
    assert _value(after, commands, routing_key="coupon.create", outcome="created") == 1
    assert _value(after, commands, routing_key="coupon.redeem", outcome="redeemed") == 2
    assert _value(after, commands, routing_key="coupon.redeem", outcome="Exhausted") == 1
    assert _value(after, "coupon_worker_duplicate_commands_total") == 1
    assert _value(after, "coupon_worker_dead_lettered_commands_total", error="InvalidJson") == 1
    assert _value(after, "coupon_worker_batch_size_commands_count") >= 3
    assert _value(after, "coupon_worker_batch_duration_seconds_count") >= 3
    published = _value(
        after, "coupon_worker_publish_confirm_duration_seconds_count", kind="outcome"
    )
    assert published == 4
    assert _value(after, "coupon_worker_commands_in_flight") == 0
    for gauge in ("broker_connected", "database_up", "consuming"):
        assert _value(after, f"coupon_worker_{gauge}") == 1, gauge
    assert _value(after, "process_resident_memory_bytes") > 0

    # The exec probe of the image and the compose file.
    probe_env = {**cli_env, "WORKER_HTTP_PORT": str(port)}
    for path in ("/healthz", "/readyz"):
        probed = await run(probe_env, "healthcheck", "--http", path)
        assert probed.returncode == 0, probed

    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(30) == 0
    gone = await run(probe_env, "healthcheck", "--http", "/healthz")
    assert gone.returncode == 2 and "does not answer" in gone.stderr, gone
