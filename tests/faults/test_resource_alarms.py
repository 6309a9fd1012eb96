"""Never stuck: RabbitMQ resource alarms, and connections closed under a busy worker.

A memory or disk alarm makes RabbitMQ block every connection that publishes: the worker can
neither publish its outcomes nor (on a blocked connection) have its acks read, for as long as
the alarm lasts, and must pick up by itself when it clears. Each alarm case queues ~6,000 mixed
commands while the worker is frozen (SIGSTOP), raises the alarm, and only then lets the worker
go on (SIGCONT), so that every outcome meets the alarm; the alarm is held 10 s or 90 s (past
the worker's 30 s publish timeout), cleared, and every command must then be answered within
15 s of the clear: 0 lost, 0 doubled, 0 wrong, 0 dead-lettered, and a worker consuming again
(the same process, or, as a last resort, a restarted one after the first exited non-zero; the
figures say which).

The freeze is kept short: RabbitMQ drops a connection it has heard nothing from for two to three
heartbeats (the worker runs here with a 10 s heartbeat: 20-30 s), so the commands are published
(before the alarm, which would block the test's own publisher too) and the alarm raised within
`FREEZE_LIMIT` seconds; a slower machine fails the test with its measured freeze rather than
testing a reconnect instead of an alarm.

The two other cases close one of the worker's own connections with `rabbitmqctl
close_connection` while a steady flow runs through it (the consuming one, then the publishing
one): the same process must be answering again within `RESUME_LIMIT` seconds.

DISRUPTIVE (the alarm cases): an alarm blocks every publisher on the broker, so those hold the
machine's service lock exclusively (tests/support/service_lock.py); the broker's own watermark
and disk limit are put back in a `finally`, and by `restore_all()` at teardown and exit. Closing
the worker's own connection (found by its name among the connections of the worker's process)
disturbs nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import CreateCoupon, RedeemCoupon
from contracts.commands import Command
from tests.conftest import StartWorker
from tests.support.broker import Broker
from tests.support.http_probe import get, http_port, scrape
from tests.support.ledger import Ledger, SteadyFlow
from tests.support.outages import (
    Alarm,
    close_client_connection,
    disk_alarm,
    memory_alarm,
    restore_all,
)
from tests.support.resumption import resume_and_settle
from tests.support.services import Services
from tests.support.worker_process import WorkerProcess

pytestmark = [
    pytest.mark.faults,
    pytest.mark.timeout(330),
    # aiormq leaves the socket writer of a connection the broker closed to the garbage
    # collector (the alarm helper's probe connection, not the worker): not a finding.
    pytest.mark.filterwarnings("ignore:unclosed <StreamWriter:ResourceWarning"),
]

COMMANDS = 6000
SHARED_CODES = tuple(f"alarm-shared-{i}" for i in range(4))
SHARED_COUNT = 10_000  # more than all redeems of it together: never Exhausted
DUPLICATE_EVERY = 50  # every 50th command is published a second time, same message_id
# The freeze must end before RabbitMQ gives up on the frozen worker's connections (two missed
# heartbeats). The worker runs with the 10 s heartbeat the README advises for a loaded broker
# (its default of 4 s would allow a freeze of only ~6 s, less than publishing 6,000 commands
# takes on a busy 2-core machine), so the freeze may take up to 15 s of the ~20 s allowed.
HEARTBEAT = "10"
FREEZE_LIMIT = 15.0
CLEAR_LIMIT = 15.0  # every outcome within 15 s of the alarm clearing
# How long the test waits for outcomes after the clear before it judges (a stuck worker then
# shows as lost commands in the figures, not as a timeout without them).
CATCH_UP_WAIT = 60.0
RESUME_LIMIT = 10.0  # a closed connection: the same process answering again within 10 s
# The worker's two connections by their client-provided names (worker/messaging/link.py).
CONNECTION_NAMES = {"consume": ("coupon-worker consume",), "publish": ("coupon-worker publish",)}


@pytest.fixture(autouse=True)
def services_restored() -> Iterator[None]:
    yield
    restore_all()


def alarm_stream(count: int) -> list[tuple[Command, str]]:
    """`count` distinct commands with their message_ids, in a fixed mixed order, plus a second
    publish of every `DUPLICATE_EVERY`th one right after it: creates (some of a code already
    taken: AlreadyExists), redeems of the shared coupons, redeems of unknown codes."""
    stream: list[tuple[Command, str]] = []
    for n in range(1, count + 1):
        command: Command
        if n % 3 == 0:
            command = CreateCoupon(code=f"alarm-{n}", init_count=2)
        elif n % 97 == 0:
            command = CreateCoupon(code=SHARED_CODES[n % len(SHARED_CODES)], init_count=5)
        elif n % 17 == 0:
            command = RedeemCoupon(code=f"alarm-unknown-{n}")
        else:
            command = RedeemCoupon(code=SHARED_CODES[n % len(SHARED_CODES)])
        stream.append((command, str(uuid.uuid4())))
        if n % DUPLICATE_EVERY == 0:
            stream.append(stream[-1])
    return stream


@dataclass
class Workers:
    """The worker of an alarm case, and those started after it if it exited (the last resort
    the case allows, counted in its figures)."""

    start_worker: StartWorker
    current: WorkerProcess
    port: int  # the current worker's HTTP port
    started: list[WorkerProcess] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)

    @classmethod
    async def start(cls, start_worker: StartWorker) -> Workers:
        worker = start_worker(worker_http_port="0", worker_amqp_heartbeat=HEARTBEAT)
        port = await http_port(worker)
        await worker.wait_ready(within=60)
        return cls(start_worker, worker, port, [worker])

    async def replace_if_exited(self) -> None:
        """If the current worker exited, note its code and start the next one."""
        if self.current.running():
            return
        self.exit_codes.append(await self.current.wait_exit(within=10))
        self.current = self.start_worker(
            worker_http_port="0",
            worker_amqp_heartbeat=HEARTBEAT,
            name=f"worker-{len(self.exit_codes) + 1}",
        )
        self.started.append(self.current)
        self.port = await http_port(self.current, within=60)

    def events(self, name: str) -> int:
        return sum(len(worker.events(name)) for worker in self.started)

    def output(self) -> str:
        """Per worker: how often it logged each event, its first warnings and errors (where a
        stuck worker's story starts), and the end of its log."""
        parts = []
        for worker in self.started:
            records = worker.records
            counts = Counter(str(record.get("event")) for record in records)
            alarming = [
                json.dumps(record)[:600]
                for record in records
                if record.get("level") in ("warning", "error", "critical")
            ]
            parts.append(
                f"--- {worker.name} (exit {worker.returncode}), events: "
                + ", ".join(f"{event}:{count}" for event, count in counts.most_common())
                + "\nfirst warnings and errors:\n"
                + "\n".join(alarming[:8])
                + f"\nlast lines:\n{worker.output[-2500:]}"
            )
        return "\n".join(parts)


async def outcomes_until_done(
    ledger: Ledger, workers: Workers, within: float
) -> tuple[float | None, float | None]:
    """Wait (restarting an exited worker) until every command has its outcome, or `within`
    seconds passed; returns when (time.monotonic()) the first and the last outcome of the wait
    arrived, None for none."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    missing = len(ledger.missing_outcomes())
    first: float | None = None
    last: float | None = None
    while missing and loop.time() < deadline:
        await workers.replace_if_exited()
        await asyncio.sleep(0.05)
        now = len(ledger.missing_outcomes())
        if now < missing:
            last = time.monotonic()
            first = first or last
        missing = now
    return first, last


async def blocked_gauge(port: int) -> int:
    """`coupon_worker_broker_blocked` as the worker's /metrics says it."""
    return int((await scrape(port)).get(("coupon_worker_broker_blocked", ()), -1))


async def stop(worker: WorkerProcess) -> int:
    """SIGTERM, then SIGKILL if it does not end within a minute (a stuck worker); its code."""
    try:
        return await worker.stop(within=60)
    except AssertionError:
        worker.kill()
        return int(worker.returncode or 0)


async def hold_alarm_then_clear(
    resource: str,
    hold: float,
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    services: Services,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alarm_of: Callable[[str], contextlib.AbstractAsyncContextManager[Alarm]] = (
        memory_alarm if resource == "memory" else disk_alarm
    )
    ledger = Ledger(broker)
    await ledger.start()
    workers = await Workers.start(start_worker)
    worker = workers.current
    await ledger.send_many(
        (CreateCoupon(code=code, init_count=SHARED_COUNT), None) for code in SHARED_CODES
    )
    await ledger.wait_outcomes(within=60)
    stream = alarm_stream(COMMANDS)

    # Frozen while the commands are queued and the alarm is raised: it meets the alarm with
    # its whole prefetch window delivered and the rest queued behind it.
    worker.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        await ledger.send_many(stream, concurrency=128)
        published = time.monotonic() - frozen_at
        received_before = ledger.received()
        async with alarm_of(services.amqp_url) as alarm:
            worker.signal(signal.SIGCONT)
            freeze = time.monotonic() - frozen_at
            assert freeze <= FREEZE_LIMIT, (
                f"the worker was frozen {freeze:.1f} s ({published:.1f} s publishing "
                f"{len(stream)} commands, {alarm.took_effect_seconds} s raising the alarm): "
                f"over the {FREEZE_LIMIT} s its heartbeat allows; publish fewer commands"
            )
            await asyncio.sleep(max(hold - (time.monotonic() - alarm.in_effect_at), 0))
            healthz_in_alarm = (await get(workers.port, "/healthz"))[0]
            blocked_gauge_in_alarm = await blocked_gauge(workers.port)
            outcomes_in_alarm = ledger.received() - received_before
            running_in_alarm = worker.running()
    finally:
        if worker.running():
            worker.signal(signal.SIGCONT)

    first, last = await outcomes_until_done(ledger, workers, CATCH_UP_WAIT)
    missing = len(ledger.missing_outcomes())
    healthz_after = (await get(workers.port, "/healthz"))[0] if workers.current.running() else 0
    blocked_gauge_after = await blocked_gauge(workers.port) if workers.current.running() else -1
    consumers = await broker.consumers(broker.topology.worker_queue)
    if not missing:
        await ledger.wait_quiet()
    exit_code = await stop(workers.current)
    report = await ledger.check(db)
    first_after_clear = None if first is None else round(first - alarm.cleared_at, 1)
    last_after_clear = None if last is None else round(last - alarm.cleared_at, 1)
    stated = report.emit(
        f"{resource} alarm {hold:g} s",
        capsys,
        alarm=resource,
        alarm_took_effect_seconds=alarm.took_effect_seconds,
        alarm_held_seconds=alarm.held_seconds,
        alarm_clear_seconds=alarm.clear_seconds,
        freeze_seconds=round(freeze, 1),
        publish_seconds=round(published, 1),
        outcomes_during_alarm=outcomes_in_alarm,
        without_outcome_after_wait=missing,
        first_outcome_seconds_after_clear=first_after_clear,
        last_outcome_seconds_after_clear=last_after_clear,
        healthz_in_alarm=healthz_in_alarm,
        healthz_after_clear=healthz_after,
        blocked_gauge_in_alarm=blocked_gauge_in_alarm,
        blocked_gauge_after_clear=blocked_gauge_after,
        consumers_after_clear=consumers,
        worker_running_in_alarm=running_in_alarm,
        worker_exits=len(workers.exit_codes),
        worker_exit_codes=",".join(map(str, workers.exit_codes)) or "-",
        restarts=len(workers.exit_codes),
        final_exit_code=exit_code,
        worker_reconnects=workers.events("broker_reconnected"),
        broker_blocked_logs=workers.events("broker_blocked"),
        broker_unblocked_logs=workers.events("broker_unblocked"),
        dead_letter_logs=workers.events("command_dead_lettered"),
    )
    try:
        # The headline first: answered soon after the clear, or stuck (and how).
        assert not missing and last_after_clear is not None, (
            f"{missing} of {report.commands} commands without an outcome {CATCH_UP_WAIT:g} s "
            f"after the alarm cleared (first outcome after the clear: {first_after_clear} s; "
            f"{report.dead_lettered} dead-lettered; {consumers} consumers on the worker queue)"
        )
        assert last_after_clear <= CLEAR_LIMIT, (
            f"the last outcome came {last_after_clear} s after the alarm cleared "
            f"(limit {CLEAR_LIMIT:g} s)"
        )
        report.assert_ok()
        assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0
        assert report.wrong == 0 and "Exhausted" not in report.outcome_kinds
        assert report.commands == COMMANDS + len(SHARED_CODES)
        assert consumers == 1, f"{consumers} consumers on the worker queue after the clear"
        assert healthz_after == 200, f"/healthz answered {healthz_after} after the clear"
        assert healthz_in_alarm == 200, "an alarm is not a reason to restart the worker"
        assert (blocked_gauge_in_alarm, blocked_gauge_after) == (1, 0)
        # The same process throughout: the alarm blocked it, nothing broke it.
        assert not workers.exit_codes, f"the worker exited: {workers.exit_codes}"
        assert exit_code == 0
        # Told by the broker, and said so once per block of its publishing connection (a
        # blocked connection that the kernel gives up on is unblocked with it, and the next one
        # blocked anew).
        blocked, unblocked = workers.events("broker_blocked"), workers.events("broker_unblocked")
        assert blocked >= 1 and blocked == unblocked, (blocked, unblocked)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{stated}\nworker output:\n{workers.output()}") from error


@pytest.mark.disruptive
@pytest.mark.parametrize(
    ("resource", "hold"),
    [("memory", 10.0), ("memory", 90.0), ("disk", 10.0), ("disk", 90.0)],
    ids=["memory-10s", "memory-90s", "disk-10s", "disk-90s"],
)
async def test_alarm_held_then_cleared_every_command_answered_soon_after(
    resource: str,
    hold: float,
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    services: Services,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await hold_alarm_then_clear(resource, hold, broker, start_worker, db, services, capsys)


def steady_commands(count: int) -> Command:
    if count % 3 == 0:
        return CreateCoupon(code=f"closed-{count}", init_count=2)
    if count % 17 == 0:
        return RedeemCoupon(code=f"closed-unknown-{count}")
    return RedeemCoupon(code=SHARED_CODES[0])


@pytest.mark.parametrize("role", ["consume", "publish"])
async def test_a_connection_closed_under_the_busy_worker_the_same_process_answers_again(
    role: str,
    broker: Broker,
    start_worker: StartWorker,
    db: AsyncEngine,
    services: Services,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ledger = Ledger(broker)
    await ledger.start()
    worker = start_worker()
    await worker.wait_ready()
    await ledger.wait_for(
        await ledger.send(CreateCoupon(code=SHARED_CODES[0], init_count=SHARED_COUNT))
    )
    flow = SteadyFlow(ledger, steady_commands, burst=10, pause=0.05)
    flow.start()
    await asyncio.sleep(2)  # a flow under way when the connection goes
    assert ledger.received() > 1, "the flow did not get going"

    closed = await close_client_connection(
        services.amqp_url, CONNECTION_NAMES[role], owner=worker.pid
    )
    closed_at = time.monotonic()
    resumed, settled = await resume_and_settle(flow, closed_at, RESUME_LIMIT + 20, broker, worker)

    assert worker.running(), "the worker process exited:\n" + worker.output[-3000:]
    ready_logs = len(worker.events("worker_ready"))
    reconnects = len(worker.events("broker_reconnected"))
    assert await worker.stop() == 0
    report = await ledger.check(db)
    report.emit(
        f"closed {role} connection",
        capsys,
        connection_closed=closed.name.replace(" ", "_"),
        resumed_seconds_after_close=round(resumed, 1),
        settle_seconds=round(settled, 1),
        worker_reconnects=reconnects,
        worker_ready_logs=ready_logs,
    )
    report.assert_ok()
    assert report.lost == 0 and report.doubled == 0 and report.dead_lettered == 0
    assert report.wrong == 0 and "Exhausted" not in report.outcome_kinds
    assert ready_logs == 1, "the worker started again instead of reconnecting"
    assert resumed <= RESUME_LIMIT, f"first outcome {resumed:.1f} s after the close"
