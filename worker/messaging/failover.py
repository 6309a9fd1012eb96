"""A robust broker connection over several RabbitMQ nodes: each attempt goes to the next one.

aio-pika's `RobustConnection` reconnects to the one URL it was made with (aio-pika issue #141;
the round-robin class proposed upstream in PR #680 only rotates the first connection). Its
reconnect loop reads `self.url` on every attempt, and every attempt that fails, like every
established connection that is lost, passes through `_on_connection_close` (aio-pika's
`UnderlayConnection.connect` calls it with the failure before raising). That method is the one
hook used here: when the connection was not closed on purpose, `url` moves on to the next
address, so the next attempt - a second later, `reconnect_interval` - goes to the next node,
round-robin, and a dead node costs one failed attempt rather than an outage. Channels, the
consumer and the publisher's confirms are restored by `RobustConnection` as after any reconnect.

The first connection of a `RobustConnection` fails fast (an unreachable broker is a start-up
error, said so by `worker.entrypoints.operator_errors`); `connect_any` tries each address once,
in order, before it gives up with the last error.

Which node is in use is logged at every (re)connection (`broker_connected`, redacted), and each
move to another address (`broker_trying_next_node`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import structlog
from aio_pika.abc import AbstractRobustConnection, TimeoutType
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from worker.addresses import redact_url
from worker.messaging.transport import KeepaliveRobustConnection

log = structlog.stdlib.get_logger(__name__)


class FailoverConnection(KeepaliveRobustConnection):
    """A `RobustConnection` that moves to the next of `addresses` whenever an attempt fails or
    the connection is lost; with one address it is a plain `RobustConnection`. Its sockets carry
    TCP keepalive when given `tcp_keepalive` (`worker.messaging.transport`)."""

    def __init__(self, addresses: Sequence[str], start: int = 0, **kwargs: Any) -> None:
        if not addresses:
            raise ValueError("no broker address to connect to")
        self.addresses = tuple(URL(address) for address in addresses)
        self.position = start % len(self.addresses)
        super().__init__(self.addresses[self.position], **kwargs)

    @property
    def node(self) -> str:
        """The address in use (or tried next), without its password."""
        return redact_url(str(self.url))

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Before the first connection, a failure ends a fail-fast connection (`connect_any`
        # then makes one for the next address): nothing to move on from.
        has_connected = self.connection_attempt > 0 or not self.fail_fast
        if len(self.addresses) > 1 and has_connected and not (self.close_called or self.is_closed):
            failed = self.node
            self.position = (self.position + 1) % len(self.addresses)
            self.url = self.addresses[self.position]
            log.info("broker_trying_next_node", failed=failed, next=self.node)
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        log.info(
            "broker_connected",
            node=self.node,
            position=self.position + 1,
            of=len(self.addresses),
        )


async def connect_any(
    addresses: Sequence[str], *, attempt_timeout: TimeoutType = None, **kwargs: Any
) -> AbstractRobustConnection:
    """A `FailoverConnection` on the first of `addresses` that accepts a connection, tried in
    order; the last error when none does. `kwargs` are `RobustConnection`'s (`ssl_context`,
    `client_properties`, `reconnect_interval`, ...)."""
    last: BaseException | None = None
    for start in range(len(addresses)):
        connection = FailoverConnection(addresses, start=start, **kwargs)
        try:
            await connection.connect(timeout=attempt_timeout)
        except CONNECTION_EXCEPTIONS as error:
            last = error
            await connection.close()
            if start + 1 < len(addresses):
                log.warning(
                    "broker_unreachable_trying_next",
                    node=redact_url(addresses[start]),
                    error=repr(error),
                )
            continue
        return connection
    assert last is not None, "no broker address to connect to"
    raise last
