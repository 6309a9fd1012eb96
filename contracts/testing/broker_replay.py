"""A replay through a real broker and worker that gives the same outcomes as a serial one.

The worker handles batches concurrently (`WORKER_CONCURRENCY`) and across replicas, so two
commands published together may be handled in either order. Only commands that touch the same
coupon, or share a `message_id`, can see each other's effects; so a command is published once
every earlier command with the same `code` or the same `message_id` has its outcome, and the
others fly together. The outcomes are then those of handling the stream one by one in its
order, whatever the worker's concurrency — a worker started with defaults replays
deterministically, and so does an already running one. Each command carries the replay's direct
reply-to and a correlation id of its own, by which its outcome is found.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from contracts import names
from contracts.names import Topology
from contracts.recording import RecordedMessage
from contracts.replay import Replayer
from contracts.testing.outcomes import ReplayOutcome, outcome_of, prepared_for_replay

MAX_IN_FLIGHT = 128


class ReplayError(AssertionError):
    pass


def dependency_keys(message: RecordedMessage) -> set[str]:
    keys = set()
    if message.properties.message_id:
        keys.add(f"id:{message.properties.message_id}")
    try:
        body = json.loads(message.body_bytes())
    except ValueError:
        return keys
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        keys.add(f"code:{body['code']}")
    return keys


async def replay_through_broker(
    connection: AbstractConnection,
    topology: Topology,
    messages: Sequence[RecordedMessage],
    within: float = 60.0,
) -> list[ReplayOutcome]:
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        loop = asyncio.get_running_loop()
        replies: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            future = replies.get(message.correlation_id or "")
            if future is not None and not future.done():
                future.set_result(message)

        reply_queue = await channel.declare_queue(names.DIRECT_REPLY_TO, passive=True)
        await reply_queue.consume(on_reply, no_ack=True)
        replayer = Replayer(channel, exchange=topology.commands_exchange)
        prepared = prepared_for_replay(messages, names.DIRECT_REPLY_TO)
        in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        latest: dict[str, asyncio.Future[AbstractIncomingMessage]] = {}

        async def one(
            index: int,
            message: RecordedMessage,
            after: list[asyncio.Future[AbstractIncomingMessage]],
        ) -> AbstractIncomingMessage:
            await asyncio.gather(*after, return_exceptions=True)
            future = replies[str(message.properties.correlation_id)]
            async with in_flight:
                try:
                    await replayer.publish(message)
                except aio_pika.exceptions.DeliveryError:
                    raise ReplayError(
                        f"command {index + 1} ({message.routing_key}) reaches no queue"
                    ) from None
                try:
                    async with asyncio.timeout(within):
                        return await future
                except TimeoutError:
                    raise ReplayError(
                        f"no outcome for command {index + 1} ({message.routing_key}, "
                        f"message_id {message.properties.message_id}) within {within:g}s: "
                        "is the worker running on this prefix?"
                    ) from None

        tasks = []
        for index, message in enumerate(prepared):
            future = loop.create_future()
            replies[str(message.properties.correlation_id)] = future
            keys = dependency_keys(message)
            after = [latest[key] for key in keys if key in latest]
            for key in keys:
                latest[key] = future
            tasks.append(asyncio.ensure_future(one(index, message, after)))
        try:
            answers = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        return [
            outcome_of(
                command,
                answer.type or "",
                answer.message_id,
                _header(answer, names.ERROR_HEADER),
                answer.body,
            )
            for command, answer in zip(messages, answers, strict=True)
        ]
    finally:
        await channel.close()


def _header(message: AbstractIncomingMessage, name: str) -> str | None:
    value = (message.headers or {}).get(name)
    return None if value is None else str(value)
