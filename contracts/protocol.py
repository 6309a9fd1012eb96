"""What every coupon client offers, as typing Protocols (pydantic only).

`contracts.client.AmqpCouponClient` (aio-pika, the real broker) and the pytest plugin's
in-memory `FakeCouponClient` both implement `CouponClient`; code and tests written against the
Protocol run on either. One way to do each thing:

- wait for an outcome: `create` / `redeem` / `get` return the success event or raise the typed
  error (`contracts.errors`), `RequestTimeout` when none comes `within` seconds;
- fire and forget: `send(command)` returns the `message_id` once the broker confirmed it;
- follow events: `subscribe(...)`, iterated with `async for`, each event acknowledged once the
  loop body that received it finished.

Every option is an explicit keyword argument, so `mypy --strict` catches a misspelt one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Final, Protocol, Self

from contracts.commands import Command
from contracts.events import CouponCreated, CouponFound, CouponRedeemed
from contracts.received import ReceivedEvent

__all__ = ["DEFAULT_DELIVERY_LIMIT", "CouponClient", "Subscription", "check_subscription"]

# How many times a subscriber's queue delivers one event again (RabbitMQ's `x-delivery-limit`,
# which counts returns) before it parks it in `<queue>.dead`: 1 + 5 deliveries in all.
DEFAULT_DELIVERY_LIMIT: Final = 5


def check_subscription(
    routing_keys: Sequence[str], dedupe: int, prefetch: int, delivery_limit: int
) -> None:
    """The checks every subscription (real or in-memory) makes of its options."""
    if isinstance(routing_keys, str) or not routing_keys:
        raise ValueError("routing_keys: a non-empty list of binding patterns")
    if dedupe < 0 or prefetch < 1 or delivery_limit < 1:
        raise ValueError("dedupe must be >= 0, prefetch and delivery_limit >= 1")


class Subscription(Protocol):
    """Events of `coupon.events`, acknowledged one by one as the loop body finishes with them.

    Use it as `async with client.subscribe(...) as events: async for received in events: ...`
    (a bare `async for` works too, but cannot tell a `break` from an error: see the README)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[ReceivedEvent]: ...

    async def open(self) -> None:
        """Declare and bind the queue and start consuming (entering or iterating does it)."""
        ...

    async def close(self) -> None:
        """Stop consuming; every event not acknowledged yet goes back to the queue."""
        ...


class CouponClient(Protocol):
    """A client of the coupon worker: its verbs, with explicit keyword arguments."""

    async def create(
        self,
        code: str,
        init_count: int,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> CouponCreated:
        """`coupon.create`: the `CouponCreated`, or `AlreadyExists`. `message_id` is the
        idempotency key (a fresh UUID by default); `within` how long to wait, in seconds."""
        ...

    async def redeem(
        self,
        code: str,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> CouponRedeemed:
        """`coupon.redeem`: the `CouponRedeemed`, or `DoesNotExist` / `Exhausted`."""
        ...

    async def get(
        self,
        code: str,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        within: float | None = None,
    ) -> CouponFound:
        """`coupon.get` (answered only to the asker): the `CouponFound`, or `DoesNotExist`."""
        ...

    async def send(
        self,
        command: Command,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> str:
        """Publish `command` without waiting for its outcome; its `message_id` once the broker
        confirmed it (an unroutable command raises)."""
        ...

    def subscribe(
        self,
        routing_keys: Sequence[str] = ("coupon.*",),
        *,
        queue: str | None = None,
        dedupe: int = 0,
        prefetch: int = 32,
        delivery_limit: int = DEFAULT_DELIVERY_LIMIT,
        dead_letter_queue: str | None = None,
    ) -> Subscription:
        """Events on `coupon.events` matching `routing_keys` (topic patterns). `queue` names a
        durable quorum queue of the caller's (events wait there while nobody consumes); an event
        returned unhandled more than `delivery_limit` times is parked in
        `dead_letter_queue` (default `<queue>.dead`) with the reason in its `x-death` header.
        Without `queue`, a temporary queue lives as long as the subscription. `dedupe`
        remembers that many event message_ids and skips repeats."""
        ...

    async def close(self) -> None:
        """Close the client (the connection, for the real one)."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
