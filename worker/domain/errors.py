"""Business errors: legitimate outcomes, published as `coupon.error` (the command is
acknowledged). Their wording is the contract's (`ErrorKind.detail_for`). Infrastructure failures
are not the domain's: see `worker.app.failures`."""

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
        super().__init__(code, self.kind.detail_for(code))


class AlreadyExists(BusinessError):
    kind = ErrorKind.ALREADY_EXISTS

    def __init__(self, code: str) -> None:
        super().__init__(code, self.kind.detail_for(code))


class Exhausted(BusinessError):
    kind = ErrorKind.EXHAUSTED

    def __init__(self, code: str) -> None:
        super().__init__(code, self.kind.detail_for(code))
