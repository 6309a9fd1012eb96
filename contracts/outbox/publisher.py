"""Publishing for the relay: what it needs of a publisher, and one on aio-pika (the `outbox` extra).

The relay tells two kinds of failed publish apart, and only these two:

- `PublishRefused`: the broker refused this message (returned it as unroutable to a mandatory
  publish, or closed the channel over it, e.g. a body larger than its `max_message_size`). The
  relay parks the row with the reason and goes on with the next one;
- `BrokerUnavailable`: nothing can be published now (no connection, a nack while a queue is
  full, no confirm within the timeout, the exchange missing). The relay leaves the row staged,
  says so, waits and tries again.

`classify` reads aio-pika's own errors and the clients' `CommandUnroutable` the same way, so any
`CouponClient` (whose `send` is confirmed and mandatory too) can stand in as the publisher.
"""

from __future__ import annotations

import contextlib
from typing import Literal, Protocol
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.connection import make_url
from aio_pika.exceptions import (
    CONNECTION_EXCEPTIONS,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    DeliveryError,
    PublishError,
)

from contracts.amqp import to_amqp
from contracts.commands import Command
from contracts.errors import CommandUnroutable
from contracts.messages import command_message
from contracts.names import Topology
from contracts.validation import truncated

DEFAULT_PUBLISH_TIMEOUT = 30.0


class PublishRefused(Exception):
    """The broker will not take this message, however often it is sent."""


class BrokerUnavailable(Exception):
    """No message can be published now; the same one may be, later."""


class Publisher(Protocol):
    """What the relay publishes through: a confirmed, mandatory publish of one command under
    the given `message_id` (`CouponClient.send` is one)."""

    async def send(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str: ...


def classify(error: BaseException) -> Literal["refused", "unavailable"] | None:
    """How the relay treats a failed publish; None: not a publishing failure (a bug: raise)."""
    if isinstance(error, PublishRefused | ChannelPreconditionFailed | CommandUnroutable):
        return "refused"
    if isinstance(error, PublishError):  # returned (Basic.Return): "nowhere to route this"
        return "refused"
    if isinstance(error, DeliveryError):  # nacked: "not now" (e.g. a queue full, reject-publish)
        return "unavailable"
    if isinstance(error, BrokerUnavailable | TimeoutError | ChannelNotFoundEntity):
        return "unavailable"
    if isinstance(error, CONNECTION_EXCEPTIONS) and type(error) is not RuntimeError:
        return "unavailable"
    return None


def reason(error: BaseException) -> str:
    """A short, bounded reason for logs and for a parked row."""
    if isinstance(error, PublishError):
        code, text = getattr(error.frame, "reply_code", ""), getattr(error.frame, "reply_text", "")
        return f"returned by the broker: {code} {text}"
    if isinstance(error, BrokerUnavailable | PublishRefused):
        return truncated(str(error), 300)  # a reason already
    if isinstance(error, TimeoutError):
        return "TimeoutError: no answer from the broker in time"
    return truncated(f"{type(error).__name__}: {str(error) or repr(error)}", 300)


class AmqpPublisher:
    """Publishes to `coupon.commands` on a connection of its own, with publisher confirms and
    `mandatory`, persistent, under the staged `message_id`. It connects when first needed and
    again after a failure; it never retries by itself (the relay decides)."""

    def __init__(
        self,
        url: str,
        prefix: str = "",
        *,
        timeout: float = DEFAULT_PUBLISH_TIMEOUT,
    ) -> None:
        self._url = url
        self._password = urlsplit(url).password or None
        self.topology = Topology(prefix)
        self.timeout = timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def send(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Publish `command` and wait for the broker's confirm; its `message_id`."""
        message = command_message(command, message_id=message_id, correlation_id=correlation_id)
        channel = await self._open()
        try:
            exchange = await channel.get_exchange(self.topology.commands_exchange, ensure=False)
            await exchange.publish(
                to_amqp(message), message.routing_key, mandatory=True, timeout=self.timeout
            )
        except ChannelNotFoundEntity as error:
            await self._drop_channel()
            raise BrokerUnavailable(
                f"exchange {self.topology.commands_exchange!r} not found: has the worker "
                "declared its topology?"
            ) from error
        except ChannelPreconditionFailed as error:
            await self._drop_channel()  # the broker closed the channel over this message
            raise PublishRefused(self._reason(error)) from error
        except DeliveryError:
            raise
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as error:
            await self.close()
            raise BrokerUnavailable(self._reason(error)) from error
        return message.message_id

    async def _open(self) -> AbstractChannel:
        if self._channel is not None and not self._channel.is_closed:
            return self._channel
        try:
            if self._connection is None or self._connection.is_closed:
                self._connection = await self._connect()
            self._channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        except (TimeoutError, *CONNECTION_EXCEPTIONS) as error:
            await self.close()
            raise BrokerUnavailable(self._reason(error)) from error
        return self._channel

    async def _connect(self) -> AbstractConnection:
        # aio_pika.connect drops a connection whose connect failed without closing it; its
        # close callbacks then run whenever it is collected (possibly as the loop ends).
        connection = aio_pika.Connection(
            make_url(self._url), client_properties={"connection_name": "coupon-contracts relay"}
        )
        try:
            await connection.connect(timeout=self.timeout)
        except BaseException:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS, TimeoutError):
                await connection.close()
            raise
        return connection

    def _reason(self, error: BaseException) -> str:
        text = reason(error)
        return text.replace(self._password, "***") if self._password else text

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await channel.close()

    async def close(self) -> None:
        """Close the connection (the next publish opens a new one)."""
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*CONNECTION_EXCEPTIONS):
                await connection.close()
