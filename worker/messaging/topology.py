"""Declare (or, for a least-privilege user, verify) the exchanges and queues of contract v1.1."""

from __future__ import annotations

import re
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue, ExchangeType
from aiormq.exceptions import ChannelClosed

from contracts.names import Topology
from worker.app.failures import OperatorError
from worker.settings import QueueType, Settings


class TopologyError(OperatorError):
    """The broker's topology is missing or differs from what the worker needs (said to the
    operator at start-up, with what to do)."""


def worker_queue_arguments(topology: Topology, settings: Settings) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-dead-letter-exchange": topology.dead_exchange}
    if settings.queue_type is QueueType.QUORUM:
        arguments["x-queue-type"] = "quorum"
        # The backstop for a command that crashes every worker that takes it.
        arguments["x-delivery-limit"] = settings.delivery_limit
        if not settings.dead_lettering_by_policy:
            arguments.update(AT_LEAST_ONCE)
    return arguments


# Contract v1.1: what the broker dead-letters itself (delivery limit reached) is handed to
# coupon.dead with publisher confirms and kept in coupon.worker until a queue took it, even
# while coupon.worker.dead is full or unavailable (RabbitMQ >= 3.10, quorum queues only).
# RabbitMQ honours the strategy only with reject-publish overflow (with drop-head it silently
# falls back to at-most-once); coupon.worker has no length limit, so the overflow changes
# nothing else.
AT_LEAST_ONCE: dict[str, Any] = {
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}


def migration_advice(topology: Topology) -> str:
    """How to give a queue declared under contract v1 at-least-once dead-lettering."""
    pattern = "^" + re.escape(topology.worker_queue) + "$"
    policy = '{"dead-letter-strategy":"at-least-once","overflow":"reject-publish"}'
    return (
        f"queue {topology.worker_queue!r} was declared under contract v1, without at-least-once "
        "dead-lettering, and RabbitMQ cannot change the arguments of an existing queue. Either "
        "(a) apply a policy and tell the worker so: `rabbitmqctl set_policy --apply-to queues "
        f"--priority 10 coupon-worker-dead-lettering '{pattern}' '{policy}'`, then start with "
        "WORKER_DEAD_LETTERING_BY_POLICY=true; or (b) re-create the queue: stop every worker, "
        f"wait until `rabbitmqctl list_queues name messages` shows {topology.worker_queue} "
        f"empty, `rabbitmqctl delete_queue {topology.worker_queue}`, and start a worker, which "
        "declares it anew"
    )


def dead_queue_arguments(settings: Settings) -> dict[str, Any]:
    return {"x-queue-type": "quorum"} if settings.queue_type is QueueType.QUORUM else {}


async def declare(
    channel: AbstractChannel, topology: Topology, settings: Settings
) -> AbstractQueue:
    """Idempotently create everything; returns the worker queue."""
    try:
        commands = await channel.declare_exchange(
            topology.commands_exchange, ExchangeType.TOPIC, durable=True
        )
        await channel.declare_exchange(topology.events_exchange, ExchangeType.TOPIC, durable=True)
        dead = await channel.declare_exchange(
            topology.dead_exchange, ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(
            topology.dead_queue, durable=True, arguments=dead_queue_arguments(settings)
        )
        await dead_queue.bind(dead, routing_key="")
        queue = await channel.declare_queue(
            topology.worker_queue,
            durable=True,
            arguments=worker_queue_arguments(topology, settings),
        )
        await queue.bind(commands, routing_key=topology.command_binding_key)
    except ChannelClosed as error:
        if _is_v1_queue(error, topology):
            raise TopologyError(migration_advice(topology)) from None
        raise TopologyError(
            f"cannot declare the broker topology ({error}); if the queues exist with other "
            "settings (queue type, delivery limit), delete them or match WORKER_QUEUE_TYPE and "
            "WORKER_DELIVERY_LIMIT; a user without configure permission needs "
            "WORKER_DECLARE_TOPOLOGY=false"
        ) from None
    return queue


def _is_v1_queue(error: ChannelClosed, topology: Topology) -> bool:
    """PRECONDITION_FAILED on the worker queue's at-least-once arguments: "inequivalent arg
    'x-dead-letter-strategy' for queue '...': received ... but current is none"."""
    text = str(error)
    return (
        "PRECONDITION_FAILED" in text
        and f"'{topology.worker_queue}'" in text
        and any(f"'{argument}'" in text for argument in AT_LEAST_ONCE)
    )


async def verify(connection: AbstractConnection, topology: Topology) -> None:
    """Passively check every name; a failed passive declare closes its channel, so each check
    gets its own."""
    checks: list[tuple[str, str]] = [
        ("exchange", topology.commands_exchange),
        ("exchange", topology.events_exchange),
        ("exchange", topology.dead_exchange),
        ("queue", topology.dead_queue),
        ("queue", topology.worker_queue),
    ]
    missing = []
    for kind, name in checks:
        channel = await connection.channel(publisher_confirms=False)
        try:
            if kind == "exchange":
                await channel.get_exchange(name, ensure=True)
            else:
                await channel.get_queue(name, ensure=True)
        except ChannelClosed:
            missing.append(f"{kind} {name!r}")
        finally:
            if not channel.is_closed:
                await channel.close()
    if missing:
        raise TopologyError(
            "WORKER_DECLARE_TOPOLOGY=false, but the broker lacks "
            + ", ".join(missing)
            + ": an operator must declare them (see docs/operations.md, "
            "'Least-privilege deployment'), "
            "or run a worker once with permission to declare them"
        )


async def worker_queue(channel: AbstractChannel, topology: Topology) -> AbstractQueue:
    """The existing worker queue, without declaring it (least-privilege mode)."""
    return await channel.get_queue(topology.worker_queue, ensure=True)
