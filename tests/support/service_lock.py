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
    """Hold the lock (blocking until it is free) for the body of the `with`.

    `flock` alone lets shared holders starve an exclusive one: while one ordinary test holds
    the lock, the next can always join it, and a disruptive test waits for a gap that may never
    come (seen with six test runs on two cores). So everyone first passes a turnstile (a second
    lock file, held only while queueing): a disruptive test keeps the turnstile while it waits,
    new ordinary tests queue behind it, and it gets the lock as soon as the tests already
    running finish.

    A process a test starts must not pass the turnstile while the test holds the lock: behind a
    waiting disruptive test it would wait for ever. The benchmark (`benchmarks/__main__.py`,
    run by `tests/e2e/test_benchmark.py`) takes the lock shared with a plain `flock`, which a
    waiting exclusive request does not block."""
    global _exclusive_held
    with open(f"{LOCK_PATH}.turnstile", "a+b") as turnstile, open(LOCK_PATH, "a+b") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
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
