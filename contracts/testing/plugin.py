"""The coupon pytest plugin (entry point `pytest11`, installed with `coupon-contracts[testing]`).

Fixtures, each on the backend chosen by `--coupon-backend` (or the ini option `coupon_backend`,
or `COUPON_BACKEND`; default `memory`):

- `coupon_backend`: the backend itself (see `contracts.testing.backends`), fresh for each test:
  `memory` is an in-memory fake worker; `real` starts `coupon-worker run` on RabbitMQ and a fresh
  PostgreSQL database of its own, under a name prefix of its own, and removes all three after
  (or, with `COUPON_WORKER_PREFIX`, uses a worker that is already running);
- `coupon_client`: a client with `create`, `redeem`, `get`, `send`, `request`, `subscribe`;
- `coupon_events`: an `EventCollector` of every event from the start of the test, `wait_for(...)`;
- `coupon_replay`: `await coupon_replay(path_or_messages)` → the outcomes in command order;
- `coupon_backend_factory`: `async with coupon_backend_factory() as backend:` for a test that
  needs more than one fresh backend.

`--coupon-update-golden` makes `assert_matches_golden` write golden files instead of comparing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from contracts.testing.backends import MemoryBackend, RealBackend, ReplaySource, open_backend
from contracts.testing.collector import EventCollector
from contracts.testing.outcomes import ReplayOutcome, configure_golden

BACKENDS = ("memory", "real")
Backend = MemoryBackend | RealBackend


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coupon", "coupon worker test backends")
    group.addoption(
        "--coupon-backend",
        choices=BACKENDS,
        default=None,
        help="backend of the coupon fixtures: memory (default) or real",
    )
    group.addoption(
        "--coupon-update-golden",
        action="store_true",
        default=False,
        help="write golden files instead of comparing with them",
    )
    parser.addini("coupon_backend", "backend of the coupon fixtures: memory or real", default="")


def pytest_configure(config: pytest.Config) -> None:
    configure_golden(bool(config.getoption("--coupon-update-golden")), config.rootpath)


@pytest.fixture
def coupon_backend_name(request: pytest.FixtureRequest) -> str:
    """Override (or parametrize) this fixture to choose a backend per module or test."""
    chosen = (
        request.config.getoption("--coupon-backend")
        or request.config.getini("coupon_backend")
        or os.environ.get("COUPON_BACKEND")
        or "memory"
    )
    if chosen not in BACKENDS:
        raise pytest.UsageError(f"coupon backend {chosen!r}: choose memory or real")
    return str(chosen)


@pytest.fixture
def coupon_backend_factory(
    coupon_backend_name: str,
) -> Callable[[], contextlib.AbstractAsyncContextManager[Backend]]:
    @contextlib.asynccontextmanager
    async def fresh() -> AsyncIterator[Backend]:
        backend = await open_backend(coupon_backend_name)
        try:
            yield backend
        finally:
            await backend.aclose()

    return fresh


@pytest_asyncio.fixture
async def coupon_backend(
    coupon_backend_factory: Callable[[], contextlib.AbstractAsyncContextManager[Backend]],
) -> AsyncIterator[Backend]:
    async with coupon_backend_factory() as backend:
        yield backend


@pytest.fixture
def coupon_client(coupon_backend: Backend) -> Any:
    return coupon_backend.client


@pytest_asyncio.fixture
async def coupon_events(coupon_backend: Backend) -> EventCollector:
    return await coupon_backend.events()


@pytest.fixture
def coupon_replay(
    coupon_backend: Backend,
) -> Callable[[ReplaySource], Awaitable[list[ReplayOutcome]]]:
    return coupon_backend.replay
