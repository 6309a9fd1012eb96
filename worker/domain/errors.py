"""The worker's error hierarchy, and what each branch means for a message.

- `BusinessError`: a legitimate outcome (published as `coupon.error`, command acknowledged).
- `TransientFailure`: an infrastructure fault that will pass (wait and retry, never dead-letter).
- Anything else is unexpected: retried up to the attempt limit, then dead-lettered.
"""

from __future__ import annotations

from contracts.events import ErrorKind


class BusinessError(Exception):
    kind: ErrorKind

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class DoesNotExist(BusinessError):
    kind = ErrorKind.DOES_NOT_EXIST

    def __init__(self, code: str) -> None:
        super().__init__(code, f"coupon {code!r} does not exist")


class AlreadyExists(BusinessError):
    kind = ErrorKind.ALREADY_EXISTS

    def __init__(self, code: str) -> None:
        super().__init__(code, f"coupon {code!r} already exists")


class Exhausted(BusinessError):
    kind = ErrorKind.EXHAUSTED

    def __init__(self, code: str) -> None:
        super().__init__(code, f"coupon {code!r} has no redemptions left")


class TransientFailure(Exception):
    """The database (or another dependency) cannot serve now; the same work will succeed later."""

    def __init__(self, message: str, *, outage: bool) -> None:
        super().__init__(message)
        # outage: the dependency is unreachable (wait with backoff, log once);
        # otherwise a conflict between transactions (deadlock, serialization): retry at once.
        self.outage = outage
