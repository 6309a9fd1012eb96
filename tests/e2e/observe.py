"""What the end-to-end tests look at: outcomes as received, and the database's state."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import names
from tests.support.broker import Broker, Collected
from worker.db import tables

MARKER_TYPE = "test.marker"


@dataclass(frozen=True, slots=True)
class Published:
    """Everything a consumer can see of one outcome, to compare two publications of it."""

    message_id: str | None
    correlation_id: str | None
    type: str | None
    content_type: str | None
    delivery_mode: int | None
    timestamp: datetime | None
    causation_id: Any
    body: bytes

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> Published:
        return cls(
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            type=message.type,
            content_type=message.content_type,
            delivery_mode=int(message.delivery_mode) if message.delivery_mode else None,
            timestamp=message.timestamp,
            causation_id=(message.headers or {}).get(names.CAUSATION_ID_HEADER),
            body=message.body,
        )

    def json(self) -> dict[str, Any]:
        loaded = json.loads(self.body)
        assert isinstance(loaded, dict)
        return loaded


def outcomes(collected: Collected) -> list[AbstractIncomingMessage]:
    """The worker's publications in `collected`, without the tests' own markers."""
    return [m for m in collected.messages if m.type != MARKER_TYPE]


def caused_by(collected: Collected, message_id: str) -> list[Published]:
    return [
        Published.of(m)
        for m in outcomes(collected)
        if (m.headers or {}).get(names.CAUSATION_ID_HEADER) == message_id
    ]


async def wait_caused(
    collected: Collected, message_ids: list[str], count: int = 1, within: float = 30.0
) -> None:
    """Until every one of `message_ids` has at least `count` outcomes."""

    def done(messages: list[AbstractIncomingMessage]) -> bool:
        seen: dict[Any, int] = {}
        for message in messages:
            cause = (message.headers or {}).get(names.CAUSATION_ID_HEADER)
            seen[cause] = seen.get(cause, 0) + 1
        return all(seen.get(message_id, 0) >= count for message_id in message_ids)

    await collected.wait_until(
        done, within, f"{count} outcome(s) for each of {len(message_ids)} commands"
    )


async def flush(broker: Broker, collected: Collected, within: float = 30.0) -> None:
    """Make sure everything published to the events exchange so far has reached `collected`:
    a marker published now queues behind it, so once the marker is in, so is the rest."""
    marker = str(uuid.uuid4())
    exchange = await broker.ch.get_exchange(broker.topology.events_exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(b"{}", message_id=marker, type=MARKER_TYPE), routing_key=MARKER_TYPE
    )
    await collected.wait_until(
        lambda messages: any(m.message_id == marker for m in messages), within, "the marker"
    )


async def coupons(db: AsyncEngine) -> dict[str, tuple[int, int]]:
    """code -> (init_count, remaining_count)."""
    async with db.connect() as connection:
        rows = await connection.execute(
            select(
                tables.coupon.c.code, tables.coupon.c.init_count, tables.coupon.c.remaining_count
            )
        )
        return {code: (init, remaining) for code, init, remaining in rows}


async def processed(db: AsyncEngine) -> dict[str, str]:
    """message_id -> the stored outcome's event name."""
    async with db.connect() as connection:
        rows = await connection.execute(
            select(tables.processed_command.c.message_id, tables.processed_command.c.outcome_type)
        )
        return {str(message_id): str(outcome) for message_id, outcome in rows}
