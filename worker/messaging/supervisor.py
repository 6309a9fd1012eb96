"""The supervisor owns "consuming": whatever happens to connections and channels, the worker
consumes again within seconds of the broker being usable, or starts anew from scratch, or exits.

It keeps two links (`worker.messaging.link`): one that consumes, one that publishes (a broker
that blocks the publishing one, in a resource alarm, still takes the consumer's acks).
- A lost link, or a channel of it that closed, is replaced: a new connection (to the next node
  of AMQP_URL), new channels and, for the consuming one, the topology checked again and a new
  consumer with its careful start. What the old consumer held is the broker's again (its channel
  closed); a batch waiting to publish on a lost publishing link publishes again on the next one
  (`worker.messaging.outlet`) while the consumer holds its commands.
- A watch looks every second at whether the worker could consume and does not: no consuming
  link, no consumer registered, outcomes that cannot be published, or a queue with ready
  messages of which none is delivered to a consumer with room for them. Excused: a broker that
  accepts no connection (an outage: a restart would not help, the links are retried every
  second) and a broker that blocks the publishing link (an alarm: the batches in hand are kept
  and published when it clears). After a third of `WORKER_STUCK_LIMIT` of that, both links are
  closed and everything is built anew; at the limit `/healthz` fails and the worker exits
  non-zero (its commands returned within the grace period) for its supervisor to restart it
  (the clock of that is `worker.messaging.stuck`).

Over 250 lines for a reason: the two keepers, the watch and the stop share one state (the links,
the consumer on one of them, what the broker refused); split apart, they would reach back into
each other for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from aio_pika.abc import AbstractChannel

from contracts.names import Topology
from worker.messaging import topology as broker_topology
from worker.messaging.connection import broker_call, ssl_context
from worker.messaging.consumer import Consumer
from worker.messaging.link import BlockObserver, BrokerLink, first_of, open_link
from worker.messaging.outlet import Outlet
from worker.messaging.publisher import Publisher
from worker.messaging.stuck import Next, ReadyMessages, StuckClock
from worker.settings import Settings

log = structlog.stdlib.get_logger(__name__)

T = TypeVar("T")

RECONNECT_PAUSE = 1.0  # between attempts to open a link; the first after a loss goes at once
WATCH_INTERVAL = 1.0
POLL = 0.5  # how often a keeper looks at the channels of its link
STARVED_AFTER = 10.0  # seconds without a delivery before the queue's depth is looked at


class _Refused(Exception):
    """Opening a link failed at the connection itself: the broker accepts no connection."""


@dataclass
class _ConsumingSide:
    link: BrokerLink
    channel: AbstractChannel
    consumer: Consumer


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        topology: Topology,
        outlet: Outlet,
        make_consumer: Callable[[], Consumer],
        *,
        on_block: BlockObserver | None = None,
        on_reconnect: Callable[[str], None] | None = None,
        on_not_consuming: Callable[[float], None] | None = None,
    ) -> None:
        self._settings = settings
        self._topology = topology
        self._outlet = outlet
        self._make_consumer = make_consumer
        self._on_block = on_block
        self._on_reconnect = on_reconnect or (lambda _: None)
        self._consuming: _ConsumingSide | None = None
        self._publishing: BrokerLink | None = None
        self._refused: set[str] = set()  # roles whose last attempt the broker did not accept
        self._next_position = 0
        self._rebuild_consuming = asyncio.Event()
        self._rebuild_publishing = asyncio.Event()
        self._stopping = False
        self._clock = StuckClock(settings.stuck_limit, on_not_consuming or (lambda _: None))
        self._ready = ReadyMessages(topology.worker_queue)
        self.returned = 0  # commands a stop returned to the queue
        self.stopping_at = 0.0  # time.monotonic() when the stop began

    # --- what the probes and the stop read ----------------------------------------------------

    @property
    def consumer(self) -> Consumer | None:
        return self._consuming.consumer if self._consuming is not None else None

    @property
    def publishing_link(self) -> BrokerLink | None:
        return self._publishing

    @property
    def consuming_link(self) -> BrokerLink | None:
        return self._consuming.link if self._consuming is not None else None

    @property
    def links_open(self) -> bool:
        side, publishing = self._consuming, self._publishing
        open_ = publishing is not None and publishing.is_open
        return open_ and side is not None and side.link.is_open

    @property
    def consuming(self) -> bool:
        side = self._consuming
        return side is not None and side.link.is_open and side.consumer.consuming

    @property
    def in_flight(self) -> int:
        side = self._consuming
        return side.consumer.in_flight if side is not None else 0

    def not_consuming_for(self) -> float:
        """Seconds the worker has been unable to consume while the broker was usable."""
        return self._clock.not_consuming_for()

    def liveness(self) -> str | None:
        """None while alive; else why not (the liveness probe's answer)."""
        return self._clock.liveness()

    async def wait_consuming(self) -> None:
        """Returns once a consumer is registered (after its careful start): the first one, or
        the one that replaced it if its link was lost before it got there."""
        while not self.consuming:
            side = self._consuming
            if side is None:
                await asyncio.sleep(POLL / 5)
            else:
                await first_of(side.consumer.wait_consuming(), within=POLL)

    # --- life -----------------------------------------------------------------------------------

    async def start(self) -> None:
        """The first links, topology and consumer; a failure is start-up's (raised as it is)."""
        self._publishing = await self._open_publishing(refused_as_is=True)
        self._consuming = await self._open_consuming(refused_as_is=True)

    async def run(self, stop: asyncio.Event, grace_period: float) -> None:
        """Keep consuming until `stop` is set; then stop within `grace_period` (`returned`
        says how many commands went back to the queue). Raises `WorkerStuck` (after that stop)
        when the worker could not consume for `WORKER_STUCK_LIMIT`, and whatever ended a
        keeper otherwise (a bug)."""
        consuming = asyncio.create_task(self._keep_consuming(), name="keep-consuming")
        publishing = asyncio.create_task(self._keep_publishing(), name="keep-publishing")
        watch = asyncio.create_task(self._watch(), name="watch")
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait(
            {stopped, consuming, publishing, watch}, return_when=asyncio.FIRST_COMPLETED
        )
        keepers = (watch, consuming, publishing)
        failure = next((_ending(task) for task in keepers if task.done()), None)
        self._stopping = True
        self.stopping_at = time.monotonic()
        reason = "signal" if failure is None else repr(failure)
        log.info("worker_stopping", grace_period=grace_period, reason=reason)
        for task in (stopped, consuming, watch):
            task.cancel()
        await asyncio.gather(consuming, watch, return_exceptions=True)
        side = self._consuming
        if side is not None and side.link.is_open:
            self.returned = await side.consumer.stop(grace_period)
        elif side is not None:
            await broker_call(side.consumer.abandon())
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
        await self.close()
        if failure is not None:
            raise failure

    async def close(self) -> None:
        for link in (self.consuming_link, self._publishing):
            if link is not None:
                await link.close()

    # --- the keepers -------------------------------------------------------------------------

    async def _keep_consuming(self) -> None:
        while True:
            side = self._consuming
            if side is None:
                self._consuming = await self._reopen("consume", self._open_consuming)
                continue
            reason = await self._consuming_broken(side)
            log.warning("consumer_restarting", reason=reason)
            self._after_loss(side.link)
            self._consuming = None
            await side.link.close()  # the broker takes back what the consumer held, at once
            await broker_call(side.consumer.abandon())

    async def _consuming_broken(self, side: _ConsumingSide) -> str:
        while True:
            if not side.link.is_open:
                return "connection lost"
            if side.channel.is_closed:
                return "channel closed"
            if side.consumer.dispatcher_ended:
                side.consumer.raise_dispatcher_failure()
            if self._rebuild_consuming.is_set():
                self._rebuild_consuming.clear()
                return "starting anew: " + self._clock.reason
            await first_of(side.link.lost.wait(), self._rebuild_consuming.wait(), within=POLL)

    async def _keep_publishing(self) -> None:
        while True:
            link = self._publishing
            if link is None:
                self._publishing = await self._reopen("publish", self._open_publishing)
                continue
            rebuild = self._rebuild_publishing
            while link.is_open and self._outlet.channels_open and not rebuild.is_set():
                await first_of(link.lost.wait(), self._rebuild_publishing.wait(), within=POLL)
            self._rebuild_publishing.clear()
            self._after_loss(link)
            if self._outlet.link is link:
                self._outlet.detach()
            self._publishing = None
            await link.close()

    async def _reopen(self, role: str, opener: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            if attempt:
                await asyncio.sleep(RECONNECT_PAUSE)
            attempt += 1
            try:
                opened = await broker_call(opener())
            except Exception as error:
                log.warning(
                    "broker_reconnect_failed", role=role, attempt=attempt, error=repr(error)
                )
                continue
            log.info("broker_reconnected", role=role, attempts=attempt)
            self._on_reconnect(role)
            return opened

    async def _open(self, role: str, refused_as_is: bool) -> BrokerLink:
        settings = self._settings
        try:
            link = await open_link(
                settings.broker_urls(),
                role,
                start=self._next_position,
                attempt_timeout=settings.amqp_connect_timeout,
                on_block=self._on_block if role == "publish" else None,
                ssl_context=ssl_context(settings),
                tcp_keepalive=settings.tcp_keepalive,
            )
        except Exception as error:
            self._refused.add(role)
            if refused_as_is:
                raise
            raise _Refused(repr(error)) from error
        self._refused.discard(role)
        return link

    def _after_loss(self, link: BrokerLink) -> None:
        """A link the broker (or the network) ended: the next attempt goes to the next node."""
        if link.loss is not None:
            self._next_position = link.position + 1

    async def _open_consuming(self, refused_as_is: bool = False) -> _ConsumingSide:
        link = await self._open("consume", refused_as_is)
        try:
            channel = await link.connection.channel()
            if self._settings.declare_topology:
                queue = await broker_topology.declare(channel, self._topology, self._settings)
            else:
                await broker_topology.verify(link.connection, self._topology)
                queue = await broker_topology.worker_queue(channel, self._topology)
            consumer = self._make_consumer()
            await consumer.start(queue, channel)
        except BaseException:
            await link.close()
            raise
        return _ConsumingSide(link, channel, consumer)

    async def _open_publishing(self, refused_as_is: bool = False) -> BrokerLink:
        link = await self._open("publish", refused_as_is)
        try:
            connection = link.connection
            events = await connection.channel(publisher_confirms=True)
            dead = await connection.channel(publisher_confirms=True, on_return_raises=True)
            publisher = Publisher(
                events, dead, self._topology, self._settings.publish_timeout, blocking=link
            )
            await publisher.start()
        except BaseException:
            await link.close()
            raise
        self._outlet.attach(link, publisher)
        return link

    # --- the watch ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if self._clock.observe(await self._problem()) is Next.REBUILD:
                self._rebuild_consuming.set()
                self._rebuild_publishing.set()

    async def _problem(self) -> str | None:
        """Why the worker could consume and does not, or None (consuming, or excused)."""
        if self._stopping or self._refused:
            return None  # stopping, or the broker accepts no connection: an outage
        publishing = self._publishing
        if publishing is not None and publishing.is_open and publishing.blocked:
            return None  # the broker holds the worker back (a resource alarm)
        side = self._consuming
        if side is None or not side.link.is_open:
            return "no consuming connection"
        if not side.consumer.working:
            return "no consumer registered"
        if not self._outlet.usable:
            return "outcomes cannot be published"
        consumer = side.consumer
        if consumer.consuming and consumer.has_room and consumer.idle_for > STARVED_AFTER:
            ready = await self._ready.count(side.link)
            if ready > 0:
                return f"{ready} messages ready in the queue and none delivered"
        return None


def _ending(task: asyncio.Task[None]) -> BaseException:
    """What ended a task that runs until cancelled: its error, or one that says how it ended
    (returned, or cancelled by something other than a stop: both bugs)."""
    if task.cancelled():
        return RuntimeError(f"{task.get_name()} was cancelled unexpectedly")
    error = task.exception()
    return error if error is not None else RuntimeError(f"{task.get_name()} ended unexpectedly")
