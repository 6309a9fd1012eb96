"""The slow-link phase: PostgreSQL behind a TCP proxy on loopback that delays each direction by
`--delay` ms (10 ms round trip by default: a database in another zone), lone commands offered
at `--rate` per second, command → outcome p50 / p99 (issue 22: p50 ≤ 4 round trips, p99 ≤ 6).

    make bench-slow-link             # SLOW_LINK_ARGS="--delay 5 --rate 20 --seconds 30"

One worker process (`coupon-worker run`) whose DATABASE_URL goes through the proxy; migrations
and the broker do not. Each command is a create of a new code, sent alone (confirmed), and timed
from just before its publish to its event's arrival on a queue of the run's own. Written to
`benchmarks/results/slow-link-<time>.json`, beside it its raw record `slow-link-<time>.log`
(every probe's and timed command's latency as FIGURES lines: the stored figures are rebuilt
from it), under the service lock like every phase (benchmarks/session.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy.engine import make_url

from benchmarks.config import RESULTS_DIR, BenchConfig, service_urls
from benchmarks.database import BenchmarkFailed, migrate
from benchmarks.measure import Context
from benchmarks.processes import TargetProcess
from benchmarks.provenance import (
    BENCHMARK_CODE,
    figures_line,
    head,
    parse_figures_line,
    uncommitted,
)
from benchmarks.session import run_phase, write_result
from contracts import names
from contracts.amqp import to_amqp
from contracts.commands import CreateCoupon
from contracts.messages import command_message
from tests.support.broker import Broker
from tests.support.database import create_database, drop_database
from worker.settings import Settings

WARM_UP = 20  # commands first, not timed: connections opened, statements prepared
FORMAT = 2  # 2: a raw record beside the result (every probe's and command's latency)
PROBES = 200  # `SELECT 1` round trips through the proxy, timed, before the commands


async def probe_round_trip(database_url: str, rate: float) -> list[float]:
    """One prepared `SELECT 1` (one round trip) through the proxy, `PROBES` times at the
    commands' pace: what a round trip really costs here, the proxy's own scheduling included,
    so that the commands' latency can be counted in round trips measured, not assumed."""
    dsn = make_url(database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(dsn.render_as_string(hide_password=False))
    try:
        await connection.fetchval("SELECT 1")  # prepared, connection warm
        timings: list[float] = []
        for _ in range(PROBES):
            started = time.perf_counter()
            await connection.fetchval("SELECT 1")
            timings.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(1 / rate)
        return sorted(timings)
    finally:
        await connection.close()


class DelayingProxy:
    """Forwards TCP connections to `upstream`, each direction's bytes held `delay` seconds
    (in order) before they are passed on."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self._upstream = (host, port)
        self._delay = delay
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _connect(self, client_in: asyncio.StreamReader, client_out: Any) -> None:
        server_in, server_out = await asyncio.open_connection(*self._upstream)
        for pipe in (self._pipe(client_in, server_out), self._pipe(server_in, client_out)):
            task = asyncio.create_task(pipe)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    sink.close()
                    return
                sink.write(data)
                await sink.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await source.read(65536):
                held.put_nowait((loop.time() + self._delay, data))
            held.put_nowait((loop.time() + self._delay, b""))
            await delivering
        except (ConnectionError, asyncio.CancelledError):
            delivering.cancel()
            sink.close()
            raise


class Arrivals:
    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        causation = (message.headers or {}).get(names.CAUSATION_ID_HEADER)
        if isinstance(causation, str):
            self.at.setdefault(causation, time.perf_counter())
            self.changed.set()

    async def wait_for(self, message_ids: list[str], within: float) -> None:
        async with asyncio.timeout(within):
            while not all(m in self.at for m in message_ids):
                self.changed.clear()
                await self.changed.wait()


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def slow_link(
    context: Context, delay_ms: float, rate: float, seconds: float
) -> dict[str, Any]:
    """One run in `context` (benchmarks/session.py holds the service lock and keeps the logs):
    the result, every probe's and every timed command's latency written to its raw record."""
    started_at = datetime.now(UTC)
    amqp_url, admin_url = context.config.amqp_url, context.config.admin_database_url
    prefix = f"slow{uuid.uuid4().hex[:8]}-"
    broker = Broker(amqp_url, prefix)
    await broker.open()
    await broker.declare(Settings.model_validate({"name_prefix": prefix}))
    arrivals = Arrivals()
    events = await broker.ch.declare_queue(f"{prefix}slow.events", exclusive=True)
    await events.bind(broker.topology.events_exchange, routing_key="#")
    await events.consume(arrivals.on_event, no_ack=True)
    database_url = await create_database(admin_url, "coupon_slow")
    direct = make_url(database_url)
    proxy = DelayingProxy(direct.host or "127.0.0.1", direct.port or 5432, delay_ms / 1000)
    log = context.logs / "worker.log"
    worker: TargetProcess | None = None
    try:
        await migrate(database_url, amqp_url)
        via_proxy = direct.set(host="127.0.0.1", port=await proxy.start())
        worker = TargetProcess.worker(
            {
                "AMQP_URL": amqp_url,
                "DATABASE_URL": via_proxy.render_as_string(hide_password=False),
                "WORKER_NAME_PREFIX": prefix,
            },
            log,
        )
        probes = await probe_round_trip(via_proxy.render_as_string(hide_password=False), rate)
        worker.start()
        await worker.wait_ready()
        exchange = await broker.ch.get_exchange(broker.topology.commands_exchange, ensure=False)
        sent: dict[str, float] = {}
        count = WARM_UP + int(rate * seconds)
        interval = 1 / rate
        next_at = time.perf_counter()
        for n in range(count):
            message = command_message(CreateCoupon(code=f"SLOW-{n}", init_count=1))
            started = time.perf_counter()
            await exchange.publish(to_amqp(message), message.routing_key, mandatory=True)
            if n >= WARM_UP:
                sent[message.message_id] = started
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        await arrivals.wait_for(list(sent), within=120)
        await worker.stop()
    except TimeoutError as error:
        raise BenchmarkFailed("not every command was answered within 120 s") from error
    finally:
        if worker is not None:
            worker.kill()
        await proxy.close()
        await broker.delete_topology()
        await broker.close()
        await drop_database(admin_url, database_url)
    latencies = [(arrivals.at[m] - at) * 1000 for m, at in sent.items()]
    context.record.extend(figures_line("probe", {"ms": round(ms, 3)}) for ms in probes)
    context.record.extend(figures_line("command", {"ms": round(ms, 3)}) for ms in latencies)
    return {
        "format": FORMAT,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": head(),
        "uncommitted_code_under_test": uncommitted(BENCHMARK_CODE),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "delay_each_way_ms": delay_ms,
        "offered_per_second": rate,
        **rebuild(context.record, delay_ms),
    }


def rebuild(record: list[str], delay_ms: float) -> dict[str, Any]:
    """The run's figures from its raw record (the `probe` and `command` FIGURES lines): what the
    result file stores, and what tests/unit/test_phase_tables.py recomputes from the kept log."""
    timed: dict[str, list[float]] = {"probe": [], "command": []}
    for line in record:
        if line.startswith("FIGURES ["):
            label, figures = parse_figures_line(line)
            if label in timed:
                timed[label].append(float(figures["ms"]))
    probes, latencies = sorted(timed["probe"]), sorted(timed["command"])
    if not probes or not latencies:
        raise ValueError("the raw record holds no probe or no command latency")
    round_trip = 2 * delay_ms
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    measured = percentile(probes, 0.5)
    return {
        "probe_round_trips": len(probes),
        "probe_p50_ms": round(measured, 1),
        "probe_p99_ms": round(percentile(probes, 0.99), 1),
        "p50_measured_round_trips": round(p50 / measured, 1),
        "p99_measured_round_trips": round(p99 / measured, 1),
        "commands": len(latencies),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "max_ms": round(latencies[-1], 1),
        "mean_ms": round(statistics.fmean(latencies), 1),
        "p50_round_trips": round(p50 / round_trip, 1),
        "p99_round_trips": round(p99 / round_trip, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=5.0, help="ms, each direction")
    parser.add_argument("--rate", type=float, default=20.0, help="commands per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if not (0 < args.delay <= 1000 and 0 < args.rate <= 1000 and 0 < args.seconds <= 3600):
        parser.error("--delay in (0, 1000] ms, --rate in (0, 1000]/s, --seconds in (0, 3600]")
    config = BenchConfig(*service_urls(), output_dir=args.output_dir)
    result, context = run_phase(
        "slow-link", config, lambda context: slow_link(context, args.delay, args.rate, args.seconds)
    )
    output = write_result(result, context.record, args.output_dir, prefix="slow-link-")
    sys.stdout.write(
        f"{result['commands']} lone commands at {args.rate:g}/s over a "
        f"{2 * args.delay:g} ms round trip: p50 {result['p50_ms']} ms "
        f"({result['p50_round_trips']} round trips), p99 {result['p99_ms']} ms "
        f"({result['p99_round_trips']}), max {result['max_ms']} ms; one round trip through "
        f"the proxy measured p50 {result['probe_p50_ms']} ms, p99 {result['probe_p99_ms']} ms "
        f"(the commands' p50 is {result['p50_measured_round_trips']} of them); {output}\n"
    )


if __name__ == "__main__":
    main()
