"""The CLI's client-side commands: `publish` and `events`, speaking only the wire contract."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any

from pydantic import ValidationError

from contracts.client import AmqpCouponClient, OutcomeError, ReceivedEvent
from contracts.commands import Command, CreateCoupon, GetCoupon, RedeemCoupon
from contracts.events import Event
from contracts.identity import event_message_id
from contracts.validation import describe
from worker.entrypoints.operator_errors import StartupError, describe_startup_failure
from worker.messaging.connection import ssl_context
from worker.messaging.failover import connect_any
from worker.settings import Settings


def _command(args: argparse.Namespace) -> Command:
    if args.kind == "create":
        return CreateCoupon(code=args.code, init_count=args.init_count)
    if args.kind == "redeem":
        return RedeemCoupon(code=args.code)
    return GetCoupon(code=args.code)


def _record(received: ReceivedEvent) -> dict[str, Any]:
    return {
        "event": received.routing_key,
        **json.loads(received.body),
        "message_id": received.message_id,
        "correlation_id": received.correlation_id,
    }


def _outcome(event: Event, message_id: str) -> dict[str, Any]:
    # The event's ids as the contract derives them: message_id from the command's, and the
    # correlation_id the command was sent with (its message_id).
    return {
        "event": event.routing_key,
        **event.model_dump(mode="json"),
        "message_id": event_message_id(message_id),
        "correlation_id": message_id,
    }


async def _wait(
    client: AmqpCouponClient, command: Command, message_id: str, within: float
) -> Event:
    """The typed verb of `command`, waiting; a business error's event is returned, not raised."""
    options: dict[str, Any] = {"message_id": message_id, "correlation_id": message_id}
    try:
        if isinstance(command, CreateCoupon):
            return await client.create(command.code, command.init_count, within=within, **options)
        if isinstance(command, RedeemCoupon):
            return await client.redeem(command.code, within=within, **options)
        return await client.get(command.code, within=within, **options)
    except OutcomeError as error:
        return error.event


async def _connect(settings: Settings) -> AmqpCouponClient:
    # Not `contracts.client.connect(url)`, which takes one URL: AMQP_URL may name several nodes,
    # tried in turn at start and on every reconnect, like the worker does.
    try:
        connection = await connect_any(
            settings.broker_urls(),  # with the heartbeat, like the worker's own connection
            ssl_context=ssl_context(settings),
            attempt_timeout=settings.amqp_connect_timeout,
        )
    except Exception as error:
        raise describe_startup_failure(error, settings, "broker") from error
    return await AmqpCouponClient.over(connection, settings.name_prefix)


async def publish(settings: Settings, args: argparse.Namespace) -> int:
    try:
        command = _command(args)
    except ValidationError as error:
        raise StartupError(f"invalid command: {describe(error)}") from None
    async with await _connect(settings) as client:
        if args.wait or args.kind == "get":
            message_id = args.message_id or str(uuid.uuid4())
            try:
                event = await _wait(client, command, message_id, args.timeout)
            except TimeoutError:
                raise StartupError(
                    f"no outcome within {args.timeout:.0f}s: is a worker running "
                    f"(WORKER_NAME_PREFIX={settings.name_prefix!r})?"
                ) from None
            emit(_outcome(event, message_id))
            return 0 if event.routing_key != "coupon.error" else 1
        message_id = await client.send(command, message_id=args.message_id)
        emit({"event": "sent", "routing_key": command.routing_key, "message_id": message_id})
        return 0


async def follow_events(settings: Settings, pattern: str, limit: int) -> int:
    seen = 0
    async with await _connect(settings) as client:
        async for received in client.subscribe([pattern]):
            emit(_record(received))
            seen += 1
            if limit and seen >= limit:
                break
    return 0


def emit(record: dict[str, Any]) -> None:
    """One result line: readable on a terminal, JSON when piped."""
    if sys.stdout.isatty():
        head = record.get("event") or record.get("routing_key")
        rest = " ".join(f"{k}={v}" for k, v in record.items() if k not in ("event",))
        print(f"{head}  {rest}")  # noqa: T201
    else:
        print(json.dumps(record, default=str), flush=True)  # noqa: T201
