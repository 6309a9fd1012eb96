"""Silent peers: the broker or the database goes quiet mid-stream without closing anything.

A proxy (`tests/support/blackhole_proxy.py`) stands between the worker and one service. With
~2,000 commands streaming, it closes its side toward the server and leaves the worker's side
open and mute for 20 s (new connections are swallowed the same way), then forwards new
connections again; the old ones stay mute. The worker must notice by itself (AMQP heartbeat,
statement timeouts), hold its commands, and catch up once the network is back: 0 lost, 0
doubled, 0 dead-lettered, the same process throughout.

Not `disruptive`: no shared service is stopped; only the worker's own path to it breaks. The
figures (seconds from "network back" to "all outcomes in", and to detection) are printed on a
`FIGURES` line with the bounds asserted on them, each derived from the worker's settings
(tests/support/bounds.py): detection within 3 heartbeats + 5 s (broker) or 2 statement
timeouts + 5 s (database), the first outcome within 10 s of the network coming back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.support import bounds
from tests.support.blackhole_proxy import BlackholeProxy
from tests.support.broker import Broker
from tests.support.ledger import Ledger
from tests.support.services import Services
from tests.support.worker_process import WorkerProcess
from worker.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]

COMMANDS = 2000
PARTITION_SECONDS = 20.0
FLOWING_BEFORE = 6.0  # seconds of flow before the partition
SEND_SECONDS = FLOWING_BEFORE + PARTITION_SECONDS - 3  # all sent before the network is back
SHARED_CODE = "silent-shared"
# Before the fix the worker resumed 194 s (broker: heartbeat at the library defaults) and 47 s
# (database: the 60 s command_timeout) after the network came back. Detection and resuming are
# bounded from the settings (tests/support/bounds.py); catching up on the backlog that built
# up during the partition (~1,500 commands) is the worker's throughput through a Python proxy,
# which a loaded 2-core machine divides by several: only a stall is caught there.
CATCH_UP_LIMIT = 120.0
# Log events that would mean held commands were failed or dead-lettered.
NEVER_DURING_A_PARTITION = (
    "command_failed",
    "command_failed_retrying",
    "batch_failed_retrying_alone",
    "command_dead_lettered",
    "dead_letter_failed",
    "batch_task_failed",
)


def silent_commands(count: int) -> Command:
    if count % 4 == 0:
        return CreateCoupon(code=f"silent-{count}", init_count=2)
    if count % 13 == 0:
        return RedeemCoupon(code=f"silent-unknown-{count}")
    return RedeemCoupon(code=SHARED_CODE)  # more than it has: Exhausted outcomes too


async def paced_flow(ledger: Ledger, count: int, seconds: float) -> None:
    """`count` commands at an even pace over `seconds`, a tick every 0.1 s."""
    loop = asyncio.get_running_loop()
    started, sent = loop.time(), 0
    while sent < count:
        due = min(count, round(count * (loop.time() - started) / seconds))
        if due > sent:
            await ledger.send_many(
                [(silent_commands(n), None) for n in range(sent + 1, due + 1)], concurrency=16
            )
            sent = due
        await asyncio.sleep(0.1)


def seconds_to_log(worker: WorkerProcess, event: str, since: float) -> float | None:
    """Seconds from `since` (time.time()) to the worker's first `event`, by its log timestamp."""
    records = worker.events(event)
    if not records:
        return None
    return round(datetime.fromisoformat(str(records[0]["timestamp"])).timestamp() - since, 1)


@pytest.fixture
async def proxies() -> AsyncIterator[list[BlackholeProxy]]:
    started: list[BlackholeProxy] = []
    yield started
    for proxy in started:
        await proxy.close()


async def partition_and_recover(
    label: str,
    proxy: BlackholeProxy,
    worker_env: dict[str, str],
    detection_event: str,
    detection: bounds.Bound,
    resume: bounds.Bound,
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger = Ledger(broker)
    await ledger.start()
    worker = start_worker(**worker_env)
    await worker.wait_ready()
    await ledger.wait_for(await ledger.send(CreateCoupon(code=SHARED_CODE, init_count=1000)))
    flow = asyncio.create_task(paced_flow(ledger, COMMANDS, SEND_SECONDS))
    try:
        await asyncio.sleep(FLOWING_BEFORE)
        assert ledger.received() > 10, "the flow did not get going:\n" + worker.output[-3000:]

        proxy.blackhole()
        dark_wall_clock = time.time()
        await asyncio.sleep(PARTITION_SECONDS)
        assert worker.running(), "the worker died in the partition:\n" + worker.output[-3000:]
        received_in_the_dark = ledger.received()
        proxy.restore()
        back_at = time.monotonic()
        await asyncio.wait_for(flow, 30)  # paced to end before the network came back
    finally:
        flow.cancel()
    outcomes_pending = len(ledger.missing_outcomes())
    try:
        await ledger.wait_received(received_in_the_dark + 1, within=resume.seconds + 30)
        resumed = time.monotonic() - back_at
        await ledger.wait_outcomes(within=CATCH_UP_LIMIT)
    except AssertionError as error:
        raise AssertionError(f"{error}\nworker output:\n{worker.output[-6000:]}") from error
    recovered = time.monotonic() - back_at
    await ledger.wait_settled(within=30)

    assert worker.running(), "the worker process exited:\n" + worker.output[-3000:]
    assert len(worker.events("worker_ready")) == 1
    for event in NEVER_DURING_A_PARTITION:
        assert not worker.events(event), f"{event}: {worker.events(event)[:3]}"
    detected = seconds_to_log(worker, detection_event, since=dark_wall_clock)
    reconnects = len(worker.events("broker_reconnected"))
    outage_logs = len(worker.events("database_unavailable"))
    assert await worker.stop() == 0
    report = await ledger.check(db)
    report.emit(
        label,
        capsys,
        partition_seconds=PARTITION_SECONDS,
        detected_seconds_after_silence=detected,
        **detection.figures("detection"),
        commands_without_outcome_at_network_back=outcomes_pending,
        first_outcome_seconds_after_network_back=round(resumed, 1),
        **resume.figures("resume"),
        all_outcomes_in_seconds_after_network_back=round(recovered, 1),
        catch_up_commands_per_second=round(outcomes_pending / max(recovered - resumed, 0.1)),
        worker_reconnects=reconnects,
        database_unavailable_logged=outage_logs,
        connections_silenced=proxy.silenced,
        connections_swallowed=proxy.swallowed,
        worker_starts=len(worker.events("worker_ready")),
    )
    report.assert_ok()
    assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0
    assert detected is not None, f"the worker never logged {detection_event}"
    assert detected <= detection.seconds, f"{detection_event} {detected} s after the silence"
    # For the silent broker, one loss and one return per connection (consume, publish; failed
    # attempts are logged apart); none for the database: its outage must not disturb the broker
    # connections.
    broker_silenced = detection_event == "broker_connection_lost"
    by_role = sorted(
        (str(line["role"]), event)
        for event in ("broker_connection_lost", "broker_reconnected")
        for line in worker.events(event)
    )
    expected = (
        [
            ("consume", "broker_connection_lost"),
            ("consume", "broker_reconnected"),
            ("publish", "broker_connection_lost"),
            ("publish", "broker_reconnected"),
        ]
        if broker_silenced
        else []
    )
    assert by_role == expected, worker.output[-3000:]
    assert resumed <= resume.seconds, f"first outcome {resumed:.1f}s after the network came back"


async def test_silent_broker_is_noticed_and_the_worker_catches_up(
    services: Services,
    proxies: list[BlackholeProxy],
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = BlackholeProxy.to(services.amqp_url)
    proxies.append(proxy)
    await proxy.start()
    await partition_and_recover(
        "silent broker",
        proxy,
        {"amqp_url": proxy.through(services.amqp_url)},
        "broker_connection_lost",
        bounds.silent_broker_detected(settings),
        bounds.broker_resumed(settings),
        broker,
        start_worker,
        db,
        capsys,
    )


async def test_silent_database_holds_commands_and_catches_up(
    database_url: str,
    proxies: list[BlackholeProxy],
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = BlackholeProxy.to(database_url)
    proxies.append(proxy)
    await proxy.start()
    await partition_and_recover(
        "silent database",
        proxy,
        {"database_url": proxy.through(database_url)},
        "database_unavailable",
        bounds.silent_database_detected(settings),
        bounds.database_resumed(settings),
        broker,
        start_worker,
        db,
        capsys,
    )
