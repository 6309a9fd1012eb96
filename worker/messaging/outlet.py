"""The outlet: where settlement publishes, whatever publishing connection is current.

A batch reaches its publish committed: its outcomes are durable, and what is left is to publish
them and acknowledge the commands. When the publish fails because the publishing connection or a
channel of it is gone (closed by the broker, timed out, lost), the commands are not returned to
the queue — a redelivery would spend one of each command's deliveries (the quorum queue's
delivery limit is for commands that fail, not for a broker the worker cannot reach), and would
turn into a hot loop if publishing kept failing. Instead the outlet closes that connection (the
supervisor opens a new one) and publishes the same outcomes again, with the same message ids, on
the next, while the consuming side holds the commands. Only when the commands are no longer held
(their consuming channel closed: the broker has taken them back) does the publish give up.

Meanwhile the intake takes no new batch (`wait_usable`): a worker that cannot publish stops
taking work instead of committing more that it cannot answer.

A publish the broker refuses (a nack, an unroutable dead letter: `DeliveryError`) is about that
message, not the connection: it is raised to the caller as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import structlog
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import DeliveryError

from worker.app.outcomes import Outcome
from worker.messaging.connection import broker_call
from worker.messaging.link import BrokerLink, first_of
from worker.messaging.publisher import Publisher
from worker.messaging.settlement import held

log = structlog.stdlib.get_logger(__name__)

T = TypeVar("T")


class CommandsReturned(ConnectionError):
    """The publish failed and the commands it answers are the broker's again."""


class Outlet:
    def __init__(self) -> None:
        self._link: BrokerLink | None = None
        self._publisher: Publisher | None = None
        self._attached = asyncio.Event()

    def attach(self, link: BrokerLink, publisher: Publisher) -> None:
        """A new publishing connection, ready to use."""
        self._link, self._publisher = link, publisher
        self._attached.set()

    def detach(self) -> None:
        self._link = self._publisher = None
        self._attached.clear()

    @property
    def link(self) -> BrokerLink | None:
        return self._link

    @property
    def channels_open(self) -> bool:
        """The attached publisher's channels are open (True while nothing is attached)."""
        return self._publisher is None or self._publisher.channels_open

    @property
    def usable(self) -> bool:
        """Open, its channels open, and not blocked by the broker."""
        link, publisher = self._link, self._publisher
        return (
            link is not None
            and publisher is not None
            and link.is_open
            and not link.blocked
            and publisher.channels_open
        )

    async def wait_usable(self) -> None:
        """Returns once a publish would go out (the intake waits here before a new batch)."""
        while not self.usable:
            link = self._link
            if link is not None and link.is_open and link.blocked:
                await first_of(link.unblocked.wait(), link.lost.wait())
            elif link is not None and link.is_open:
                await asyncio.sleep(0.1)  # its channels closed: the publish that notices closes it
            else:
                await self._attached.wait()
                if self._link is link:  # the same (lost) link still attached: not yet replaced
                    await asyncio.sleep(0.1)

    async def publish_outcomes(
        self, answers: Sequence[tuple[AbstractIncomingMessage, Outcome]]
    ) -> None:
        await self._until_sent(
            lambda publisher: publisher.publish_outcomes(answers), [c for c, _ in answers]
        )

    async def dead_letter(
        self, command: AbstractIncomingMessage, error: str, detail: str, reply_error: str
    ) -> None:
        await self._until_sent(
            lambda publisher: publisher.dead_letter(command, error, detail, reply_error), [command]
        )

    async def _until_sent(
        self,
        send: Callable[[Publisher], Awaitable[None]],
        commands: Sequence[AbstractIncomingMessage],
    ) -> None:
        while True:
            await self._attached.wait()
            link, publisher = self._link, self._publisher
            if link is None or publisher is None or not link.is_open:
                await self.wait_usable()
                continue
            try:
                await broker_call(send(publisher))
                return
            except DeliveryError:
                raise
            except Exception as error:
                if not any(held(command) for command in commands):
                    raise CommandsReturned(
                        "the publish failed and the consuming channel closed: the broker "
                        f"redelivers the commands ({error!r})"
                    ) from error
                log.warning(
                    "publish_failed_retrying",
                    count=len(commands),
                    error=repr(error),
                    blocked=link.blocked,
                )
                if self._link is link:
                    self.detach()
                    await link.close()  # the supervisor opens the next one
