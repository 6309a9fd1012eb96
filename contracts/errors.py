"""What a client's request can end in, besides its success event (pydantic only).

- `OutcomeError` (`DoesNotExist`, `AlreadyExists`, `Exhausted`): the worker handled the command
  and its outcome is `coupon.error`; the command was acknowledged, so sending it again with the
  same `message_id` gets the same answer.
- `CommandRejected` (an `InvalidCommand`, like a local validation failure): the worker refused the
  command as sent and dead-lettered it, with `x-error` as its `code`.
- `CommandFailed`: the worker gave up on it (`ProcessingFailed`) and dead-lettered it.
- `CommandUnroutable`: the broker routed the command to no queue (the publish raised).
- `RequestTimeout` (a `TimeoutError`): no answer in time. The command may still be handled: send
  it again with the same `message_id` to learn its outcome without applying it twice.
"""

from __future__ import annotations

from typing import ClassVar, Final

from contracts.events import CouponError, ErrorKind
from contracts.validation import InvalidCommand, RejectionCode


class CouponClientError(Exception):
    """Base of every error a `CouponClient` request raises."""


class OutcomeError(CouponClientError):
    """The outcome of the command was `coupon.error`."""

    kind: ClassVar[ErrorKind]

    def __init__(self, event: CouponError, message_id: str) -> None:
        super().__init__(f"{event.error}: {event.detail}")
        self.event = event
        self.message_id = message_id
        self.code = event.code
        self.detail = event.detail


class DoesNotExist(OutcomeError):
    kind = ErrorKind.DOES_NOT_EXIST


class AlreadyExists(OutcomeError):
    kind = ErrorKind.ALREADY_EXISTS


class Exhausted(OutcomeError):
    kind = ErrorKind.EXHAUSTED


OUTCOME_ERRORS: Final[dict[ErrorKind, type[OutcomeError]]] = {
    cls.kind: cls for cls in (DoesNotExist, AlreadyExists, Exhausted)
}


class CommandRejected(InvalidCommand, CouponClientError):
    """The worker refused the command as sent (dead-lettered with `x-error` = `code`)."""

    def __init__(self, code: RejectionCode, detail: str, message_id: str) -> None:
        super().__init__(code, detail)
        self.message_id = message_id


class CommandFailed(CouponClientError):
    """The worker could not process the command and dead-lettered it (`ProcessingFailed`)."""

    def __init__(self, error: str, detail: str, message_id: str) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail
        self.message_id = message_id


class CommandUnroutable(CouponClientError):
    """The broker had no queue for the command: nothing consumes `coupon.commands` with its
    routing key (no worker declared its queue yet, or the key is not a command's)."""

    def __init__(self, routing_key: str, message_id: str | None) -> None:
        super().__init__(f"no queue takes {routing_key[:80]!r} (message_id {message_id})")
        self.routing_key = routing_key
        self.message_id = message_id


class RequestTimeout(CouponClientError, TimeoutError):
    """No outcome within the time allowed; re-send with the same `message_id` to find out."""

    def __init__(self, message_id: str, within: float) -> None:
        super().__init__(f"no outcome for {message_id} within {within:g}s")
        self.message_id = message_id
        self.within = within
