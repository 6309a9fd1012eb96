"""The machine's service lock: shared by ordinary tests, exclusive for disruptive ones.

RabbitMQ and PostgreSQL on this machine serve every test run (and the engineers' own workers).
A test that stops one of them, or closes every broker connection, must run while no other test
is using them: `tests/conftest.py` holds this lock around every test, exclusively for those
marked `disruptive`, and the outage helpers (`tests/support/outages.py`) refuse to act unless
the exclusive lock is held — a disruptive helper called from an unmarked test fails at once
instead of pulling a service from under a concurrent run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import Final

import pytest

LOCK_PATH: Final = os.environ.get("COUPON_SERVICE_LOCK", "/tmp/coupon-services.lock")

_exclusive_held = False


@contextlib.contextmanager
def holding(*, exclusive: bool) -> Iterator[None]:
    """Hold the lock (blocking until it is free) for the body of the `with`."""
    global _exclusive_held
    with open(LOCK_PATH, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        _exclusive_held = exclusive
        try:
            yield
        finally:
            _exclusive_held = False
            fcntl.flock(lock, fcntl.LOCK_UN)


def require_exclusive(what: str) -> None:
    """Fail the calling test unless it holds the lock exclusively (is marked `disruptive`)."""
    if not _exclusive_held:
        pytest.fail(
            f"{what} disrupts services other test runs share: mark the test "
            "`@pytest.mark.disruptive` so that it holds the service lock exclusively",
            pytrace=False,
        )
