"""One connection to the broker, for one role (consuming or publishing), and what became of it.

The worker opens two, as RabbitMQ advises: a resource alarm (memory or disk low) *blocks* the
connections that publish — the broker stops reading from them until the alarm clears — and a
consumer sharing such a connection could not even acknowledge. With its own connection the
consuming side keeps acknowledging and holding its deliveries while publishing waits.

A link is plain (not aio-pika's robust connection): when it is lost, it stays lost, and its
owner (`worker.messaging.supervisor`) opens a new one, with new channels, from scratch. aio-pika's
restore of channels and consumers after a reconnect has failure modes of its own (channels that
stay closed after the connection came back: aio-pika #577, #668) that left a worker connected and
consuming nothing; one owner that rebuilds has none.

Blocked. aiormq keeps `connection.blocked` / `connection.unblocked` to itself (it logs them and
sets a private event, and offers no callback: aio-pika #506). `_watch_blocking` wraps the two
frame handlers of this one aiormq connection object (instance attributes, not a patch of the
class), so the link knows when and why the broker blocks it; `tests/integration/test_link.py`
raises a real alarm and fails if a new aiormq stops calling them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from yarl import URL

from worker.addresses import redact_url
from worker.messaging.connection import broker_call, time_limited
from worker.messaging.transport import KeepaliveConnection

log = structlog.stdlib.get_logger(__name__)

BlockObserver = Callable[[bool], None]

CLOSE_TIMEOUT = 5.0


class BrokerLink:
    """An open connection, its node, whether the broker blocks it, and when it was lost."""

    def __init__(
        self,
        connection: AbstractConnection,
        role: str,
        position: int,
        node: str,
        on_block: BlockObserver | None = None,
    ) -> None:
        self.connection = connection
        self.role = role
        self.position = position  # which of AMQP_URL's addresses (the next open starts after)
        self.node = node
        self._on_block = on_block
        self.lost = asyncio.Event()
        self.loss: BaseException | None = None
        self.unblocked = asyncio.Event()
        self.unblocked.set()
        self.blocked_since: float | None = None  # time.monotonic()
        self.block_reason = ""
        connection.close_callbacks.add(self._closed)
        self._watch_blocking()

    @property
    def is_open(self) -> bool:
        return not self.lost.is_set()

    @property
    def blocked(self) -> bool:
        return self.blocked_since is not None

    async def close(self) -> None:
        self.lost.set()
        try:
            # aiormq cancels the futures of a connection it gave up on: such a CancelledError
            # is a broker failure (`broker_call`), not a cancellation of the caller.
            await broker_call(time_limited(self.connection.close(), CLOSE_TIMEOUT))
        except Exception as error:  # gone already, or the broker does not answer: nothing held
            log.debug("link_close_failed", role=self.role, error=repr(error))

    def _closed(self, _: object, error: BaseException | None) -> None:
        if self.lost.is_set():
            return
        self.loss = error
        self.lost.set()
        if not self.unblocked.is_set():
            self._set_unblocked(reason="connection lost")
        # aiormq cancels its reader when no frame arrived within 3 x (heartbeat + 1) s.
        silent = isinstance(error, asyncio.CancelledError)
        log.warning(
            "broker_connection_lost",
            role=self.role,
            node=self.node,
            error="no frame within the heartbeat timeout" if silent else repr(error),
        )

    # --- connection.blocked / connection.unblocked ---------------------------------------------

    def _watch_blocking(self) -> None:
        transport = getattr(self.connection, "transport", None)
        underlay = getattr(transport, "connection", None)
        blocked = getattr(underlay, "_Connection__handle_connection_blocked", None)
        unblocked = getattr(underlay, "_Connection__handle_connection_unblocked", None)
        if underlay is None or blocked is None or unblocked is None:
            log.warning("broker_blocking_not_observable", role=self.role)
            return

        async def on_blocked(frame: Any) -> None:
            await blocked(frame)
            self._set_blocked(str(getattr(frame, "reason", "") or "unknown"))

        async def on_unblocked(frame: Any) -> None:
            await unblocked(frame)
            self._set_unblocked()

        underlay._Connection__handle_connection_blocked = on_blocked
        underlay._Connection__handle_connection_unblocked = on_unblocked

    def _set_blocked(self, reason: str) -> None:
        if self.blocked_since is not None:
            return
        self.blocked_since = time.monotonic()
        self.block_reason = reason
        self.unblocked.clear()
        log.warning("broker_blocked", role=self.role, node=self.node, reason=reason)
        if self._on_block is not None:
            self._on_block(True)

    def _set_unblocked(self, reason: str = "broker") -> None:
        if self.blocked_since is None:
            return
        seconds = round(time.monotonic() - self.blocked_since, 1)
        self.blocked_since = None
        self.unblocked.set()
        log.info("broker_unblocked", role=self.role, node=self.node, seconds=seconds, by=reason)
        if self._on_block is not None:
            self._on_block(False)


async def open_link(
    addresses: Sequence[str],
    role: str,
    *,
    start: int = 0,
    attempt_timeout: float,
    on_block: BlockObserver | None = None,
    **kwargs: Any,
) -> BrokerLink:
    """A link to the first of `addresses`, from `start` on round robin, that accepts a connection;
    the last error when none does. `kwargs` are the connection's
    (`ssl_context`, `tcp_keepalive`); the connection is named `coupon-worker <role>`."""
    last: BaseException | None = None
    for step in range(len(addresses)):
        position = (start + step) % len(addresses)
        node = redact_url(addresses[position])
        connection = KeepaliveConnection(
            URL(addresses[position]),
            client_properties={"connection_name": f"coupon-worker {role}"},
            **kwargs,
        )
        try:
            await broker_call(connection.connect(timeout=attempt_timeout))
        except (*CONNECTION_EXCEPTIONS, TimeoutError) as error:
            last = error
            await _quietly(connection.close())
            if len(addresses) > 1:
                log.info("broker_trying_next_node", role=role, failed=node, error=repr(error))
            continue
        log.info("broker_connected", role=role, node=node, position=position + 1, of=len(addresses))
        return BrokerLink(connection, role, position, node, on_block)
    assert last is not None, "no broker address to connect to"
    raise last


async def _quietly(call: Awaitable[object]) -> None:
    try:
        await broker_call(call)
    except Exception as error:
        log.debug("close_failed", error=repr(error))


async def first_of(*waits: Awaitable[object], within: float | None = None) -> None:
    """Returns when the first of `waits` ends (or after `within` seconds); cancels the rest."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
