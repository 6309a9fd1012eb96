"""The broker-only ceiling: `python -m benchmarks.ceiling --prefix P` (AMQP_URL from the
environment). What the worker does on the wire, and nothing else: consume the worker queue,
publish one outcome per command of the same shape and size (events exchange, reply_to, dead
letters for invalid bodies) with publisher confirms, then ack. No database, no validation
beyond what picks the outcome.

It consumes the way the worker does: a prefetch window, batches of whatever is already
delivered (up to the batch bound), `--concurrency` batches in flight at once (the worker's
`WORKER_CONCURRENCY`), every outcome of a batch published before waiting for their confirms
together, then one ack with `multiple=True` once every earlier batch is settled (batches are
settled in delivery order, as the worker settles them). `--loop uvloop` runs it on uvloop's
event loop, as the worker runs by default; the benchmark tries several configurations and
measures against the best (benchmarks/runner.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from benchmarks.config import LOOPS
from contracts import names
from contracts.names import Topology

OUTCOME_NAMESPACE = uuid.UUID("5b0c7d1e-8f7a-4c35-9f4e-0c6b8a3e2d10")


def outcome_for(message: AbstractIncomingMessage) -> tuple[str, dict[str, Any]] | None:
    """(outcome type, body) like the worker's, or None for a command it would reject."""
    try:
        body = json.loads(message.body)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        return None
    code = body["code"]
    coupon_id = str(uuid.uuid5(OUTCOME_NAMESPACE, code))
    if message.routing_key == names.CREATE:
        count = body.get("init_count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            return None
        shape = {"id": coupon_id, "code": code, "init_count": count, "remaining_count": count}
        return names.CREATED, shape
    if message.routing_key == names.REDEEM:
        return names.REDEEMED, {"id": coupon_id, "code": code, "remaining_count": 999_999_999}
    if message.routing_key == names.GET and message.reply_to:
        shape = {"id": coupon_id, "code": code, "init_count": 10**9, "remaining_count": 10**9}
        return names.FOUND, shape
    return None


class Ceiling:
    def __init__(
        self, channel: AbstractChannel, topology: Topology, batch_size: int, concurrency: int = 1
    ) -> None:
        self.channel = channel
        self.topology = topology
        self.batch_size = batch_size
        self.concurrency = concurrency
        self.inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._taking = asyncio.Lock()  # one batch formed at a time, in delivery order
        self._settled: asyncio.Event = asyncio.Event()  # the batch before the next one to form
        self._settled.set()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        await self.inbox.put(message)

    async def run(self) -> None:
        """`concurrency` loops, each taking the next batch, publishing its outcomes, and
        acking it once the batch before it is acked; the first to fail ends the run."""
        events = await self.channel.get_exchange(self.topology.events_exchange, ensure=False)
        dead = await self.channel.get_exchange(self.topology.dead_exchange, ensure=False)
        loops = [asyncio.create_task(self._loop(events, dead)) for _ in range(self.concurrency)]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in loops:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*loops, return_exceptions=True)

    async def _loop(
        self, events: aio_pika.abc.AbstractExchange, dead: aio_pika.abc.AbstractExchange
    ) -> None:
        while True:
            async with self._taking:
                batch = [await self.inbox.get()]
                while len(batch) < self.batch_size and not self.inbox.empty():
                    batch.append(self.inbox.get_nowait())
                before, mine = self._settled, asyncio.Event()
                self._settled = mine
            sends = []
            for message in batch:
                sends.extend(self.publishes(message, events, dead))
            await asyncio.gather(*sends)
            await before.wait()  # settled in delivery order: every earlier tag is acked
            await batch[-1].ack(multiple=True)
            mine.set()

    def publishes(
        self,
        command: AbstractIncomingMessage,
        events: aio_pika.abc.AbstractExchange,
        dead: aio_pika.abc.AbstractExchange,
    ) -> list[Any]:
        command_id = command.message_id or ""
        outcome = outcome_for(command)
        if outcome is None:
            headers = dict(command.headers or {})
            headers[names.ERROR_HEADER] = "InvalidCommand"
            headers[names.ERROR_DETAIL_HEADER] = "rejected by the ceiling"
            copy = aio_pika.Message(
                command.body,
                headers=headers,
                message_id=command.message_id,
                content_type=command.content_type,
                reply_to=command.reply_to,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            sends = [dead.publish(copy, command.routing_key or "", mandatory=True)]
            if command.reply_to:
                detail = {"error": "InvalidCommand", "detail": "InvalidCommand: rejected"}
                reply = aio_pika.Message(
                    json.dumps(detail).encode(),
                    correlation_id=command.correlation_id or command_id,
                    type=names.INVALID,
                    content_type=names.JSON_CONTENT_TYPE,
                    headers={names.ERROR_HEADER: "InvalidCommand"},
                )
                sends.append(self.channel.default_exchange.publish(reply, command.reply_to))
            return sends
        outcome_type, body = outcome
        message = aio_pika.Message(
            json.dumps(body, separators=(",", ":")).encode(),
            message_id=str(uuid.uuid5(OUTCOME_NAMESPACE, command_id)),
            correlation_id=command.correlation_id or command_id,
            type=outcome_type,
            content_type=names.JSON_CONTENT_TYPE,
            timestamp=datetime.now(UTC),
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers={names.CAUSATION_ID_HEADER: command_id},
        )
        sends = []
        if outcome_type != names.FOUND:
            sends.append(events.publish(message, outcome_type, mandatory=False))
        if command.reply_to:
            sends.append(self.channel.default_exchange.publish(message, command.reply_to))
        return sends


async def serve(prefix: str, prefetch: int, batch_size: int, concurrency: int = 1) -> int:
    connection = await aio_pika.connect(os.environ["AMQP_URL"])
    try:
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=prefetch)
        publish_channel = await connection.channel(publisher_confirms=True)
        topology = Topology(prefix)
        queue = await consume_channel.get_queue(topology.worker_queue, ensure=True)
        ceiling = Ceiling(publish_channel, topology, batch_size, concurrency)
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        worker = asyncio.create_task(ceiling.run())
        tag = await queue.consume(ceiling.on_message)
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        print(  # noqa: T201
            f"ceiling_ready queue={topology.worker_queue} prefetch={prefetch} "
            f"batch_size={batch_size} concurrency={concurrency} loop={loop}",
            flush=True,
        )
        await asyncio.wait(
            {worker, asyncio.create_task(stop.wait())}, return_when="FIRST_COMPLETED"
        )
        await queue.cancel(tag)
        if worker.done():
            error = worker.exception()
            print(f"ceiling_failed {error!r}", file=sys.stderr, flush=True)  # noqa: T201
            return 1
        worker.cancel()
        return 0
    finally:
        await connection.close()  # unacknowledged deliveries go back to the queue


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__)
    parser.add_argument("--prefix", required=True, help="the broker name prefix of the run")
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1, help="batches in flight (1)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="event loop (asyncio)")
    args = parser.parse_args(argv)
    if not (1 <= args.prefetch <= 10_000 and 1 <= args.batch_size <= 10_000):
        sys.exit("--prefetch and --batch-size must be from 1 to 10,000")
    if not 1 <= args.concurrency <= 64:
        sys.exit("--concurrency must be from 1 to 64")
    serving = serve(args.prefix, args.prefetch, args.batch_size, args.concurrency)
    if args.loop == "uvloop":
        import uvloop

        sys.exit(uvloop.run(serving))
    sys.exit(asyncio.run(serving))


if __name__ == "__main__":
    main()
