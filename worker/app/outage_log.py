"""Log a database outage once when it starts and once when it ends, not once per message."""

from __future__ import annotations

import time

import structlog


class DatabaseOutageLog:
    def __init__(self, log: structlog.stdlib.BoundLogger) -> None:
        self._log = log
        self._since: float | None = None
        self._retries = 0

    def down(self, failure: BaseException) -> None:
        self._retries += 1
        if self._since is None:
            self._since = time.monotonic()
            cause = failure.__cause__ or failure
            self._log.error(
                "database_unavailable",
                error=type(cause).__name__,
                action="holding commands and retrying",
            )

    def up(self) -> None:
        if self._since is None:
            return
        self._log.info(
            "database_available",
            outage_seconds=round(time.monotonic() - self._since, 1),
            retries=self._retries,
        )
        self._since = None
        self._retries = 0
