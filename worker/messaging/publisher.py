"""Everything the worker sends: outcomes (events exchange and reply_to), dead letters, and
replies to invalid commands. Every publish waits for the broker's confirm.

One `Publisher` per publishing connection (`worker.messaging.link`); `worker.messaging.outlet`
keeps the current one and tries a failed publish again on the next. While the broker blocks the
connection (a resource alarm), the confirm timeout does not run: a blocked broker is not a
broken one, and the publishes are confirmed once the alarm clears.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage

from contracts import names
from contracts.events import InvalidCommandReply
from contracts.names import Topology
from worker.app.outcomes import Outcome

# When the worker dead-lettered a command (an AMQP timestamp); RabbitMQ's own dead letters carry
# the time in x-death. `coupon-worker dead-letters` shows and filters by it.
DEAD_LETTERED_AT_HEADER: Final = "x-dead-lettered-at"

BLOCKED_POLL: Final = 0.25  # seconds between looks at the blocked flag while confirms are due


class OutcomePublisher(Protocol):
    """What a batch needs to answer its commands: `Publisher` on one connection, `Outlet` on
    the current one (and the metrics, tracing and fault-injection decorators around either)."""

    async def publish_outcomes(
        self, answers: Sequence[tuple[AbstractIncomingMessage, Outcome]]
    ) -> None:
        """Publish each command's outcome (and its reply); returns once all are confirmed."""

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        """A copy of `command` in the dead-letter queue with its reason (and a reply to its
        sender); returns once the broker confirmed it."""


class Blocking(Protocol):
    """Whether the broker blocks the connection now (`worker.messaging.link.BrokerLink`)."""

    @property
    def blocked(self) -> bool: ...


class _NeverBlocked:
    blocked = False


class Publisher:
    def __init__(
        self,
        events_channel: AbstractChannel,
        dead_letter_channel: AbstractChannel,
        topology: Topology,
        timeout: float,
        blocking: Blocking | None = None,
    ) -> None:
        # Dead letters go on their own channel, which raises on an unroutable publish: a dead
        # letter that no queue took must not be acknowledged away.
        self._events_channel = events_channel
        self._dead_letter_channel = dead_letter_channel
        self._topology = topology
        self._timeout = timeout
        self._blocking: Blocking = blocking or _NeverBlocked()
        self._events: AbstractExchange | None = None
        self._dead: AbstractExchange | None = None

    async def start(self) -> None:
        self._events = await self._events_channel.get_exchange(
            self._topology.events_exchange, ensure=False
        )
        self._dead = await self._dead_letter_channel.get_exchange(
            self._topology.dead_exchange, ensure=False
        )

    @property
    def channels_open(self) -> bool:
        return not (self._events_channel.is_closed or self._dead_letter_channel.is_closed)

    async def publish_outcomes(
        self, answers: Sequence[tuple[AbstractIncomingMessage, Outcome]]
    ) -> None:
        """Every outcome of a batch, each answering its command, published pipelined; returns
        when all are confirmed, raises (at the first failure, or as soon as the channel closes)
        if one is not. One watch on the channel per batch, not one per outcome."""
        sends = [send for command, outcome in answers for send in self._sends(outcome, command)]
        await self._confirmed([self._events_channel], *sends)

    def _sends(self, outcome: Outcome, command: AbstractIncomingMessage) -> list[Awaitable[Any]]:
        """To the events exchange (unless a read) and to the command's reply_to."""
        assert self._events is not None, "start() first"
        message = Message(
            outcome.body,
            message_id=outcome.event_message_id,
            correlation_id=command.correlation_id or command.message_id,
            type=outcome.routing_key,
            content_type=names.JSON_CONTENT_TYPE,
            timestamp=outcome.occurred_at,
            delivery_mode=DeliveryMode.PERSISTENT,
            headers={names.CAUSATION_ID_HEADER: outcome.command_message_id},
        )
        sends: list[Awaitable[Any]] = []
        if outcome.broadcast:
            # Not mandatory: an event nobody subscribes to is legitimately dropped.
            sends.append(self._events.publish(message, outcome.routing_key, mandatory=False))
        if command.reply_to:
            sends.append(self._reply(message, command.reply_to))
        return sends

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        """A copy of the command, with its body and properties, plus the reason in headers;
        the sender, if it gave a reply_to, is told `{"error": reply_error, "detail": ...}`."""
        assert self._dead is not None, "start() first"
        headers = dict(command.headers or {})
        headers[names.ERROR_HEADER] = error
        headers[names.ERROR_DETAIL_HEADER] = detail
        headers[DEAD_LETTERED_AT_HEADER] = datetime.now(UTC)
        copy = Message(
            command.body,
            headers=headers,
            content_type=command.content_type,
            content_encoding=command.content_encoding,
            delivery_mode=DeliveryMode.PERSISTENT,
            priority=command.priority,
            correlation_id=command.correlation_id,
            reply_to=command.reply_to,
            expiration=None,  # a dead letter waits for an operator, however long
            message_id=command.message_id,
            timestamp=command.timestamp,
            type=command.type,
            user_id=None,  # the broker checks user_id against the publisher: never copy it
            app_id=command.app_id,
        )
        sends: list[Awaitable[Any]] = [
            self._dead.publish(copy, command.routing_key or "", mandatory=True)
        ]
        if command.reply_to:
            reply = Message(
                InvalidCommandReply(error=reply_error, detail=f"{error}: {detail}")
                .model_dump_json()
                .encode(),
                correlation_id=command.correlation_id or command.message_id,
                type=names.INVALID,
                content_type=names.JSON_CONTENT_TYPE,
                headers={names.ERROR_HEADER: error},
            )
            sends.append(self._reply(reply, command.reply_to))
        await self._confirmed([self._dead_letter_channel, self._events_channel], *sends)

    async def _reply(self, message: Message, reply_to: str) -> Any:
        # Best effort: a requester that went away (or a direct reply-to consumer that is gone)
        # must not hold up the command, so this is not mandatory.
        return await self._events_channel.default_exchange.publish(
            message, reply_to, mandatory=False
        )

    async def _confirmed(self, channels: Sequence[AbstractChannel], *sends: Awaitable[Any]) -> None:
        """Wait for every confirm, failing fast when one of the `channels` the sends use closes
        under them: a publish caught by a dropped connection may never be confirmed nor
        rejected, and the commands it answers would otherwise be held for the whole publish
        timeout."""
        closing = []
        for channel in channels:
            try:
                closing.append((await channel.get_underlay_channel()).closing)
            except Exception:  # closed, or between connections: let the sends report it
                continue
        published = asyncio.ensure_future(asyncio.gather(*sends))
        try:
            await self._until_confirmed(published, closing)
        finally:
            if not published.done():
                published.cancel()
                await asyncio.gather(published, return_exceptions=True)
        if published.cancelled():
            if any(future.done() for future in closing):
                raise ChannelLost("the channel closed before the broker confirmed")
            raise TimeoutError(f"no confirm from the broker within {self._timeout}s")
        published.result()

    async def _until_confirmed(
        self, published: asyncio.Future[Any], closing: Sequence[asyncio.Future[Any]]
    ) -> None:
        """Until every confirm came, a channel closed, or `timeout` seconds passed during which
        the broker did not block the connection (a block lasts as long as the alarm)."""
        loop = asyncio.get_running_loop()
        left = self._timeout
        waits = {published, *closing}
        while left > 0:
            started = loop.time()
            step = BLOCKED_POLL if self._blocking.blocked else min(left, BLOCKED_POLL * 4)
            done, _ = await asyncio.wait(waits, timeout=step, return_when=asyncio.FIRST_COMPLETED)
            if done:
                return
            if not self._blocking.blocked:
                left -= loop.time() - started


class ChannelLost(ConnectionError):
    """A channel closed while publishes on it waited for their confirms."""
